"""A JSON snapshot file goes to pydantic as text (`load_snapshot`'s fast path); whatever the file holds, the
outcome is the one the general reading gives (`load_document`, with its limits, then `parse_snapshot`): the same
snapshot, or the same one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from migopt.snapshot_io import load_snapshot
from nvidia_protocol.safe_yaml import load_document
from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.errors import MigoptError
from solver.snapshot import ClusterSnapshot, parse_snapshot

DEEP = "deep-marker"  # a label value the test replaces in the text by brackets nested 5,000 levels deep


def _edit(data: dict[str, Any], kind: str, pick: int) -> Any:
    """One change a user (or a broken exporter) could make to a valid snapshot."""
    nodes, pods, running = data["nodes"], data["pods"], data["running"]
    node = nodes[pick % len(nodes)]
    gpu = node["gpus"][pick % len(node["gpus"])]
    pod = pods[pick % len(pods)]
    if kind == "unknown profile" and gpu["instances"]:
        gpu["instances"][0]["profile"] = "9g.999gb"
    elif kind == "overlapping layout" and gpu["instances"]:
        gpu["instances"].append(dict(gpu["instances"][0]))
    elif kind == "unknown model":
        gpu["model"] = "Z9000"
    elif kind == "negative count":
        pod["requests"] = {key: -1 for key in pod["requests"]}
    elif kind == "count as text":
        pod["requests"] = {key: str(count) for key, count in pod["requests"].items()}
    elif kind == "huge priority" and running:
        running[pick % len(running)]["priority"] = 2**80
    elif kind == "duplicate node":
        nodes.append(dict(node))
    elif kind == "extra field":
        node["colour"] = "blue"
    elif kind == "request nobody knows":
        pod["requests"] = {"nvidia.com/mig-8g.1tb": 1}
    elif kind == "not a mapping":
        return nodes
    elif kind == "nested deeper than the limit":
        deep: Any = "x"
        for _ in range(150):
            deep = [deep]
        node["labels"]["deep"] = deep
    elif kind == "nested deeper than the parser goes":
        node["labels"]["deep"] = DEEP  # replaced in the text: 5,000 levels, beyond what json.loads goes
    return data


EDITS = [
    "none", "unknown profile", "overlapping layout", "unknown model", "negative count", "count as text",
    "huge priority", "duplicate node", "extra field", "request nobody knows", "not a mapping",
    "nested deeper than the limit", "nested deeper than the parser goes",
]  # fmt: skip


def _outcome(read: Any) -> ClusterSnapshot | str:
    try:
        return read()
    except MigoptError as err:
        return str(err)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(EDITS),
    pick=st.integers(0, 1_000),
    indent=st.sampled_from([None, 1]),
)
def test_a_json_file_reads_as_the_general_path_reads_it(
    tmp_path_factory: Any, seed: int, kind: str, pick: int, indent: int | None
) -> None:
    data = _edit(generate_snapshot(ClusterSpec(nodes=4, pending_pods=6, seed=seed)), kind, pick)
    text = json.dumps(data, indent=indent).replace(f'"{DEEP}"', "[" * 5_000 + "]" * 5_000)
    path: Path = tmp_path_factory.mktemp("json") / "snapshot.json"
    path.write_text(text, encoding="utf-8")
    fast = _outcome(lambda: load_snapshot(path))
    general = _outcome(lambda: parse_snapshot(load_document(text, f"snapshot {str(path)!r}", language="YAML/JSON")))
    assert fast == general
    if kind == "none":
        assert isinstance(fast, ClusterSnapshot)


def test_json_the_fast_path_cannot_take_still_reads(tmp_path: Path) -> None:
    """A byte-order mark, or a surrogate escape, sends the file the general way: it still reads."""
    data = generate_snapshot(ClusterSpec(nodes=2, pending_pods=2, seed=1))
    data["nodes"][0]["labels"]["note"] = "\U0001f600"
    expected = parse_snapshot(json.loads(json.dumps(data)))
    for text in ("\ufeff" + json.dumps(data), json.dumps(data, ensure_ascii=True)):
        path = tmp_path / "snapshot.json"
        path.write_text(text, encoding="utf-8")
        assert load_snapshot(path) == expected


def test_plain_json_is_validated_from_its_text(tmp_path: Path, monkeypatch: Any) -> None:
    """Plain JSON within the limits never goes through the general reading (the parse pydantic saves)."""

    def general(*_: object, **__: object) -> None:
        raise AssertionError("the general reading ran")

    monkeypatch.setattr("migopt.snapshot_io.load_document", general)
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(generate_snapshot(ClusterSpec(nodes=2, pending_pods=2, seed=2))), encoding="utf-8")
    assert load_snapshot(path).nodes
