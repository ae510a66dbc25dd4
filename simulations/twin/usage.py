"""How the twin's running pods use their MIG devices: a deterministic model the twin's dcgm exporter reports.

Each pod's usage is fixed by its lineage name (`origin`: a re-created pod behaves like the one it replaces),
so two runs with the same workload publish the same series, and a test can predict every value. About a third
of the pods are light (a notebook, a small inference server): little memory, little compute, clearly
over-sized for a big profile; the rest are busy. `overrides` pins exact figures for named pods.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class PodUsage(BaseModel):
    """A pod's usage of each device it holds, as fractions of that device."""

    model_config = ConfigDict(frozen=True)

    fb_fraction: float = Field(ge=0, le=1, description="framebuffer used / the instance's memory")
    engine_active: float = Field(ge=0, le=1, description="DCGM_FI_PROF_GR_ENGINE_ACTIVE, ratio")
    sm_active: float = Field(ge=0, le=1, description="DCGM_FI_PROF_SM_ACTIVE, ratio")


def _unit(name: str, salt: str) -> float:
    """A number in [0, 1) fixed by the name (a hash, not `random`: stable across processes and versions)."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class UsageModel:
    """Usage of every pod by name; `light_share` of the pods are light, the rest busy."""

    def __init__(self, overrides: Mapping[str, PodUsage] | None = None, *, light_share: float = 1 / 3) -> None:
        self.overrides = dict(overrides or {})
        self.light_share = light_share

    def of(self, pod: str, origin: str | None = None) -> PodUsage:
        """The usage of `pod` (its lineage `origin` decides, when given)."""
        if pod in self.overrides:
            return self.overrides[pod]
        name = origin or pod
        if name in self.overrides:
            return self.overrides[name]
        light = _unit(name, "kind") < self.light_share
        low, high = (0.05, 0.2) if light else (0.55, 0.95)
        engine = round(low + (high - low) * _unit(name, "engine"), 3)
        fb = round(low + (high - low) * _unit(name, "fb"), 3)
        return PodUsage(fb_fraction=fb, engine_active=engine, sm_active=round(engine * 0.9, 3))
