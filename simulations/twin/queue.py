"""The scheduling queue: pending pods in kube-scheduler's order (priority descending, then arrival), kept in order
as pods come and go rather than sorted on every pass, and grouped by what they ask of a node.

A pass walks the groups' heads in queue order (`walk`), so once a group's head found no node the rest of that
group costs nothing: a trace replay that leaves thousands of alike pods waiting pays one look per group, not one
per pod, on every pass.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Set
from heapq import heapify, heappop, heappush
from operator import attrgetter

from simulations.twin.state import TwinPod
from solver.demand import Demand

Ask = tuple[object, ...]
GroupKey = tuple[int, Ask]
"""(priority, ask): the pods of one group wait in arrival order."""

_arrival = attrgetter("arrival")


def ask_of(demand: Demand) -> Ask:
    """What a pod asks of a node: pods with equal asks qualify on the same nodes for the same devices."""
    selector = tuple(sorted(demand.pod.node_selector.items()))
    return (demand.eligibility_key, demand.resources, selector)


class PendingQueue:
    """Pending pods by name, in queue order, and by group (see the module docstring)."""

    def __init__(self) -> None:
        self._by_priority: dict[int, dict[str, TwinPod]] = {}  # a dict keeps insertion order: arrival order
        self._priorities: list[int] = []  # ascending
        self._groups: dict[GroupKey, list[TwinPod]] = {}  # each sorted by arrival
        self._group_of: dict[str, GroupKey] = {}

    def __len__(self) -> int:
        return len(self._group_of)

    def __contains__(self, name: object) -> bool:
        return name in self._group_of

    def __iter__(self) -> Iterator[TwinPod]:
        """Every pending pod in queue order (do not change the queue while iterating)."""
        for priority in reversed(self._priorities):
            yield from self._by_priority[priority].values()

    def add(self, pod: TwinPod, ask: Ask) -> None:
        """Queue a pod; pods are added in arrival order (a later arrival never jumps an earlier one of its group)."""
        if pod.name in self._group_of:
            raise ValueError(f"pod {pod.name!r} is already queued")
        priority = pod.spec.priority
        if priority not in self._by_priority:
            self._by_priority[priority] = {}
            insort(self._priorities, priority)
        self._by_priority[priority][pod.name] = pod
        key = (priority, ask)
        group = self._groups.setdefault(key, [])
        if group and group[-1].arrival > pod.arrival:
            insort(group, pod, key=_arrival)
        else:
            group.append(pod)
        self._group_of[pod.name] = key

    def remove(self, pod: TwinPod) -> None:
        """Take the pod out of the queue (bound, deleted); nothing happens when it is not queued."""
        key = self._group_of.pop(pod.name, None)
        if key is None:
            return
        priority = key[0]
        same_priority = self._by_priority[priority]
        del same_priority[pod.name]
        if not same_priority:
            del self._by_priority[priority]
            self._priorities.remove(priority)
        group = self._groups[key]
        del group[bisect_left(group, pod.arrival, key=_arrival)]
        if not group:
            del self._groups[key]

    def walk(self, skip: Set[Ask]) -> Iterator[tuple[TwinPod, Ask]]:
        """The pods a scheduling pass tries, in queue order, with their asks; groups whose ask is in `skip` are left
        out, and `skip` is read live: an ask added while walking drops the rest of its group. The consumer may
        remove the pod it was given from the queue before taking the next."""
        heap = [(-key[0], group[0].arrival, key) for key, group in self._groups.items() if key[1] not in skip]
        heapify(heap)
        while heap:
            negated, arrival, key = heappop(heap)
            group = self._groups.get(key)
            if group is None or key[1] in skip:
                continue
            at = bisect_left(group, arrival, key=_arrival)
            if at == len(group):
                continue
            pod = group[at]
            if pod.arrival != arrival:  # an earlier member left the queue meanwhile: take this one in its turn
                heappush(heap, (negated, pod.arrival, key))
                continue
            yield pod, key[1]
            group = self._groups.get(key)
            if group is None or key[1] in skip:
                continue
            after = bisect_right(group, arrival, key=_arrival)
            if after < len(group):
                heappush(heap, (negated, group[after].arrival, key))
