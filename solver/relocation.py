"""Moving a plan's one-device pods to spare devices on other nodes, so that a several-device pod can have the
devices they sat on together.

The aggregated answer hands out devices by pool, blind to which node they are on; disaggregation then seats
one-device pods first, and a several-device pod may find no node with its devices together although the
cluster has them apart. The repair would then evict holders for it, where moving a few pending one-device pods
(which disrupts nobody) frees a node: that is what this module finds. A mover only goes where the plan's own
placement rules allow it (a node that accepts it, a device nobody uses, a GPU whose change it may use without
adding an eviction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from solver.checkpoint import Checkpoint, carry_on
from solver.decisions import Decisions, Device, resource_key
from solver.demand import Demand, rejection
from solver.problem import PodGroup, Problem
from solver.snapshot import GpuState, LayoutShape, NodeState

NOBODY = float("-inf")
"""The floor and tier of a GPU nobody holds: any pod may take its place or its devices."""


class _Spare(NamedTuple):
    """A device that was unused when the spare index was made, with its GPU's target then (None: kept)."""

    node: NodeState
    gpu: GpuState
    device: Device
    target: dict[str, int] | None


class _Mover(NamedTuple):
    """A one-device pod of the plan, its group and the resource key it asks for."""

    demand: Demand
    group: PodGroup
    key: str


class Movers:
    """The plan's one-device pods by the device each uses, and where each may move.

    `tier(gpu, target)` gives the priority a pod must exceed to use a GPU's devices. Spare devices are indexed
    as they stood at the first question, by resource key in node name order (`_SpareIndex`); a device used
    since, or whose GPU got another target since, is dropped from the index as it is met (devices only ever get
    used, and targets replaced, so the spare devices only get fewer). Whether a node takes a mover is asked of
    the node itself (`rejection`), per pod group: the repair's node index tells nodes apart only by the labels
    its stranded pods select on."""

    def __init__(
        self,
        problem: Problem,
        decisions: Decisions,
        used: Mapping[str, set[Device]],
        tier: Callable[[GpuState, dict[str, int] | None], float],
        facts: RelocationFacts,
        checkpoint: Checkpoint = carry_on,
    ) -> None:
        self._problem, self._decisions, self._used, self._tier = problem, decisions, used, tier
        self._facts = facts
        self._checkpoint = checkpoint  # called while the spare devices are indexed (node by node)
        self._accepted: dict[tuple[int, str], bool] = {}  # (group id, node name) -> whether the node accepts it
        self._by_device: dict[Device, _Mover] | None = None  # `_movers`, made on the first question
        self._where: dict[int | str, set[str]] | None = None  # `_nodes_of`, made when first asked
        self._spare: _SpareIndex | None = None  # `_spares`, made on the first question
        # a pod of a group found nowhere to go, so would the rest; no pod of a key can go anywhere
        self._stuck: set[int] = set()
        self._dry: set[str] = set()
        self._unsettled: set[str] = set()  # nodes where `movable` has answered no for more devices since asked

    def unsettled(self) -> set[str]:
        """The nodes where fewer devices are movable than when this was last asked."""
        nodes = self._unsettled
        if nodes:
            self._unsettled = set()
        return nodes

    def movable(self, device: Device) -> bool:
        """Whether a one-device pod of the plan uses the device and might move elsewhere: not once a pod of its
        group found no spare device on any node (spare devices only get fewer), nor any device of its key is left."""
        mover = self._movers().get(device)
        return mover is not None and id(mover.group) not in self._stuck and mover.key not in self._dry

    def destinations(self, devices: Iterable[Device], away_from: str) -> dict[Device, Device] | None:
        """For each movable device, a spare device its pod may move to on another node (each used once), or None
        when some pod has nowhere to go."""
        moves: dict[Device, Device] = {}
        reserved: set[Device] = set()
        for device in devices:
            mover = self._movers()[device]
            found, elsewhere = self._spare_for(mover, away_from, reserved)
            if found is None:
                if not elsewhere:  # nowhere to go, from whatever node, whatever else moves
                    self._stuck.add(id(mover.group))
                    self._unsettled |= self._nodes_of(id(mover.group))
                return None
            moves[device] = found
            reserved.add(found)
        return moves

    def move(self, moves: Mapping[Device, Device]) -> list[NodeState]:
        """Move the pods (their placements and the devices used); the nodes they moved to."""
        used, placements, gpus = self._used, self._decisions.placements, self._problem.gpu_index()
        movers = self._movers()
        for old, new in moves.items():
            mover = movers.pop(old)
            placements[mover.demand.pod.name] = [new]
            used[old.node].discard(old)
            used[new.node].add(new)
            movers[new] = mover
            if self._where is not None:
                self._where.setdefault(id(mover.group), set()).add(new.node)
                self._where.setdefault(mover.key, set()).add(new.node)
        return list({new.node: gpus[new.node, new.gpu][0] for new in moves.values()}.values())

    def _spare_for(self, mover: _Mover, away_from: str, reserved: set[Device]) -> tuple[Device | None, bool]:
        """A spare device the mover may take, and (when there is none) whether one is ruled out only by this
        question: on the node it leaves, or set aside for another mover."""
        spares = self._spares()
        candidates = spares.of(mover.key)
        priority = mover.demand.pod.priority
        targets, used = self._decisions.targets, self._used
        kept: list[_Spare] = []
        found, elsewhere = None, False
        position = 0
        while position < len(candidates) or spares.more(mover.key):
            spare = candidates[position]
            position += 1
            name = spare.node.name
            current = targets.get((name, spare.gpu.index))
            if spare.device in used[name] or current is not spare.target:
                continue  # used or rebuilt since: for good
            kept.append(spare)
            if not self._accepts(mover, spare.node):
                continue
            level = self._tier(spare.gpu, current)
            if not (level < priority and (level == NOBODY or any(d.gpu == spare.gpu.index for d in used[name]))):
                continue  # a changing GPU only where another pod keeps it changing: no new eviction
            if name == away_from or spare.device in reserved:
                elsewhere = True
                continue
            found = spare.device
            kept.extend(candidates[position:])
            break
        candidates[:] = kept
        if not kept and mover.key not in self._dry:
            self._dry.add(mover.key)
            self._unsettled |= self._nodes_of(mover.key)
        return found, elsewhere

    def _nodes_of(self, group_or_key: int | str) -> set[str]:
        """The nodes where movers of a group (by id) or resource key sit, or have sat: a superset is enough for
        what it is asked for (the nodes whose answers to `movable` may change)."""
        if self._where is None:
            where: dict[int | str, set[str]] = {}
            for device, mover in self._movers().items():
                where.setdefault(id(mover.group), set()).add(device.node)
                where.setdefault(mover.key, set()).add(device.node)
            self._where = where
        return self._where.get(group_or_key, set())

    def _accepts(self, mover: _Mover, node: NodeState) -> bool:
        """Whether the node takes the mover's pod (its selector, affinity, tolerations): the same for its group."""
        key = (id(mover.group), node.name)
        accepted = self._accepted.get(key)
        if accepted is None:
            accepted = self._accepted[key] = rejection(node, mover.demand) is None
        return accepted

    def _movers(self) -> dict[Device, _Mover]:
        """The plan's one-device pods by their device (a repair that moves no pod never asks)."""
        if self._by_device is None:
            movers = self._facts.movers()
            placements = self._decisions.placements
            self._by_device = {devices[0]: movers[pod] for pod, devices in placements.items() if pod in movers}
        return self._by_device

    def _spares(self) -> _SpareIndex:
        if self._spare is None:
            targets, used = self._decisions.targets, self._used
            self._spare = _SpareIndex(self._problem, targets, used, self._facts, self._checkpoint)
        return self._spare


class RelocationFacts:
    """What moving one-device pods reads that no plan changes: each one-device pending pod as a mover, by name,
    and the resource keys of the devices each mixed-strategy node's GPUs offer while they keep their maps. Made
    once per problem (`solver.repair.RepairContext` holds them: the optimal policy makes them while CP-SAT solves,
    and both threads only fill caches, with the same values whoever fills them); a repair that moves no pod never
    reads them. At 10,000 nodes, making them took 0.05-0.1 s each where a repair moved its first pod. Holds what
    it reads of the problem, not the problem, which holds it: no reference cycle keeps a plan's data alive."""

    def __init__(self, problem: Problem) -> None:
        self._groups, self._nodes = problem.pod_groups, problem.snapshot.nodes
        self._movers: dict[str, _Mover] | None = None
        self._node_keys: dict[str, frozenset[str]] | None = None
        self._layout_keys: dict[LayoutShape, frozenset[str]] = {}
        self._mixed: list[NodeState] | None = None

    def prime(self) -> None:
        self.movers()
        self.node_keys()
        self.mixed_nodes()

    def mixed_nodes(self) -> list[NodeState]:
        """The mixed-strategy nodes in name order, the order spare devices are indexed in (read-only)."""
        if self._mixed is None:
            self._mixed = sorted((node for node in self._nodes if node.strategy == "mixed"), key=lambda n: n.name)
        return self._mixed

    def movers(self) -> dict[str, _Mover]:
        """Every one-device pending pod as a mover, by pod name."""
        if self._movers is None:
            self._movers = {
                d.pod.name: _Mover(d, g, d.resources[0][0])
                for g in self._groups
                if g.demands[0].devices == 1
                for d in g.demands
            }
        return self._movers

    def node_keys(self) -> dict[str, frozenset[str]]:
        """Per mixed-strategy node, the keys of its GPUs' free devices while each keeps its map."""
        if self._node_keys is None:
            keys_of: dict[str, frozenset[str]] = {}
            alike: dict[tuple[frozenset[str], ...], frozenset[str]] = {}  # nodes repeat a few GPU layouts
            for node in self._nodes:
                if node.strategy == "mixed":
                    per_gpu = tuple([self.kept_keys(node, gpu) for gpu in node.gpus])
                    found = alike.get(per_gpu)
                    if found is None:
                        found = alike[per_gpu] = frozenset().union(*per_gpu)
                    keys_of[node.name] = found
            self._node_keys = keys_of
        return self._node_keys

    def kept_keys(self, node: NodeState, gpu: GpuState) -> frozenset[str]:
        """The keys of a mixed-strategy GPU's free devices while it keeps its map: its layout (and which instances
        are held) alone decides them (a device's key is its profile), so they are read once per layout."""
        found = self._layout_keys.get(gpu.layout_shape)
        if found is None:  # `Problem.keyed_devices(node, gpu, None)`'s keys
            found = frozenset(resource_key(node, gpu, profile) for profile, _ in gpu.free_instances)
            self._layout_keys[gpu.layout_shape] = found
        return found


class _SpareIndex:
    """The devices unused when it was made, by resource key in node name order, each with its GPU's target then.

    Indexed only as far as the questions go (`more`), key by key, from the targets and devices in use as they
    stood when it was made, so that it holds what indexing every node then would have: the first nodes mostly
    answer, and indexing all of them took 0.3-0.5 s at 10,000 nodes. Which keys a node offers is known ahead for
    nodes without a target (`RelocationFacts`), and read once for the others, whatever key asked first."""

    def __init__(
        self,
        problem: Problem,
        targets: Mapping[tuple[str, int], dict[str, int]],
        used: Mapping[str, set[Device]],
        facts: RelocationFacts,
        checkpoint: Checkpoint,
    ) -> None:
        self._problem, self._facts, self._checkpoint = problem, facts, checkpoint
        self._targets = dict(targets)  # targets are replaced, never changed in place: a shallow copy holds them
        self._targeted = {name for name, _ in self._targets}
        self._used = {name: frozenset(devices) for name, devices in used.items()}
        self._nodes = facts.mixed_nodes()
        self._next: dict[str, int] = {}  # per key, the position of the first node not indexed for it
        self._by_key: dict[str, list[_Spare]] = {}
        self._keys_of_node: dict[str, frozenset[str]] = {}  # of the nodes with a target

    def of(self, key: str) -> list[_Spare]:
        """The key's spare devices indexed so far (`more` adds to this list; a caller may drop some from it)."""
        return self._by_key.setdefault(key, [])

    def more(self, key: str) -> bool:
        """Index the key on further nodes until one adds a spare device of it; False when every node is indexed."""
        spares, nodes = self.of(key), self._nodes
        had = len(spares)
        while len(spares) == had:
            position = self._next.get(key, 0)
            if position == len(nodes):
                return False
            if position % _CHECKPOINT_NODES == _CHECKPOINT_NODES - 1:
                self._checkpoint()
            self._next[key] = position + 1
            node = nodes[position]
            if key in self._keys(node):
                self._add(node, key)
        return True

    def _keys(self, node: NodeState) -> frozenset[str]:
        """The keys of the node's devices: a node no GPU of which has a target offers what its kept GPUs do
        (`RelocationFacts.node_keys`); on any other, each GPU's are read, once per node."""
        if node.name not in self._targeted:
            return self._facts.node_keys()[node.name]
        found = self._keys_of_node.get(node.name)
        if found is None:
            keys: set[str] = set()
            for gpu in node.gpus:
                target = self._targets.get((node.name, gpu.index))
                if target is None:
                    keys |= self._facts.kept_keys(node, gpu)
                else:
                    keys.update(key for key, _ in self._problem.keyed_devices(node, gpu, target))
            found = self._keys_of_node[node.name] = frozenset(keys)
        return found

    def _add(self, node: NodeState, key: str) -> None:
        name, problem = node.name, self._problem
        used = self._used.get(name, frozenset())
        spares = self._by_key[key]
        for gpu in node.gpus:
            target = self._targets.get((name, gpu.index))
            for offered, device in problem.keyed_devices(node, gpu, target):
                if offered == key and device not in used:
                    spares.append(_Spare(node, gpu, device, target))


_CHECKPOINT_NODES = 500
"""Nodes whose spare devices are indexed between two checkpoints."""
