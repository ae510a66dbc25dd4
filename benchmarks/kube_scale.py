"""The Kubernetes adapter at scale, against the twin's API facade (no kube-apiserver here): 1,000 nodes of
8 A100-80GB GPUs, all `all-7g.80gb` and busy-free, and 5,000 pods asking for smaller slices that nothing
advertises yet, so all of them stay pending. Prints JSON:

- `pending_to_plan_s`: from the moment the pods exist in the API (created in the twin, published to the store)
  to the end of the reconcile pass whose plan places them, split into the watch delivering them to the
  adapter's cache, the snapshot, and the plan (solver included);
- `snapshot_unchanged_s`: one snapshot when nothing changed since the last (median of 5, CPU seconds): the
  adapter reuses the piece it built for every unchanged node and pod;
- `requests`: API requests by verb and resource during the start (lists, watches), per reconcile pass
  afterwards (steady state: none, the caches answer), and for the pass that plans (the Events it queues are
  written off the reconcile path, rate-limited, and counted apart).

Run: .venv/bin/python benchmarks/kube_scale.py [--quick | --large]
     (--quick: 100 nodes, 500 pods, CI's smoke step; --large: 5,000 nodes, 25,000 pods)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter

from kubernetes import client

from optimizer.actuators.mig_manager import MigManagerActuator
from optimizer.controller.reconcile import Controller, ControllerSettings
from optimizer.kube.adapter import KubeClusterPort, KubeSettings
from optimizer.kube.api import ApiCaller
from simulations.engine import initial_cluster
from simulations.scenario import ClusterShape, default_scenario
from simulations.twin import Twin
from simulations.twin.api import TwinApiServer
from solver.plan import PlanPolicy

PROFILES = ["1g.10gb", "2g.20gb", "3g.40gb", "1g.20gb"]


def _requests(counter: Counter[tuple[str, str]]) -> dict[str, int]:
    return {f"{verb} {resource}": n for (verb, resource), n in sorted(counter.items())}


def _without_events(counter: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """Events are written by their own rate-limited thread, not by the reconcile pass: reported apart."""
    return Counter({k: v for k, v in counter.items() if k[1] != "events"})


def _caught_up(port: KubeClusterPort, expected_pods: int) -> bool:
    return len(port.pods.items()) >= expected_pods


def main() -> None:
    parser = argparse.ArgumentParser()
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="100 nodes and 500 pods (CI smoke step)")
    size.add_argument("--large", action="store_true", help="5,000 nodes and 25,000 pods")
    args = parser.parse_args()
    nodes, pods = (100, 500) if args.quick else (5000, 25000) if args.large else (1000, 5000)
    scenario = default_scenario().model_copy(
        update={
            "cluster": ClusterShape(nodes=nodes, gpus_per_node=8, models=["A100-80GB"], initial_config="all-7g.80gb")
        }
    )
    snapshot, config = initial_cluster(scenario, "all-7g.80gb")
    twin = Twin.from_snapshot(snapshot, config)
    with TwinApiServer(twin, speed=0) as server:
        # pods arriving at a steady cluster: the facade re-stamps every node's agent report once a minute of wall
        # time, which at 5,000 nodes would land all at once between the first pass and the pods (setup is slower
        # than a minute) and measure 5,000 node rebuilds, not the pods; real agents spread their heartbeats
        server.bridge.report_refresh_s = 3600.0
        caller = ApiCaller()
        api = client.ApiClient(client.Configuration(host=server.url))
        port = KubeClusterPort(api, KubeSettings(event_qps=50), caller=caller)
        started = time.perf_counter()
        port.start()
        start_s = time.perf_counter() - started
        at_start = Counter(caller.requests)
        controller = Controller(
            port,
            ControllerSettings(mode="recommend", batch_idle_s=0, batch_timeout_s=0, policy=PlanPolicy(time_limit_s=10)),
            actuator=MigManagerActuator(),
        )
        controller.tick()  # nothing pending: no plan
        with server.lock:
            for n in range(pods):
                twin.add_pod(f"bench/pod-{n:05d}", {f"nvidia.com/mig-{PROFILES[n % len(PROFILES)]}": 1})
            server.sync()
        published = time.perf_counter()
        while not _caught_up(port, pods):
            time.sleep(0.005)
        delivered = time.perf_counter()
        before = Counter(caller.requests)
        snap_started = time.perf_counter()
        taken = port.snapshot()
        snapshot_s = time.perf_counter() - snap_started
        plan = controller.tick()
        planned = time.perf_counter()
        planning_pass = Counter(caller.requests) - before
        steady_before = Counter(caller.requests)
        passes = 10
        for _ in range(passes):
            controller.tick()
        steady = Counter(caller.requests) - steady_before
        unchanged = []
        for _ in range(5):
            cpu_started = time.process_time()
            port.snapshot()
            unchanged.append(time.process_time() - cpu_started)
        port.events.stop(timeout_s=0.1)
        port.stop()
        result = {
            "benchmark": "kube_scale",
            "nodes": nodes,
            "gpus": nodes * 8,
            "pending_pods": len(taken.pods),
            "adapter_start_s": round(start_s, 2),
            "pending_to_plan_s": {
                "watch_delivery": round(delivered - published, 3),
                "snapshot": round(snapshot_s, 3),
                "plan_pass": round(planned - delivered, 3),
                "total": round(planned - published, 3),
            },
            "snapshot_unchanged_s": round(statistics.median(unchanged), 4),
            "plan": None
            if plan is None
            else {
                "status": plan.status,
                "solve_seconds": plan.solve_seconds,
                "served": plan.objectives.served_pods,
                "unplaced": len(plan.unplaced),
                "reconfigured_gpus": plan.objectives.reconfigured_gpus,
                "gap": plan.gap,
            },
            "requests": {
                "start": _requests(at_start),
                "planning_pass": _requests(_without_events(planning_pass)),
                f"per_pass_over_{passes}_passes": {
                    k: v / passes for k, v in _requests(_without_events(steady)).items()
                },
                "events": {
                    "written": port.events.written,
                    "dropped": port.events.dropped,
                    "failed": port.events.failed,
                },
            },
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
