"""Expected arrivals per request shape, for the proactive policy.

The forecast in two sentences: each MIG request shape's arrival rate is an exponentially weighted average of the
arrivals seen (half-life `half_life_s`, 30 min by default), so a profile asked for every few minutes keeps a steady
rate and one asked for once fades away. Over the lead time (how long reshaping a GPU takes, about a batch window plus
a mig-manager run: 5 min) the arrivals are taken as Poisson with that rate, and the forecast asks for their
`quantile` (90 %): enough devices for a typical burst, none for a shape that stopped arriving.

An arrival is a pod name not seen at the previous pass, pending (its request) or already holding MIG instances
(the profiles it holds: a pod the scheduler bound at once to a free device arrived too). Pods present when the
controller starts are not arrivals (when they came is unknown), and only mixed-strategy MIG requests
(`nvidia.com/mig-*`) are forecast.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from statistics import NormalDist

from pydantic import BaseModel, Field

from solver.profiles import MIG_RESOURCE_PREFIX
from solver.snapshot import ClusterSnapshot, ForecastDemand, PendingPod

Shape = tuple[tuple[str, int], ...]


class ForecastSettings(BaseModel):
    half_life_s: float = Field(default=1800.0, gt=0, description="an arrival counts half as much this much later")
    lead_time_s: float = Field(default=300.0, gt=0, description="how far ahead: a batch window plus a reshape")
    quantile: float = Field(default=0.9, gt=0, lt=1, description="of the Poisson arrivals over the lead time")
    max_shapes: int = Field(default=32, ge=1, description="request shapes tracked, the most frequent kept")
    replan_s: float = Field(
        default=300.0, ge=0, description="with nothing pending, plan for the forecast alone at most this often"
    )


class _Rate(BaseModel):
    per_s: float = 0.0
    at: float = 0.0


class ArrivalForecast:
    """Arrival rates per request shape, fed with every pass's pending pods."""

    def __init__(self, settings: ForecastSettings | None = None) -> None:
        self.settings = settings or ForecastSettings()
        self._tau = self.settings.half_life_s / math.log(2)
        self._rates: dict[Shape, _Rate] = {}
        self._seen: set[str] | None = None  # None until the first pass: what was pending then is no arrival

    def observe(self, now: float, snapshot: ClusterSnapshot) -> None:
        """Count the pods not seen at the previous pass as arrivals at `now`."""
        current = _shapes(snapshot)
        if self._seen is not None:
            for name in current.keys() - self._seen:
                shape = current[name]
                if shape:
                    rate = self._rates.setdefault(shape, _Rate(at=now))
                    rate.per_s = self._decayed(rate, now) + 1.0 / self._tau
                    rate.at = now
            self._trim(now)
        self._seen = set(current)

    def demand(self, now: float) -> list[ForecastDemand]:
        """The expected arrivals over the lead time, per shape (shapes expecting none left out), most first."""
        result = []
        for shape, rate in self._rates.items():
            count = poisson_quantile(self._decayed(rate, now) * self.settings.lead_time_s, self.settings.quantile)
            if count:
                result.append(ForecastDemand(requests=dict(shape), count=min(count, 10_000)))
        return sorted(result, key=lambda d: (-d.count, sorted(d.requests.items())))

    def _decayed(self, rate: _Rate, now: float) -> float:
        return rate.per_s * math.exp(-max(0.0, now - rate.at) / self._tau)

    def _trim(self, now: float) -> None:
        if len(self._rates) > self.settings.max_shapes:
            kept = sorted(self._rates.items(), key=lambda item: -self._decayed(item[1], now))
            self._rates = dict(kept[: self.settings.max_shapes])


def _shapes(snapshot: ClusterSnapshot) -> dict[str, Shape]:
    """Every pod the snapshot names with the MIG devices it asks for or holds (mixed strategy)."""
    held: dict[str, Counter[str]] = defaultdict(Counter)
    for node in snapshot.nodes:
        if node.strategy != "mixed":
            continue
        for gpu in node.gpus:
            for instance in gpu.instances:
                if instance.pod:
                    held[instance.pod][MIG_RESOURCE_PREFIX + gpu.gpu_model.profile(instance.profile).name] += 1
    shapes = {pod: tuple(sorted(devices.items())) for pod, devices in held.items()}
    for pod in snapshot.pods:
        shapes[pod.name] = _requested(pod)
    return shapes


def _requested(pod: PendingPod) -> Shape:
    if pod.single_product is not None:
        return ()
    return tuple(sorted((r, c) for r, c in pod.requests.items() if r.startswith(MIG_RESOURCE_PREFIX)))


def poisson_quantile(mean: float, quantile: float) -> int:
    """The smallest k with P(X ≤ k) ≥ quantile for X ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    if mean > 100:  # the normal approximation, where exp(-mean) would underflow
        return math.ceil(mean + NormalDist().inv_cdf(quantile) * math.sqrt(mean))
    term = cumulative = math.exp(-mean)
    k = 0
    while cumulative < quantile and k < 10_000:
        k += 1
        term *= mean / k
        cumulative += term
    return k
