"""Reading a snapshot checks each distinct GPU layout and pending request once, and still names the first GPU or
pod that fails; the catalog remembers the model spellings it has resolved without accepting unknown ones."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from solver.catalog import load_catalog
from solver.errors import MigoptError
from solver.snapshot import PendingPod, check_pending_pod, parse_snapshot


def _node(name: str, *layouts: list[tuple[str, int]], model: str = "A100-40GB") -> dict[str, Any]:
    gpus = [
        {"index": i, "model": model, "instances": [{"profile": p, "start": s} for p, s in layout]}
        for i, layout in enumerate(layouts)
    ]
    return {"name": name, "gpus": gpus}


GOOD = [("3g.20gb", 0), ("3g.20gb", 4)]
OVERLAP = [("3g.20gb", 0), ("3g.20gb", 0)]
BAD_START = [("3g.20gb", 2)]


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(MigoptError) as caught:
        parse_snapshot(raw)
    return str(caught.value)


def test_a_bad_layout_repeated_on_many_gpus_names_the_first_of_them() -> None:
    nodes = [_node("a", GOOD, GOOD), _node("b", GOOD, OVERLAP), _node("c", OVERLAP)]
    assert _error({"nodes": nodes}) == (
        "snapshot: nodes[b].gpus[1].instances: infeasible layout: 3g.20gb@0 overlaps another instance's memory slices"
    )


def test_each_distinct_layout_gets_its_own_message() -> None:
    nodes = [_node("a", GOOD), _node("b", GOOD, BAD_START)]
    assert _error({"nodes": nodes}).startswith(
        "snapshot: nodes[b].gpus[1].instances: infeasible layout: 3g.20gb cannot start at memory slice 2"
    )


def test_an_unknown_profile_or_model_is_reported_where_it_is() -> None:
    assert _error({"nodes": [_node("a", GOOD), _node("b", [("9g.99gb", 0)])]}).startswith(
        "snapshot: nodes[b].gpus[0]: "
    )
    unknown_model = _error({"nodes": [_node("a", GOOD), _node("b", GOOD, model="Z999")]})
    assert unknown_model.startswith("snapshot: nodes[b].gpus[0]: unknown GPU model 'Z999'")


def test_the_same_layout_on_another_model_is_checked_again() -> None:
    """A layout valid on one model says nothing about another: the verdict is per model and layout."""
    layout = [("7g.80gb", 0)]  # an A100-80GB profile, unknown to the A100-40GB
    nodes = [_node("a", layout, model="A100-80GB"), _node("b", layout, model="A100-40GB")]
    assert _error({"nodes": nodes}).startswith("snapshot: nodes[b].gpus[0]: ")


@pytest.mark.parametrize(
    "requests",
    [{"nvidia.com/mig-9g.99gb": 1}, {"cpu": 1}, {"nvidia.com/mig-1g.5gb": 1, "nvidia.com/mig-bad": 1}],
)
def test_a_repeated_bad_request_names_the_first_pod_with_the_message_check_pending_pod_gives(
    requests: dict[str, int],
) -> None:
    pods = [{"name": "ok", "requests": {"nvidia.com/mig-1g.5gb": 1}}]
    pods += [{"name": f"bad-{i}", "requests": requests} for i in range(3)]
    with pytest.raises(MigoptError) as alone:
        check_pending_pod(PendingPod(name="bad-0", requests=requests))
    assert _error({"nodes": [_node("a", GOOD)], "pods": pods}) == str(alone.value)


def test_the_collector_is_resumed_after_reading_even_when_the_snapshot_is_bad() -> None:
    assert gc.isenabled()
    parse_snapshot({"nodes": [_node("a", GOOD)]})
    assert gc.isenabled()
    with pytest.raises(MigoptError):
        parse_snapshot({"nodes": [_node("a", OVERLAP)]})
    assert gc.isenabled()


def test_catalog_spellings_resolve_the_same_each_time_and_unknown_ones_always_fail() -> None:
    catalog = load_catalog()
    for spelling in ("A100-40GB", "nvidia a100 sxm4 40gb", "NVIDIA-A100-SXM4-40GB"):
        assert catalog.model(spelling) is catalog.model(spelling) is catalog.model("A100-40GB")
    for _ in range(2):
        with pytest.raises(MigoptError, match="unknown GPU model 'Z999'"):
            catalog.model("Z999")
