"""The twin's scheduling queue: kept in kube-scheduler's order as pods come and go, walked group by group."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.twin.queue import Ask, PendingQueue
from simulations.twin.state import PodSpec, TwinPod

ASKS: list[Ask] = [("1g",), ("2g",), ("3g",)]


def pod(arrival: int, priority: int) -> TwinPod:
    spec = PodSpec(requests={"nvidia.com/mig-1g.5gb": 1}, priority=priority)
    return TwinPod(name=f"p{arrival}", origin=f"p{arrival}", spec=spec, arrival=arrival, created_at=0.0)


def order(pods: list[TwinPod]) -> list[str]:
    return [p.name for p in sorted(pods, key=lambda p: (-p.spec.priority, p.arrival))]


# (priority, ask index) per arriving pod, then which of them leave the queue
_ARRIVALS = st.lists(st.tuples(st.integers(-2, 2), st.integers(0, len(ASKS) - 1)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(arrivals=_ARRIVALS, leaving=st.sets(st.integers(0, 39)))
def test_iteration_is_priority_then_arrival_order_whatever_left(
    arrivals: list[tuple[int, int]], leaving: set[int]
) -> None:
    queue = PendingQueue()
    pods = [pod(n, priority) for n, (priority, _) in enumerate(arrivals)]
    for p, (_, ask) in zip(pods, arrivals, strict=True):
        queue.add(p, ASKS[ask])
    for n in sorted(leaving):
        if n < len(pods):
            queue.remove(pods[n])
            queue.remove(pods[n])  # a second removal changes nothing
    left = [p for n, p in enumerate(pods) if n not in leaving]
    assert [p.name for p in queue] == order(left)
    assert len(queue) == len(left) and all(p.name in queue for p in left)


@settings(max_examples=60, deadline=None)
@given(arrivals=_ARRIVALS, served=st.sets(st.integers(0, 39)), refused=st.sets(st.integers(0, len(ASKS) - 1)))
def test_walk_yields_queue_order_and_drops_a_group_once_its_ask_is_refused(
    arrivals: list[tuple[int, int]], served: set[int], refused: set[int]
) -> None:
    """The consumer binds the pods in `served` (they leave the queue); any other pod it is given refuses its ask.
    The walk must give exactly what a scan of the whole queue in order, skipping refused asks, would try."""
    queue = PendingQueue()
    pods = [pod(n, priority) for n, (priority, _) in enumerate(arrivals)]
    asks = {p.name: ASKS[ask] for p, (_, ask) in zip(pods, arrivals, strict=True)}
    for p in pods:
        queue.add(p, asks[p.name])
    skip: set[Ask] = {ASKS[i] for i in refused}

    expected, expected_skip = [], set(skip)
    for name in order(pods):
        if asks[name] in expected_skip:
            continue
        expected.append(name)
        if int(name[1:]) not in served:
            expected_skip.add(asks[name])

    tried = []
    for p, ask in queue.walk(skip):
        assert ask == asks[p.name]
        tried.append(p.name)
        if p.arrival in served:
            queue.remove(p)
        else:
            skip.add(ask)
    assert tried == expected
    assert skip == expected_skip


def test_a_pod_is_queued_once() -> None:
    queue = PendingQueue()
    first = pod(1, 0)
    queue.add(first, ASKS[0])
    with pytest.raises(ValueError, match="already queued"):
        queue.add(first, ASKS[1])
    assert [p.name for p in queue] == ["p1"]
