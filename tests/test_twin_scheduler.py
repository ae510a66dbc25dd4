"""The twin's scheduler keeps pools, an index of offering nodes, filter answers and refused asks across passes;
whatever happens in between, it must bind exactly as a scan of every pending pod against every node would."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.placement import apply_map
from simulations.twin.clock import SimClock
from simulations.twin.scheduler import FreePool, Scheduler, pick_devices
from simulations.twin.state import DeviceRef, PodSpec, TwinGpu, TwinInstance, TwinNode, device_ref
from simulations.twin.workload import PodStore
from solver.catalog import load_catalog
from solver.demand import Demand, PriorityWeights, demands, rejection
from solver.snapshot import ClusterSnapshot, NodeState, PendingPod, Taint, Toleration

MODEL = load_catalog().model("A100-40GB")
MAPS = [{"1g.5gb": 7}, {"2g.10gb": 3, "1g.5gb": 1}, {"3g.20gb": 2}, {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 1}]
REQUESTS = [
    {"nvidia.com/mig-1g.5gb": 1}, {"nvidia.com/mig-1g.5gb": 2}, {"nvidia.com/mig-2g.10gb": 1},
    {"nvidia.com/mig-3g.20gb": 1}, {"nvidia.com/mig-1g.5gb": 1, "nvidia.com/mig-2g.10gb": 1},
    {"nvidia.com/mig-7g.40gb": 1},
]  # fmt: skip
TAINT = Taint(key="dedicated", value="infer")
TOLERATION = Toleration(key="dedicated", operator="Equal", value="infer", effect="NoSchedule")


def layout(choice: int) -> list[TwinInstance]:
    instances, _ = apply_map(MODEL, MAPS[choice])
    assert instances is not None
    return [TwinInstance(profile=i.profile, start=i.start) for i in instances]


@dataclass
class View:
    """The cluster as the scheduler reads it: every device advertised, pools keyed by the store's holdings."""

    nodes: dict[str, TwinNode]
    store: PodStore
    revisions: dict[str, int] = field(default_factory=dict)

    def advertised(self, node: str) -> Iterable[DeviceRef]:
        return advertised(self.nodes[node])

    def pool_key(self, node: str) -> tuple[int, ...]:
        return (self.store.holdings_version.get(node, 0),)


def advertised(node: TwinNode) -> frozenset[DeviceRef]:
    return frozenset(device_ref(g.index, i.start, i.profile) for g in node.gpus for i in g.instances)


def demand_of(name: str, spec: PodSpec) -> Demand:
    pending = PendingPod(
        name=name, requests=spec.requests, priority=spec.priority, node_selector=spec.node_selector,
        tolerations=spec.tolerations,
    )  # fmt: skip
    return demands(ClusterSnapshot(pods=[pending]), PriorityWeights([]))[0]


class Reference:
    """kube-scheduler's pass without any memory: every pending pod in order, every node by name."""

    def __init__(self, nodes: dict[str, TwinNode], seed: int) -> None:
        self.nodes = {name: node.model_copy(deep=True) for name, node in nodes.items()}
        self.rng = random.Random(seed)
        self.pending: list[tuple[int, int, str, Demand]] = []  # (-priority, arrival, name, demand)

    def run(self) -> list[tuple[str, str, list[DeviceRef]]]:
        bound = []
        for entry in sorted(self.pending):
            _, _, pod, demand = entry
            options = []
            for name in sorted(self.nodes):
                node = self.nodes[name]
                view = NodeState(name=name, labels=node.labels, taints=node.taints, unschedulable=node.unschedulable)
                if rejection(view, demand) is not None:
                    continue
                devices = pick_devices(demand, FreePool(node, advertised(node)))
                if devices is not None:
                    options.append((name, devices))
            if not options:
                continue
            name, devices = options[self.rng.randrange(len(options))] if len(options) > 1 else options[0]
            for ref in devices:
                instance = self.nodes[name].gpu(ref.gpu).instance_at(ref.start)
                assert instance is not None
                instance.pod = pod
            self.pending.remove(entry)
            bound.append((pod, name, devices))
        return bound

    def free(self, pod: str) -> None:
        for node in self.nodes.values():
            for gpu in node.gpus:
                for instance in gpu.instances:
                    if instance.pod == pod:
                        instance.pod = None


_NODE = st.tuples(
    st.lists(st.integers(0, len(MAPS) - 1), min_size=1, max_size=2),  # GPU layouts
    st.sampled_from(["a", "b"]),  # pool label
    st.booleans(),  # tainted
    st.integers(0, 5),  # devices of its first GPU held from the start
)
_ADD = st.tuples(
    st.just("add"), st.integers(0, len(REQUESTS) - 1), st.integers(0, 2), st.sampled_from([None, "a", "b"]),
    st.booleans(),
)  # fmt: skip
_OPERATION = st.one_of(
    _ADD,
    _ADD,  # pods arrive more often than anything else happens, so the small cluster fills and pods wait
    st.tuples(st.just("finish"), st.integers(0, 50)),
    st.tuples(st.just("relabel"), st.integers(0, 4), st.sampled_from(["a", "b"])),
    st.tuples(st.just("cordon"), st.integers(0, 4), st.booleans()),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), specs=st.lists(_NODE, min_size=1, max_size=3),
       operations=st.lists(_OPERATION, min_size=20, max_size=50))  # fmt: skip
def test_binds_exactly_as_a_full_scan_would(
    seed: int, specs: list[tuple[list[int], str, bool, int]], operations: list[tuple[object, ...]]
) -> None:
    nodes: dict[str, TwinNode] = {}
    for n, (maps, pool, tainted, held) in reversed(list(enumerate(specs))):  # not created in name order
        gpus = [TwinGpu(index=i, model=MODEL.key, instances=layout(m)) for i, m in enumerate(maps)]
        for instance in gpus[0].instances[:held]:
            instance.pod = f"old-{n}"
        nodes[f"n{n}"] = TwinNode(name=f"n{n}", labels={"pool": pool}, taints=[TAINT] if tainted else [], gpus=gpus)
    reference = Reference(nodes, seed)
    scheduler = Scheduler(random.Random(seed))
    store = PodStore(SimClock(), nodes, on_holdings=scheduler.node_changed)
    view = View(nodes, store)
    metadata = 0  # what the twin's growth counts of label, cordon and taint changes

    def one_pass() -> None:
        bound: list[tuple[str, str, list[DeviceRef]]] = []

        def bind(pod: object, node: str, devices: list[DeviceRef]) -> None:
            store.bind(pod, node, devices)  # type: ignore[arg-type]
            bound.append((pod.name, node, devices))  # type: ignore[attr-defined]

        scheduler.run(store.queue, store.demand, view, bind, (store.released_version, metadata))
        assert bound == reference.run()

    for count, operation in enumerate(operations):
        kind = operation[0]
        if kind == "add":
            _, request, priority, selector, tolerates = operation
            spec = PodSpec(
                requests=REQUESTS[request], priority=priority, node_selector={"pool": selector} if selector else {},
                tolerations=[TOLERATION] if tolerates else [],
            )  # fmt: skip
            pod = store.add(f"p{count}", spec)
            reference.pending.append((-priority, pod.arrival, pod.name, demand_of(pod.name, spec)))
        elif kind == "finish":
            running = sorted(p.name for p in store.running())
            if running:
                name = running[operation[1] % len(running)]
                store.delete(store.pods[name])
                reference.free(name)
        else:
            name = f"n{operation[1]}"
            if name not in nodes:
                continue
            if kind == "relabel":
                nodes[name].labels["pool"] = reference.nodes[name].labels["pool"] = str(operation[2])
            else:
                nodes[name].unschedulable = reference.nodes[name].unschedulable = bool(operation[2])
            view.revisions[name] = view.revisions.get(name, 0) + 1
            metadata += 1
        one_pass()
