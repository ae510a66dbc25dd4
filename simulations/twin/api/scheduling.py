"""Why a pending pod is not scheduled, said as kube-scheduler says it, and the `FailedScheduling` Events it records.

The message is the scheduler's fit error: "0/N nodes are available: " then, sorted, how many nodes failed for each
reason (cordoned: `node(s) were unschedulable`; selector or affinity: `node(s) didn't match Pod's node
affinity/selector`; a taint: `node(s) had untolerated taint {key: value}`; too few free devices: `Insufficient
<resource>`), then what preemption found (the twin never preempts). The twin's filters are `solver.demand.rejection`,
the ones its scheduler applies.

Events follow kube-scheduler and client-go's event recorder: the scheduler retries an unschedulable pod when the
cluster changes (at most every `RETRY_BACKOFF_S`, its maximum backoff) and at least every `RETRY_IDLE_S` (how long
it leaves a pod in its unschedulable queue); each attempt records a Warning `FailedScheduling`; an attempt with the
same message as the last one raises that Event's `count` and `lastTimestamp` instead of creating another; and the
recorder's spam filter lets `SPAM_BURST` Events per pod through, then one per `SPAM_REFILL_S`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from simulations.twin.api.render import split_name
from simulations.twin.cluster import Twin
from simulations.twin.state import TwinNode, TwinPod
from solver.demand import Demand, PriorityWeights, demands, rejection
from solver.profiles import resource_name
from solver.snapshot import GPU_RESOURCE, ClusterSnapshot, NodeState, PendingPod, Taint

RETRY_BACKOFF_S = 10.0  # kube-scheduler's podMaxBackoffSeconds
RETRY_IDLE_S = 300.0  # podMaxInUnschedulablePodsDuration
SPAM_BURST = 25  # client-go EventSourceObjectSpamFilter: burst, then one per refill period
SPAM_REFILL_S = 300.0
SCHEDULER = "default-scheduler"


def _demand(pod: TwinPod) -> Demand:
    spec = pod.spec
    pending = PendingPod(
        name=pod.name, requests=spec.requests, priority=spec.priority, node_selector=spec.node_selector,
        node_affinity=spec.node_affinity, tolerations=spec.tolerations,
    )  # fmt: skip
    return demands(ClusterSnapshot(pods=[pending]), PriorityWeights([]))[0]


@dataclass(frozen=True)
class NodeFacts:
    """What the scheduler's filters read of a node, taken once per node version (not once per pod)."""

    view: NodeState
    taints: tuple[Taint, ...]
    free: dict[str, int]


def node_facts(twin: Twin, node: TwinNode) -> NodeFacts:
    held: Counter[str] = Counter()
    for gpu in node.gpus:
        for instance in gpu.instances:
            if instance.pod is not None:
                held[GPU_RESOURCE if node.strategy == "single" else resource_name(instance.profile)] += 1
    free = {res: count - held[res] for res, count in twin.allocatable(node.name).items()}
    view = NodeState(name=node.name, labels=node.labels, taints=node.taints, unschedulable=node.unschedulable)
    return NodeFacts(view=view, taints=tuple(node.taints), free=free)


def _node_reasons(facts: NodeFacts, demand: Demand, anywhere: Demand, requests: dict[str, int]) -> list[str]:
    """The first filter the node fails, in kube-scheduler's plugin order (NodeUnschedulable, TaintToleration,
    NodeAffinity, then NodeResourcesFit), or its missing devices."""
    view = facts.view
    if view.unschedulable:
        return ["node(s) were unschedulable"]
    if facts.taints and rejection(view, anywhere) == "taint":
        for taint in facts.taints:
            if rejection(view.model_copy(update={"taints": [taint]}), anywhere) == "taint":
                return [f"node(s) had untolerated taint {{{taint.key}: {taint.value or ''}}}"]
    if rejection(view, demand) is not None:
        return ["node(s) didn't match Pod's node affinity/selector"]
    return [f"Insufficient {res}" for res, count in sorted(requests.items()) if facts.free.get(res, 0) < count]


def unschedulable_message(pod: TwinPod, nodes: Iterable[NodeFacts]) -> str:
    """kube-scheduler's message for a pod no node can run now."""
    demand = _demand(pod)
    anywhere = replace(demand, pod=demand.pod.model_copy(update={"node_selector": {}, "node_affinity": []}))
    requests = dict(pod.spec.requests)
    if demand.kind == "single":  # a single-strategy product is asked as whole GPUs of that product
        requests = {GPU_RESOURCE: sum(requests.values())}
    histogram: Counter[str] = Counter()
    total = filtered = 0
    for facts in nodes:
        total += 1
        reasons = _node_reasons(facts, demand, anywhere, requests)
        histogram.update(reasons)
        filtered += bool(reasons) and not reasons[0].startswith("Insufficient")
    counts = ", ".join(f"{count} {reason}" for reason, count in sorted(histogram.items()))
    found = f"0/{total} nodes are available: {counts}." if counts else f"0/{total} nodes are available."
    parts = []
    if total - filtered:
        parts.append(f"{total - filtered} No preemption victims found for incoming pod")
    if filtered:
        parts.append(f"{filtered} Preemption is not helpful for scheduling")
    return f"{found} preemption: 0/{total} nodes are available: {', '.join(parts)}."


@dataclass
class _Record:
    event: str  # the Event's name
    message: str
    count: int
    attempted_at: float
    version: object  # the cluster's state at that attempt
    tokens: float
    refilled_at: float


@dataclass(frozen=True)
class SchedulingEvent:
    """One write the recorder asks for: a new Event (`count` 1) or a raised count on an existing one."""

    namespace: str
    name: str  # the Event's name
    pod: str  # the pod's name in its namespace
    message: str
    count: int
    first: bool


class FailedSchedulingRecorder:
    """Decides when a pending pod's scheduling attempt is recorded, and as which Event."""

    def __init__(self) -> None:
        self._pods: dict[str, _Record] = {}
        self._names = itertools.count(1)

    def forget(self, twin_name: str) -> None:
        """The pod was bound or deleted: its next pending spell starts afresh."""
        self._pods.pop(twin_name, None)

    def due(self, twin_name: str, now: float, version: object) -> bool:
        """Whether the scheduler tries the pod again now (`version`: the cluster's state, which moves on any change
        that may make room)."""
        record = self._pods.get(twin_name)
        if record is None:
            return True
        waited = now - record.attempted_at
        return waited >= RETRY_IDLE_S or (version != record.version and waited >= RETRY_BACKOFF_S)

    def attempt(self, twin_name: str, message: str, now: float, version: object) -> SchedulingEvent | None:
        """A failed attempt: the Event write to make, or None when the spam filter drops it."""
        namespace, pod = split_name(twin_name)
        record = self._pods.get(twin_name)
        if record is None:
            record = self._pods[twin_name] = _Record("", "", 0, now, version, float(SPAM_BURST), now)
        record.attempted_at, record.version = now, version
        record.tokens = min(float(SPAM_BURST), record.tokens + (now - record.refilled_at) / SPAM_REFILL_S)
        record.refilled_at = now
        if record.tokens < 1.0:
            return None
        record.tokens -= 1.0
        first = message != record.message or not record.event
        if first:
            record.event, record.message, record.count = f"{pod}.{next(self._names):016x}", message, 0
        record.count += 1
        return SchedulingEvent(namespace, record.event, pod, message, record.count, first)
