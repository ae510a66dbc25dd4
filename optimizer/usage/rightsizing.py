"""Right-sizing: the smallest MIG profile that would still carry what each running pod actually uses.

For a device a pod holds, the need is its framebuffer at the window's percentile plus a memory headroom, and its
GR engine activity at that percentile, scaled by the slices it has now (activity is a ratio of the instance's
own engines), plus a compute headroom. The answer is the smallest profile of the GPU's model covering both.
Recommendations are advice only: nothing here evicts or changes anything.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from optimizer.usage.prometheus import InstanceUsage, UsageReport
from solver.catalog import GpuModel, Profile, load_catalog
from solver.errors import MigoptError

log = logging.getLogger(__name__)


class RightSizingSettings(BaseModel):
    memory_headroom: float = Field(default=0.2, ge=0, description="fraction added to the framebuffer percentile")
    compute_headroom: float = Field(default=0.2, ge=0, description="fraction added to the slices in use")
    min_samples: int = Field(default=30, ge=1, description="fewer samples than this: low confidence")


class Recommendation(BaseModel):
    """One device of one pod: what it holds, what would do, how sure we are, and what the change would free."""

    model_config = ConfigDict(frozen=True)

    pod: str = Field(description="namespace/name")
    node: str
    gpu: int
    gi: int
    model: str = Field(description="catalog key of the GPU model")
    current_profile: str
    recommended_profile: str
    current_slices: int
    recommended_slices: int
    slices_freed: int = Field(description="compute slices the change would free (negative: it needs more)")
    fb_needed_mib: float | None = Field(description="framebuffer percentile plus headroom; None: not published")
    slices_needed: float = Field(description="engine-activity percentile x current slices, plus headroom")
    samples: int
    window_s: float
    percentile: float
    confident: bool = Field(description="enough samples in the window to act on")

    @property
    def namespace(self) -> str:
        return self.pod.partition("/")[0]

    @property
    def name(self) -> str:
        return self.pod.partition("/")[2]


def _family(profile: Profile) -> str:
    """Attribute suffixes (`+me`, `+gfx`): a recommendation keeps the ones the pod has and adds none."""
    return profile.name.partition("+")[2]


def smallest_covering(
    model: GpuModel, memory_mib: float | None, slices: float, *, like: Profile | None = None
) -> Profile | None:
    """The smallest profile (compute slices, then memory) with at least `slices` compute slices and, when known,
    `memory_mib` of memory; with memory unknown, at least `like`'s memory (never shrink what we cannot see)."""
    need_mib = memory_mib if memory_mib is not None else (like.memory_mib if like else 0)
    family = _family(like) if like else ""
    fits = [
        p for p in model.profiles if _family(p) == family and p.compute_slices >= slices and p.memory_mib >= need_mib
    ]
    return min(fits, key=lambda p: (p.compute_slices, p.memory_slices, p.name), default=None)


def recommend_instance(
    usage: InstanceUsage, report: UsageReport, settings: RightSizingSettings
) -> Recommendation | None:
    """The recommendation for one attributed instance, or None when it cannot be judged (no activity data, an
    unknown model or profile)."""
    if usage.pod is None or usage.engine_active is None or not usage.model_name:
        return None
    try:
        model = load_catalog().model(usage.model_name)
        current = model.profile(usage.profile)
    except MigoptError as err:
        log.debug("pod=%s not right-sized: %s", usage.pod, err)
        return None
    slices_needed = max(usage.engine_active, 0.0) * current.compute_slices * (1 + settings.compute_headroom)
    fb_needed = usage.fb_used_mib * (1 + settings.memory_headroom) if usage.fb_used_mib is not None else None
    best = smallest_covering(model, fb_needed, slices_needed, like=current)
    if best is None:  # it needs more than any profile of its family: say so with the largest
        best = max((p for p in model.profiles if _family(p) == _family(current)), key=lambda p: p.compute_slices)
    return Recommendation(
        pod=usage.pod, node=usage.node, gpu=usage.gpu, gi=usage.gi, model=model.key,
        current_profile=current.name, recommended_profile=best.name, current_slices=current.compute_slices,
        recommended_slices=best.compute_slices, slices_freed=current.compute_slices - best.compute_slices,
        fb_needed_mib=None if fb_needed is None else round(fb_needed, 1), slices_needed=round(slices_needed, 3),
        samples=usage.samples, window_s=report.window_s, percentile=report.percentile,
        confident=usage.samples >= settings.min_samples,
    )  # fmt: skip


def recommend(report: UsageReport, settings: RightSizingSettings | None = None) -> list[Recommendation]:
    """A recommendation per attributed device, most slices freed first; empty when usage is unavailable."""
    if not report.available:
        return []
    chosen = settings or RightSizingSettings()
    found = [r for u in report.instances if (r := recommend_instance(u, report, chosen)) is not None]
    return sorted(found, key=lambda r: (-r.slices_freed, r.pod, r.node, r.gpu, r.gi))
