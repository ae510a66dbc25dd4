"""What reading NVIDIA's DRA driver costs the adapter per reconcile pass, at cluster scale.

Builds, as plain API JSON, 1,000 nodes x 8 A100-80GB GPUs as the driver publishes them on Kubernetes 1.35+ (one
device-only ResourceSlice per GPU: the whole GPU and one dynamic MIG device per (profile, placement) of the catalog)
and 5,000 allocated ResourceClaims of one MIG device each, then times `DraReader.read`: the first read (every object
parsed), a read with nothing changed (the cached view), and a read after one claim changed (objects reused by
identity, the view rebuilt). `--quick`: 100 nodes, 500 claims.

Run: .venv/bin/python benchmarks/dra_scale.py [--quick]  (prints JSON; median of 5 runs each)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from optimizer.kube.dra import DRIVER, DraReader
from solver.catalog import load_catalog

RUNS = 5
MODEL = "A100-80GB"


def gpu_slice(node: str, index: int) -> dict[str, Any]:
    model = load_catalog().model(MODEL)
    uuid = f"GPU-{node}-{index}"
    devices: list[dict[str, Any]] = [
        {"name": f"gpu-{index}", "attributes": {"type": {"string": "gpu"}, "uuid": {"string": uuid}}}
    ]
    for profile in model.profiles:
        for placement in profile.placements:
            start = placement.start
            compact = profile.name.replace(".", "").replace("+", "")
            devices.append({
                "name": f"gpu-{index}-mig-{compact}-{profile.id}-{start}",
                "attributes": {"type": {"string": "mig"}, "profile": {"string": profile.name},
                               "parentUUID": {"string": uuid}},
            })  # fmt: skip
    return {
        "metadata": {"name": f"{node}-gpu-{index}", "resourceVersion": "1"},
        "spec": {"driver": DRIVER, "nodeName": node, "pool": {"name": node, "generation": 1}, "devices": devices},
    }


def claim(n: int, node: str, device: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"claim-{n}", "namespace": "team", "resourceVersion": "1"},
        "status": {
            "allocation": {
                "devices": {"results": [{"request": "r", "driver": DRIVER, "pool": node, "device": device}]}
            },
            "reservedFor": [{"resource": "pods", "name": f"pod-{n}", "uid": f"uid-{n}"}],
        },
    }


def median_seconds(action: Callable[[], object], prepare: Callable[[], object] = lambda: None) -> float:
    samples = []
    for _ in range(RUNS):
        prepare()
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100 nodes and 500 claims")
    args = parser.parse_args()
    nodes, claims = (100, 500) if args.quick else (1000, 5000)
    slices = [
        (s["metadata"]["name"], s) for node in range(nodes) for s in (gpu_slice(f"node-{node}", g) for g in range(8))
    ]
    devices = sum(len(s["spec"]["devices"]) for _, s in slices)
    held = [claim(n, f"node-{n % nodes}", f"gpu-{n % 8}-mig-1g10gb-19-{n % 7}") for n in range(claims)]
    claim_entries = [(f"team/{c['metadata']['name']}", c) for c in held]
    reader = DraReader()
    first = median_seconds(lambda: DraReader().read(slices, claim_entries))
    reader.read(slices, claim_entries)
    unchanged = median_seconds(lambda: reader.read(slices, claim_entries))

    def replace_one_claim() -> None:
        claim_entries[0] = (claim_entries[0][0], {**claim_entries[0][1]})  # a new object: the informer's MODIFIED

    one_changed = median_seconds(lambda: reader.read(slices, claim_entries), prepare=replace_one_claim)
    view = reader.read(slices, claim_entries)
    print(json.dumps({
        "benchmark": "dra_scale", "runs": RUNS, "nodes": nodes, "slices": len(slices), "devices": devices,
        "claims": claims, "managed_nodes": len(view.nodes), "holders": len(view.holders),
        "first_read_s": round(first, 4), "unchanged_read_s": round(unchanged, 5),
        "one_claim_changed_read_s": round(one_changed, 4),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
