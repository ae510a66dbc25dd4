"""Chaos schedules: `migopt run --mode enforce` (one or two replicas) against `migopt twin serve`, as separate
processes on loopback, while faults are injected; then the safety invariants are checked. Prints JSON.

Each schedule (reproducible from `(seed, index)`): a fresh twin of 3-4 A100-40GB nodes x 2 GPUs at
`all-3g.20gb`, a few running 3g.20gb pods (some under a PodDisruptionBudget that blocks every eviction of
them), then a burst of pending 1g.5gb / 2g.10gb pods that need reconfigurations. In 60% of schedules with the
agent every 3g.20gb slot is busy (4 pods a node, 0-2 of them under the budget) and the burst (priority 1000)
must displace unguarded batch pods; otherwise 1 pod a node at most and a whole GPU per node stays free. Either
way the burst is servable without evicting a guarded pod. While the controller works, 2-4 faults drawn from:

- `api`: 429/500/503/409 on evictions, node patches, ConfigMap updates (`POST /migopt-twin/faults`);
- `watch`: every watch closed, with or without the history expired (410 on resume: relists);
- `kill`: SIGKILL of a controller replica at a random moment, restarted (same identity) 0.3-1.5 s later;
- `leader`: two replicas; the leader SIGKILLed (restarted later) or SIGSTOPped for longer than its lease
  (then SIGCONT: it wakes believing it leads);
- `failed`: the owned mig-parted ConfigMap replaced by garbage for 1-3 s (mig-manager runs fail), then put back
  unless the controller rewrote it meanwhile;
- `stuck`: a node's operand pods do not terminate for 2-5 s (`POST /migopt-twin/mig-manager`); the twin's
  mig-manager (v0.15, as released) waits for them 3 s (`component_wait_sim_s`, 5 minutes scaled down), then
  gives its run up leaving `pending` and the operands paused: the controller re-triggers it (`MigRunTimedOut`,
  `MigRunRetriggered`) or restores the operands once its change has ended (`MigOperandsRestored`);
- `forged`: `migopt.io/plan-id=forged`, `phase=cordoning|evicting`, `target-config=all-1g.5gb` patched onto a node;
- `lie`: (twin with `--no-agent` only) a phantom `migopt.io/gpu-report` on a node (7 free 1g.5gb per GPU).

Metrics (over all schedules):
- `unplanned_evictions`: successful evictions (twin outcome `evicted`) of a pod no node-change record ever
  named in its `evict` list (the ConfigMap `migopt-system/migopt-node-changes` is polled every 50 ms for the whole
  run; a record is saved before the eviction it announces and stays until the node's next change);
- `double_evictions`: pods evicted successfully twice (the twin never reuses a pod name: a name is one UID);
- `nodes_left_cordoned`: at the end, unschedulable nodes with no active record;
- `unconverged`: schedules where, by the horizon, a burst pod is not Running, a record is still active, or a
  node is cordoned;
- `converge_seconds_p50|p95`: simulated seconds from the first fault to the first poll, after every fault was
  undone, at which all of the above holds (converged schedules only).

Run: .venv/bin/python benchmarks/chaos.py --schedules 20 --seed 1 -o json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvidia_protocol.agent_report import (
    GPU_REPORT_ANNOTATION,
    NodeGpuReport,
    ReportedGpu,
    ReportedInstance,
    observed_time,
)
from solver.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
ACTIVE = {"cordoning", "evicting", "labelling", "applying", "verifying"}
RECORDS = "/api/v1/namespaces/migopt-system/configmaps/migopt-node-changes"
MIG_CONFIG = "/api/v1/namespaces/gpu-operator/configmaps/migopt-mig-config"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/migopt-system/leases/migopt-controller"
FAULT_KINDS = ("api", "watch", "kill", "leader", "failed", "stuck", "forged", "lie")


@dataclass(frozen=True)
class Timing:
    """Twin speed and the controller's timeouts scaled to it (controller timeouts are wall-clock seconds)."""

    speed: float = 40.0  # a mig-manager run (~90 simulated s) takes ~2.3 s; a 30 s grace period 0.75 s
    config_refresh_sim_s: float = 10.0
    component_wait_sim_s: float = 120.0  # mig-manager's 5-minute wait for operand pods, scaled: 3 s at speed 40
    interval_s: float = 0.2
    config_propagation_s: float = 1.0
    eviction_timeout_s: float = 3.0
    eviction_backoff_s: float = 0.3
    apply_timeout_s: float = 6.0
    pending_timeout_s: float = 4.0  # past the scaled operand wait (+ the run's assert), below apply_timeout_s
    quarantine_base_s: float = 2.0
    quarantine_max_s: float = 4.0
    lease_duration_s: float = 3.0
    renew_deadline_s: float = 2.0
    retry_period_s: float = 0.5
    fault_window_s: float = 6.0
    horizon_s: float = 30.0  # wall seconds after the burst, at most
    settle_s: float = 1.0  # watched after convergence, so a late unplanned eviction is still seen

    def controller_env(self) -> dict[str, str]:
        return {
            "MIGOPT_INTERVAL_S": str(self.interval_s),
            "MIGOPT_CONTROLLER__BATCH_IDLE_S": "0",
            "MIGOPT_CONTROLLER__BATCH_TIMEOUT_S": "0",
            "MIGOPT_CONTROLLER__ACTUATION__CONFIG_PROPAGATION_S": str(self.config_propagation_s),
            "MIGOPT_CONTROLLER__ACTUATION__EVICTION_TIMEOUT_S": str(self.eviction_timeout_s),
            "MIGOPT_CONTROLLER__ACTUATION__EVICTION_BACKOFF_S": str(self.eviction_backoff_s),
            "MIGOPT_CONTROLLER__ACTUATION__APPLY_TIMEOUT_S": str(self.apply_timeout_s),
            "MIGOPT_CONTROLLER__ACTUATION__PENDING_TIMEOUT_S": str(self.pending_timeout_s),
            "MIGOPT_CONTROLLER__ISOLATION__QUARANTINE_BASE_S": str(self.quarantine_base_s),
            "MIGOPT_CONTROLLER__ISOLATION__QUARANTINE_MAX_S": str(self.quarantine_max_s),
            "MIGOPT_LEADER__LEASE_DURATION_S": str(self.lease_duration_s),
            "MIGOPT_LEADER__RENEW_DEADLINE_S": str(self.renew_deadline_s),
            "MIGOPT_LEADER__RETRY_PERIOD_S": str(self.retry_period_s),
        }


@dataclass
class Fault:
    kind: str
    at_s: float  # wall seconds after the burst
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Schedule:
    index: int
    nodes: int
    agent: bool
    replicas: int
    running: list[tuple[str, bool]]  # (pod, under the budget)
    burst: list[tuple[str, str]]  # (pod, resource)
    priority: int  # the burst's
    faults: list[Fault]


def draw(seed: int, index: int, timing: Timing) -> Schedule:
    rng = random.Random(f"chaos:{seed}:{index}")
    nodes = rng.choice((3, 4))
    kinds = rng.sample(FAULT_KINDS, rng.randint(2, 4))
    agent = "lie" not in kinds
    replicas = 2 if "leader" in kinds else 1
    # every 3g.20gb slot busy: the burst (priority 1000) must displace batch pods; only with the agent (without
    # it a busy GPU's layout is unknown to the controller, which then reconfigures none)
    full = rng.random() < 0.6 and agent
    if full:
        guarded = rng.randint(0, 2)
        running = [(f"train-{n}", n < guarded) for n in range(nodes * 4)]
    else:
        running = [(f"train-{n}", rng.random() < 0.5) for n in range(rng.randint(1, nodes))]
    burst = [(f"infer-{n}", "nvidia.com/mig-1g.5gb") for n in range(rng.randint(4, 7 if full else 8))]
    burst += [] if full else [(f"mid-{n}", "nvidia.com/mig-2g.10gb") for n in range(rng.randint(0, 2))]
    faults = []
    for kind in kinds:
        at = round(rng.uniform(0.0, timing.fault_window_s * 0.6), 2)
        node = f"node-{rng.randrange(nodes)}"
        detail: dict[str, Any] = {}
        if kind == "api":
            pairs = [("create", "pods/eviction"), ("patch", "nodes"), ("update", "configmaps")]
            detail["rules"] = [
                {"verb": v, "resource": r, "code": rng.choice((429, 500, 503, 409)), "count": rng.randint(1, 3)}
                for v, r in rng.sample(pairs, rng.randint(1, 3))
            ]
        elif kind == "watch":
            detail["expire_history"] = rng.random() < 0.5
        elif kind == "kill":
            detail["down_s"] = round(rng.uniform(0.3, 1.5), 2)
        elif kind == "leader":
            detail["how"] = rng.choice(("kill", "stop"))
            detail["down_s"] = round(rng.uniform(timing.lease_duration_s + 0.5, timing.lease_duration_s + 2.5), 2)
        elif kind == "failed":
            detail["broken_s"] = round(rng.uniform(1.0, 3.0), 2)
        elif kind == "stuck":
            detail["node"], detail["stuck_s"] = node, round(rng.uniform(2.0, 5.0), 2)
        elif kind == "forged":
            detail["node"], detail["phase"] = node, rng.choice(("cordoning", "evicting"))
        elif kind == "lie":
            detail["node"] = node
        faults.append(Fault(kind, at, detail))
    faults.sort(key=lambda f: f.at_s)
    return Schedule(index, nodes, agent, replicas, running, burst, 1000 if full else 0, faults)


# ---- HTTP against the facade ----------------------------------------------------------------------------------


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, *, content: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def get_or_none(self, path: str) -> Any:
        try:
            return self.call("GET", path)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def write(self, method: str, path: str, body: Any, content: str = "application/json") -> bool:
        """A write of ours; our own injected faults may refuse it (they are for the controller): ask again."""
        for _ in range(8):
            try:
                self.call(method, path, body, content=content)
                return True
            except urllib.error.HTTPError as err:
                if err.code in (404, 422):
                    return False
                time.sleep(0.05)
        return False


def pod_body(name: str, resource: str, labels: dict[str, str] | None = None, priority: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "chaos", "labels": labels or {}},
        "spec": {
            "priority": priority,
            "containers": [{"name": "main", "image": "x", "resources": {"limits": {resource: "1"}}}],
        },
    }


def phantom_report(gpus: int) -> str:
    model = load_catalog().model("A100-40GB")
    one = model.profile("1g.5gb")
    instances = [
        ReportedInstance(profile=one.name, profile_id=one.id, gi=s + 1, start=s, size=one.memory_slices)
        for s in range(7)
    ]
    report = NodeGpuReport(
        driver="550.54.15",
        pod_resources=True,
        observed_at=observed_time(time.time()),
        gpus=[_phantom_gpu(g, model.nvml_names[0], model.pci_device_ids[0], instances) for g in range(gpus)],
    )
    return report.to_annotation()


def _phantom_gpu(index: int, name: str, pci: str, instances: list[ReportedInstance]) -> ReportedGpu:
    return ReportedGpu(index=index, uuid=f"GPU-lie-{index}", name=name, pci_device_id=pci,
                       mig_current=True, mig_pending=True, instances=instances)  # fmt: skip


# ---- one schedule ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bounded_wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Run:
    """The processes of one schedule and what the poller saw."""

    def __init__(self, schedule: Schedule, timing: Timing, workdir: Path) -> None:
        self.schedule, self.timing, self.workdir = schedule, timing, workdir
        self.twin: subprocess.Popen[str] | None = None
        self.controllers: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()
        self.kubeconfig = workdir / "kubeconfig"
        self.api = Api("")
        self.planned: set[str] = set()
        self.last_records: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    # processes

    def start_twin(self) -> None:
        s = self.schedule
        scenario = self.workdir / "scenario.yaml"
        scenario.write_text(
            f"name: chaos {s.index}\n"
            f"cluster: {{nodes: {s.nodes}, gpus_per_node: 2, models: [A100-40GB], initial_config: all-3g.20gb}}\n"
            "workload:\n  kind: synthetic\n"
            "  spec: {arrival_rate_per_s: 0.01, duration_mean_s: 600, profile_mix: {1g.5gb: 1}, pods: 1}\n"
        )
        command = [sys.executable, "-m", "migopt", "twin", "serve", str(scenario), "--speed", str(self.timing.speed)]
        command += ["--config-refresh", str(self.timing.config_refresh_sim_s), "--kubeconfig", str(self.kubeconfig)]
        command += ["--component-wait", str(self.timing.component_wait_sim_s)]
        command += [] if s.agent else ["--no-agent"]
        self.twin = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        assert self.twin.stdout is not None
        line = self.twin.stdout.readline()  # bounded: the process either prints it or exits (EOF)
        if "http://" not in line:
            raise RuntimeError(f"twin serve did not start: {line!r}")
        self.api = Api(line[line.index("http://") :].split()[0])
        bounded_wait(self.kubeconfig.exists, 30, "the kubeconfig")

    def start_controller(self, identity: str) -> None:
        env = {**os.environ, "MIGOPT_LOG_LEVEL": "INFO", "MIGOPT_IDENTITY": identity, **self.timing.controller_env()}
        command = [sys.executable, "-m", "migopt", "run", "--mode", "enforce", "--kubeconfig", str(self.kubeconfig)]
        command += ["--metrics-port", "0"]
        log = (self.workdir / f"{identity}.log").open("ab")
        self.controllers[identity] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

    def signal_controller(self, identity: str, sig: signal.Signals) -> None:
        proc = self.controllers.get(identity)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait(timeout=10)

    def stop_all(self) -> None:
        for identity, proc in self.controllers.items():
            if proc.poll() is None:
                if identity in self.stopped:
                    proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)
        if self.twin is not None and self.twin.poll() is None:
            self.twin.terminate()
            try:
                self.twin.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.twin.kill()
                self.twin.wait(timeout=10)

    # observation

    def state(self) -> dict[str, Any]:
        return dict(self.api.call("GET", "/migopt-twin/state"))

    def poll_records(self) -> None:
        cm = self.api.get_or_none(RECORDS)
        records: dict[str, dict[str, Any]] = {}
        for node, text in ((cm or {}).get("data") or {}).items():
            try:
                records[node] = json.loads(text)
            except ValueError:
                continue
            self.planned.update((records[node].get("evict") or {}).keys())
        self.last_records = records

    def active_nodes(self) -> set[str]:
        return {n for n, r in self.last_records.items() if r.get("phase") in ACTIVE}

    def leader(self) -> str | None:
        lease = self.api.get_or_none(LEASE)
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
        return str(holder) if holder else None


def _converged(run: Run, state: dict[str, Any], burst: set[str]) -> bool:
    running = {p["name"] for p in state["pods"] if p["phase"] == "Running" and not p["deleted"]}
    return burst <= running and not run.active_nodes() and not state["cordoned"]


def run_schedule(schedule: Schedule, timing: Timing, keep_logs: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"chaos-{schedule.index}-") as tmp:
        workdir = keep_logs / f"schedule-{schedule.index}" if keep_logs else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = Run(schedule, timing, workdir)
        try:
            return _drive(run)
        finally:
            run.stop_all()


def _drive(run: Run) -> dict[str, Any]:
    s, t = run.schedule, run.timing
    run.start_twin()
    api = run.api
    api.write("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chaos"}})
    guarded = [name for name, pdb in s.running if pdb]
    for name, pdb in s.running:
        api.write("POST", "/api/v1/namespaces/chaos/pods",
                  pod_body(name, "nvidia.com/mig-3g.20gb", {"app": "train" if pdb else "batch"}))  # fmt: skip
    if guarded:
        pdb_body = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "train", "namespace": "chaos"},
            "spec": {"minAvailable": len(guarded), "selector": {"matchLabels": {"app": "train"}}},
        }
        api.write("POST", "/apis/policy/v1/namespaces/chaos/poddisruptionbudgets", pdb_body)
    names = {f"chaos/{name}" for name, _ in s.running}
    bounded_wait(lambda: names <= {p["name"] for p in run.state()["pods"] if p["phase"] == "Running"}, 30, "training")
    identities = ["replica-a", "replica-b"][: s.replicas]
    for identity in identities:
        run.start_controller(identity)
    bounded_wait(lambda: run.leader() is not None, 30, "a leader")
    for name, resource in s.burst:
        api.write("POST", "/api/v1/namespaces/chaos/pods", pod_body(name, resource, priority=s.priority))
    burst = {f"chaos/{name}" for name, _ in s.burst}
    began = time.monotonic()
    first_fault_sim: float | None = None
    pending = list(s.faults)
    undo: list[tuple[float, str, dict[str, Any]]] = []  # (wall time after the burst, what, detail)
    converged_sim: float | None = None
    converged_wall: float | None = None
    applied: list[dict[str, Any]] = []
    while True:
        now = time.monotonic() - began
        if now > t.horizon_s:
            break
        while pending and pending[0].at_s <= now:
            fault = pending.pop(0)
            sim = run.state()["time"]
            first_fault_sim = sim if first_fault_sim is None else first_fault_sim
            applied.append({"kind": fault.kind, "at_s": round(now, 2), "sim_s": sim, **_apply(run, fault, now, undo)})
        for item in [u for u in undo if u[0] <= now]:
            undo.remove(item)
            _undo(run, item[1], item[2])
        state = run.state()
        run.poll_records()
        if not pending and not undo:
            if converged_wall is None and _converged(run, state, burst):
                converged_sim, converged_wall = state["time"], now
            elif converged_wall is not None and not _converged(run, state, burst):
                converged_sim = converged_wall = None  # it moved again: not converged after all
            if converged_wall is not None and now - converged_wall >= t.settle_s:
                break
        time.sleep(0.05)
    for _, what, detail in undo:  # the horizon came first: leave nothing stopped or stuck
        _undo(run, what, detail)
    state = run.state()
    run.poll_records()
    evicted: dict[str, int] = {}
    for e in state["evictions"]:
        if e["outcome"] == "evicted":
            evicted[e["pod"]] = evicted.get(e["pod"], 0) + 1
    unplanned = sorted(p for p in evicted if p not in run.planned)
    doubles = sorted(p for p, n in evicted.items() if n > 1)
    left_cordoned = sorted(set(state["cordoned"]) - run.active_nodes())
    unserved = sorted(burst - {p["name"] for p in state["pods"] if p["phase"] == "Running" and not p["deleted"]})
    result: dict[str, Any] = {
        "index": s.index,
        "nodes": s.nodes,
        "agent": s.agent,
        "replicas": s.replicas,
        "running": [f"{n}{' (pdb)' if pdb else ''}" for n, pdb in s.running],
        "burst": len(s.burst),
        "burst_priority": s.priority,
        "faults": applied,
        "evicted": sorted(evicted),
        "unplanned_evictions": unplanned,
        "double_evictions": doubles,
        "nodes_left_cordoned": left_cordoned,
        "converged": converged_sim is not None,
        "converge_seconds": None
        if converged_sim is None or first_fault_sim is None
        else round(converged_sim - first_fault_sim, 1),
        "unserved": unserved,
        "active_at_end": sorted(run.active_nodes()),
        "cordoned_at_end": state["cordoned"],
        "tracebacks": sorted(
            i for i in run.controllers if "Traceback" in (run.workdir / f"{i}.log").read_text(errors="replace")
        ),
        "event_reasons": sorted(set(state["event_reasons"])),
    }
    return result


def _apply(run: Run, fault: Fault, now: float, undo: list[tuple[float, str, dict[str, Any]]]) -> dict[str, Any]:
    api, d = run.api, fault.detail
    if fault.kind == "api":
        api.write("POST", "/migopt-twin/faults", {"rules": d["rules"]})
        return {"rules": d["rules"]}
    if fault.kind == "watch":
        api.write("POST", "/migopt-twin/faults", {"close_watches": True, "expire_history": d["expire_history"]})
        return {"expire_history": d["expire_history"]}
    if fault.kind == "kill":
        victim = run.leader() or "replica-a"
        run.signal_controller(victim, signal.SIGKILL)
        undo.append((now + d["down_s"], "restart", {"identity": victim}))
        return {"victim": victim, "down_s": d["down_s"]}
    if fault.kind == "leader":
        victim = run.leader() or "replica-a"
        if d["how"] == "kill":
            run.signal_controller(victim, signal.SIGKILL)
            undo.append((now + d["down_s"], "restart", {"identity": victim}))
        else:
            run.signal_controller(victim, signal.SIGSTOP)
            run.stopped.add(victim)
            undo.append((now + d["down_s"], "cont", {"identity": victim}))
        return {"victim": victim, "how": d["how"], "down_s": d["down_s"]}
    if fault.kind == "failed":
        cm = api.get_or_none(MIG_CONFIG)
        if cm is None:
            return {"skipped": "no mig-parted ConfigMap yet"}
        saved = dict(cm.get("data") or {})
        broken = {**cm, "data": {key: "version: v1\nmig-configs: [this is: {not valid" for key in saved}}
        if api.write("PUT", MIG_CONFIG, broken):
            undo.append((now + d["broken_s"], "repair", {"saved": saved, "broken": broken["data"]}))
        return {"broken_s": d["broken_s"]}
    if fault.kind == "stuck":
        api.write("POST", "/migopt-twin/mig-manager", {"stuck_pending": [d["node"]]})
        undo.append((now + d["stuck_s"], "unstick", {}))
        return {"node": d["node"], "stuck_s": d["stuck_s"]}
    if fault.kind == "forged":
        forged = {"migopt.io/plan-id": "forged", "migopt.io/phase": d["phase"], "migopt.io/target-config": "all-1g.5gb"}
        api.write("PATCH", f"/api/v1/nodes/{d['node']}", {"metadata": {"annotations": forged}},
                  "application/merge-patch+json")  # fmt: skip
        return {"node": d["node"], "phase": d["phase"]}
    if fault.kind == "lie":
        lie = {GPU_REPORT_ANNOTATION: phantom_report(2)}
        api.write("PATCH", f"/api/v1/nodes/{d['node']}", {"metadata": {"annotations": lie}},
                  "application/merge-patch+json")  # fmt: skip
        return {"node": d["node"]}
    raise ValueError(fault.kind)


def _undo(run: Run, what: str, detail: dict[str, Any]) -> None:
    if what == "restart":
        run.start_controller(detail["identity"])
    elif what == "cont":
        run.signal_controller(detail["identity"], signal.SIGCONT)
        run.stopped.discard(detail["identity"])
    elif what == "unstick":
        run.api.write("POST", "/migopt-twin/mig-manager", {"stuck_pending": []})
    elif what == "repair":
        cm = run.api.get_or_none(MIG_CONFIG)
        if cm is not None and (cm.get("data") or {}) == detail["broken"]:  # the controller did not rewrite it
            run.api.write("PUT", MIG_CONFIG, {**cm, "data": detail["saved"]})  # resourceVersion-guarded


# ---- all schedules --------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]


def run_chaos(schedules: int, seed: int, timing: Timing | None = None, keep_logs: Path | None = None) -> dict[str, Any]:
    timing = timing or Timing()
    runs = []
    for index in range(schedules):
        schedule = draw(seed, index, timing)
        try:
            runs.append(run_schedule(schedule, timing, keep_logs))
        except (TimeoutError, RuntimeError, OSError) as err:
            runs.append({"index": index, "error": f"{type(err).__name__}: {err}", "converged": False})
        print(f"schedule {index}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    seconds = [r["converge_seconds"] for r in runs if r.get("converge_seconds") is not None]
    return {
        "schedules": schedules,
        "seed": seed,
        "unplanned_evictions": sum(len(r.get("unplanned_evictions", [])) for r in runs),
        "double_evictions": sum(len(r.get("double_evictions", [])) for r in runs),
        "nodes_left_cordoned": sum(len(r.get("nodes_left_cordoned", [])) for r in runs),
        "unconverged": sum(1 for r in runs if not r["converged"]),
        "errors": sum(1 for r in runs if "error" in r),
        "controller_tracebacks": sum(len(r.get("tracebacks", [])) for r in runs),
        "converge_seconds_p50": percentile(seconds, 0.5),
        "converge_seconds_p95": percentile(seconds, 0.95),
        "timing": {k: v for k, v in vars(timing).items()},
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--schedules", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=int, default=None, help="run only this schedule index (a reproduction)")
    parser.add_argument("--horizon", type=float, default=Timing.horizon_s, help="wall seconds after the burst")
    parser.add_argument("--keep-logs", type=Path, default=None, help="keep each schedule's controller logs here")
    parser.add_argument("-o", "--output", choices=("json",), default="json")
    args = parser.parse_args()
    timing = Timing(horizon_s=args.horizon)
    if args.only is not None:
        result = run_schedule(draw(args.seed, args.only, timing), timing, args.keep_logs)
    else:
        result = run_chaos(args.schedules, args.seed, timing, args.keep_logs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
