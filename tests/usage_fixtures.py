"""Twins, their dcgm exporters and the usage they publish, shared by the usage and dashboard tests."""

from __future__ import annotations

from typing import Any

from simulations.twin.cluster import Twin
from simulations.twin.usage import PodUsage, UsageModel
from solver.snapshot import parse_snapshot

USAGE = {
    "team-a/notebook": PodUsage(fb_fraction=0.05, engine_active=0.1, sm_active=0.08),
    "team-b/train": PodUsage(fb_fraction=0.9, engine_active=0.85, sm_active=0.8),
    "team-c/big": PodUsage(fb_fraction=0.6, engine_active=0.5, sm_active=0.45),
    "solo": PodUsage(fb_fraction=0.5, engine_active=0.7, sm_active=0.6),
    "team-d/infer": PodUsage(fb_fraction=0.3, engine_active=0.2, sm_active=0.1),
    "team-e/job": PodUsage(fb_fraction=0.4, engine_active=0.4, sm_active=0.3),
}
MODEL = UsageModel(USAGE)


def twin(nodes: list[dict[str, Any]]) -> Twin:
    return Twin.from_snapshot(parse_snapshot({"nodes": nodes}))


def twin_a() -> Twin:
    """Two nodes (A100-80GB, A30) with four pods; its exporter spells `Hostname` and publishes framebuffer."""
    return twin(
        [
            {
                "name": "node-a",
                "gpus": [
                    {
                        "index": 0,
                        "model": "A100-80GB",
                        "instances": [
                            {"profile": "3g.40gb", "start": 0, "pod": "team-a/notebook"},
                            {"profile": "3g.40gb", "start": 4, "pod": "team-b/train"},
                        ],
                    },
                    {
                        "index": 1,
                        "model": "A100-80GB",
                        "instances": [{"profile": "7g.80gb", "start": 0, "pod": "team-c/big"}],
                    },
                ],
            },
            {
                "name": "node-b",
                "gpus": [
                    {
                        "index": 0,
                        "model": "A30",
                        "instances": [
                            {"profile": "1g.6gb", "start": s, "pod": "solo" if s == 2 else None} for s in range(4)
                        ],
                    }
                ],
            },
        ]
    )


def twin_b() -> Twin:
    """One A100-40GB node; its exporter spells `hostname` and publishes no framebuffer series."""
    return twin(
        [
            {
                "name": "node-c",
                "gpus": [
                    {
                        "index": 3,
                        "model": "A100-40GB",
                        "instances": [{"profile": "2g.10gb", "start": 0, "pod": "team-d/infer"}],
                    }
                ],
            }
        ]
    )


def twin_c() -> Twin:
    """One node whose exporter the vanishing test pauses."""
    return twin(
        [
            {
                "name": "node-d",
                "gpus": [
                    {
                        "index": 0,
                        "model": "A100-80GB",
                        "instances": [{"profile": "4g.40gb", "start": 0, "pod": "team-e/job"}],
                    }
                ],
            }
        ]
    )


def busy_cluster() -> Twin:
    """A node whose 1g GPU must be rebuilt (evicting a low-priority pod) for a pending 7g pod; an idle notebook
    holds a 3g.40gb on the other GPU (the right-sizing candidate)."""
    ones = [{"profile": "1g.10gb", "start": s, "pod": "team-x/low" if s == 0 else None} for s in range(7)]
    return Twin.from_snapshot(
        parse_snapshot(
            {
                "nodes": [
                    {
                        "name": "node-0",
                        "gpus": [
                            {"index": 0, "model": "A100-80GB", "instances": ones},
                            {
                                "index": 1,
                                "model": "A100-80GB",
                                "instances": [
                                    {"profile": "3g.40gb", "start": 0, "pod": "team-a/notebook"},
                                    {"profile": "3g.40gb", "start": 4, "pod": "team-b/train"},
                                ],
                            },
                        ],
                    }
                ],
                "running": [
                    {"name": "team-a/notebook", "priority": 500},
                    {"name": "team-b/train", "priority": 500},
                ],
            }
        )
    )


def drive(twin: Twin, controller: Any, seconds: float = 900, tick_s: float = 5) -> None:
    """Submit the pending 7g pod, then tick the controller on the twin's simulated clock."""
    twin.add_pod("team-y/big", {"nvidia.com/mig-7g.80gb": 1}, priority=100)
    elapsed = 0.0
    while elapsed < seconds:
        twin.advance(tick_s)
        controller.tick()
        elapsed += tick_s


def first_recommended_plan(twin: Twin, controller: Any) -> None:
    """Ask `busy_cluster` for a 7g pod and tick until the (recommend-mode) controller has made its first plan."""
    twin.add_pod("team-y/big", {"nvidia.com/mig-7g.80gb": 1}, priority=100)
    while controller.plans_made == 0:
        twin.advance(5)
        controller.tick()
