"""Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never act on the cluster at once.

The holder renews the lease every `retry_period_s`; a candidate takes it over only once it has watched the
lease record stay unchanged for `lease_duration_s` on its *own* clock (clocks of different machines are never
compared). Every update carries the resourceVersion it read, so of two candidates at most one wins (the other
gets 409). A leader that has not renewed for `renew_deadline_s` stops calling itself leader before anyone else
may take over (the deadline is shorter than the duration): the controller asks `is_leader()` before every step
that changes the cluster, so a lost lease stops actuation at the next step boundary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from pydantic import BaseModel, Field, model_validator

from optimizer.kube.api import ApiCaller, ApiClient, KubeApi
from optimizer.kube.errors import Conflict, KubeApiError

log = logging.getLogger(__name__)


class LeaderSettings(BaseModel):
    enabled: bool = True
    lease_name: str = "migopt-controller"
    lease_namespace: str = "migopt-system"
    lease_duration_s: float = Field(default=15.0, gt=0)
    renew_deadline_s: float = Field(default=10.0, gt=0)
    retry_period_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LeaderSettings:
        if not self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("leader election needs retry_period_s < renew_deadline_s < lease_duration_s")
        return self


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate. `step()` is one try (tests drive it); `start()` runs it every retry period in a thread."""

    def __init__(
        self,
        api: KubeApi | ApiClient,
        settings: LeaderSettings,
        identity: str,
        caller: ApiCaller,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self._api = KubeApi.of(api)
        self._caller = caller
        self._clock = clock
        self._on_change = on_change
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) as last seen
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self._leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.transitions = 0
        self._last_error: str | None = None

    def is_leader(self) -> bool:
        if not self.settings.enabled:
            return True
        renewed = self._renewed_at
        return self._leader and renewed is not None and self._clock() - renewed < self.settings.renew_deadline_s

    def step(self) -> bool:
        """Acquire or renew once; returns whether this candidate leads now."""
        started = self._clock()  # the renewTime written is taken before the request: measure from here too
        try:
            leads = self._try()
        except KubeApiError as err:
            if str(err) != self._last_error:  # once per distinct failure, not every retry period
                log.warning("lease=%s renew failed: %s", self.settings.lease_name, err)
            self._last_error = str(err)
            leads = False
        else:
            self._last_error = None
        if leads:
            self._renewed_at = started
        self._set_leader(self.is_leader() if not leads else True)
        return self.is_leader()

    def _set_leader(self, leads: bool) -> None:
        if leads != self._leader:
            self._leader = leads
            self.transitions += 1
            log.info("lease=%s identity=%s leader=%s", self.settings.lease_name, self.identity, leads)
            if self._on_change:
                self._on_change(leads)

    def _try(self) -> bool:
        s = self.settings
        lease = self._read()
        now_text = _micro_time()
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.lease_name, "namespace": s.lease_namespace},
                "spec": self._spec(now_text, now_text, 0),
            }
            return self._write("create", lambda: self._api.create_lease(s.lease_namespace, body))
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime") or ""))
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration_s)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # someone else holds a lease we have not seen expire
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = str(spec.get("acquireTime") or now_text)
        if holder != self.identity:
            transitions, acquired = transitions + 1, now_text
        lease["spec"] = self._spec(acquired, now_text, transitions)
        return self._write("update", lambda: self._replace(lease))

    def _spec(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.settings.lease_duration_s),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    def _read(self) -> dict[str, Any] | None:
        s = self.settings
        return self._caller.read_or_none("leases", partial(self._api.read_lease, s.lease_name, s.lease_namespace))

    def _replace(self, lease: dict[str, Any]) -> None:
        s = self.settings
        self._api.replace_lease(s.lease_name, s.lease_namespace, lease)

    def _write(self, verb: str, call: Callable[[], Any]) -> bool:
        try:
            self._caller(verb, "leases", call, allow=(409,))
        except Conflict:
            return False  # another candidate wrote first
        return True

    def release(self) -> None:
        """Give the lease up on shutdown so a standby takes over at once instead of after the lease duration."""
        if not (self.settings.enabled and self._leader):
            return
        self._set_leader(False)
        s = self.settings
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
            self._write("update", lambda: self._replace(lease))
        except KubeApiError as err:
            log.warning("lease=%s release failed: %s", s.lease_name, err)

    def start(self) -> None:
        if not self.settings.enabled:  # the only replica leads: say so, as an elected one would
            if self._on_change:
                self._on_change(True)
            return
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.settings.retry_period_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.release()
