"""The `peers:` section of a scenario: the peers' settings, and the latencies no source publishes.

Sourced figures are defaults as the sources give them (spec dynamic-mig-peers §1-§4): nos's batch window (10 s
idle, 60 s cap) and 10 s status reports, HAMi's 5 s reclaim loop and binpack/spread defaults. The rest nobody
has measured in public, so each is a setting with a stated guess:

- NVML creating one GPU instance with its compute instance: about a second (the DRA driver's comments call a GI
  destroy "O(1 s)"; its CI test allows 10 s from claim to a Ready pod). `dra.prepare_s` and `hami.allocate_s`
  add the kubelet round trip and the CDI or device-plugin answer: 2 s each.
- nos: its maintainer says the requested resources exist "after at most ~30 seconds"; with the 10 s batch
  window that leaves 5 s for the agent's NVML work (`apply_s`) and 15 s for the device plugin's pod to come back
  (`plugin_restart_s`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from solver.catalog import load_catalog


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NosKnobs(_Strict):
    batch_idle_s: float = Field(default=10.0, ge=0, description="a batch closes after this long with no new pod")
    batch_timeout_s: float = Field(default=60.0, ge=0, description="... or this long after it opened")
    apply_s: float = Field(default=5.0, ge=0, description="the node agent deletes and creates free instances")
    plugin_restart_s: float = Field(default=15.0, ge=0, description="the device plugin's new pod registers")
    report_interval_s: float = Field(
        default=10.0, gt=0, description="agents report every this long; no plan while a node has not reported"
    )


class HamiKnobs(_Strict):
    allocate_s: float = Field(default=2.0, ge=0, description="Bind to Allocate's instance: the node lock's hold")
    reclaim_interval_s: float = Field(default=5.0, gt=0, description="the plugin destroys ended pods' instances")
    node_policy: Literal["binpack", "spread"] = "binpack"
    gpu_policy: Literal["binpack", "spread"] = "spread"
    allowlist: dict[str, list[str]] = Field(
        default={},
        description="per GPU model, the profiles HAMi may create (`migProfileAllowlist`); a model not named gets "
        "the chart's pattern: the plain 1g, 2g, 3g and whole-GPU profiles, least memory per size",
    )

    @field_validator("allowlist")
    @classmethod
    def _known_profiles(cls, allowlist: dict[str, list[str]]) -> dict[str, list[str]]:
        resolved = {}
        for name, profiles in allowlist.items():
            model = load_catalog().model(name)
            if not profiles:
                raise ValueError(f"{model.key}: name at least one profile")
            resolved[model.key] = [model.profile(p).name for p in profiles]
        return resolved


class DraKnobs(_Strict):
    prepare_s: float = Field(default=2.0, ge=0, description="NodePrepareResources: create the GI, CI, CDI spec")
    unprepare_s: float = Field(default=1.0, ge=0, description="NodeUnprepareResources: destroy the CI and GI")


class PeerKnobs(_Strict):
    nos: NosKnobs = NosKnobs()
    hami: HamiKnobs = HamiKnobs()
    dra: DraKnobs = DraKnobs()
