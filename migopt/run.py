"""`migopt run`: the controller as a long-running process on a real cluster (or the twin's API facade).

Wires the parts: the Kubernetes adapter (list+watch caches), optional Prometheus usage (the dcgm pod mapping
the adapter falls back to), leader election, the metrics exporter with `/healthz` and `/readyz`, and the
reconcile loop. A pass that fails (API unreachable after retries, RBAC denial, a node deleted under it) is
logged and counted, and the next pass starts from a fresh snapshot: every step is idempotent.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType

from migopt.settings import RunSettings
from optimizer.actuators.mig_manager import MigManagerActuator
from optimizer.controller.reconcile import Controller
from optimizer.kube.adapter import KubeClusterPort
from optimizer.kube.api import ApiCaller, make_api_client
from optimizer.kube.layouts import DeviceHolder
from optimizer.kube.leader import LeaderElector
from optimizer.metrics.exporter import MetricsObserver, serve_http
from optimizer.metrics.http_serve import RunningServer
from optimizer.usage.prometheus import PrometheusUsage
from optimizer.usage.rightsizing import recommend
from solver.errors import MigoptError

log = logging.getLogger(__name__)


class Runner:
    """Everything `migopt run` starts, so tests can start it in-process and stop it."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.caller = ApiCaller()
        api_client = make_api_client(settings.kubeconfig, settings.context)
        self.metrics = MetricsObserver(rightsizing_cap=settings.rightsizing_metrics_cap)
        self.usage = (
            PrometheusUsage(settings.prometheus_url, settings.usage, on_status=self.metrics.usage_status)
            if settings.prometheus_url
            else None
        )
        self.port = KubeClusterPort(
            api_client,
            settings.kube,
            caller=self.caller,
            holders=self._holders if self.usage else None,
            instance=settings.identity,
            on_report_rejected=self.metrics.report_rejected,
            on_dra_skipped=self.metrics.dra_object_skipped,
        )
        self.elector = LeaderElector(
            api_client, settings.leader, settings.identity, self.caller, on_change=self.metrics.set_leader
        )
        controller_settings = settings.controller.model_copy(update={"mode": settings.mode})  # one place: `mode`
        self.controller = Controller(
            self.port,
            controller_settings,
            actuator=MigManagerActuator(controller_settings.actuation),
            observer=self.metrics,
            may_act=self.elector.is_leader,
        )
        self.passes = 0
        self.failed_passes = 0
        self.failed_in_a_row = 0
        self._rightsized_at: float | None = None
        self.last_pass_at = time.monotonic()
        self._server: RunningServer | None = None

    def _holders(self) -> Sequence[DeviceHolder] | None:
        assert self.usage is not None
        devices = self.usage.pod_devices()
        if self.usage.down:
            return None
        return [DeviceHolder(node=d.node, gpu=d.gpu, profile=d.profile, pod=d.pod) for d in devices]

    def healthy(self) -> bool:
        """Alive: a pass finished recently (a wedged loop gets the pod restarted), and the last
        `unhealthy_after_failed_passes` passes did not all fail (nor does a loop that only fails look alive)."""
        recent = time.monotonic() - self.last_pass_at < max(60.0, 10 * self.settings.interval_s)
        return recent and self.failed_in_a_row < self.settings.unhealthy_after_failed_passes

    def ready(self) -> bool:
        return self.port.synced

    def start(self) -> None:
        if self.settings.metrics_port:
            self._server = serve_http(
                self.settings.metrics_port,
                self.metrics.registry,
                healthy=self.healthy,
                ready=self.ready,
                host=self.settings.metrics_host(),
            )
        self.port.start()
        self.elector.start()
        log.info(
            "migopt running mode=%s identity=%s leader_election=%s",
            self.settings.mode,
            self.settings.identity,
            self.settings.leader.enabled,
        )

    def run_pass(self) -> None:
        ok = False
        try:
            plan = self.controller.tick()
            if plan is not None:
                self._log_sources()
            if self.elector.is_leader():
                self.refresh_rightsizing()
            ok = True
        except MigoptError as err:
            log.error("reconcile pass failed: %s", err)
        except Exception:  # an object shape nobody foresaw must not crash-loop the controller: log, count, go on
            log.exception("reconcile pass failed unexpectedly")
        self.passes += 1
        self.failed_passes += not ok
        self.failed_in_a_row = 0 if ok else self.failed_in_a_row + 1
        self.metrics.pass_finished(ok)
        self.last_pass_at = time.monotonic()

    def refresh_rightsizing(self) -> None:
        """Recompute right-sizing from usage every `rightsizing_interval_s` (published as metrics only: a
        recommendation never evicts anything). Without Prometheus, usage is reported unavailable instead."""
        now = time.monotonic()
        if self._rightsized_at is not None and now - self._rightsized_at < self.settings.rightsizing_interval_s:
            return
        self._rightsized_at = now
        if self.usage is None:
            self.metrics.usage_status(False, "no prometheus_url configured")
            return
        report = self.usage.usage()
        if report.available:
            self.metrics.rightsizing_updated(recommend(report, self.settings.rightsizing))

    def _log_sources(self) -> None:
        """Which source told each node's GPU holders for this plan (README: "Where GPU truth comes from")."""
        counts = Counter(source.split(":")[0] for source in self.port.sources.values())
        log.info(
            "plan=plan-%d layout_sources %s",
            self.controller.plans_made,
            " ".join(f"{k.replace(' ', '_')}={v}" for k, v in sorted(counts.items())),
        )
        for node, source in sorted(self.port.sources.items()):
            if source not in ("agent", "prometheus", "conservative"):
                log.info("plan=plan-%d node=%s layout_source=%r", self.controller.plans_made, node, source)

    def loop(self) -> None:
        while not self.stopping.is_set():
            self.run_pass()
            self.stopping.wait(self.settings.interval_s)

    def finish_in_flight(self, clock: Callable[[], float] = time.monotonic) -> list[str]:
        """After SIGTERM: within `shutdown_grace_s`, advance the changes in flight (a step that ends one, such as
        the uncordon after `success`, is taken now) without planning new ones. Returns the nodes still mid-change,
        which the next leader resumes from their records (they stay cordoned until then)."""
        deadline = clock() + self.settings.shutdown_grace_s
        remaining: list[str] = []
        while clock() < deadline:
            try:
                remaining = self.controller.finish_in_flight()
            except MigoptError as err:
                log.error("finishing the changes in flight failed: %s", err)
            if not remaining:
                break
            time.sleep(min(self.settings.interval_s, max(0.0, deadline - clock())))
        if remaining:
            log.warning(
                "stopping with changes in flight on nodes %s: the next leader resumes them from their records; "
                "they stay cordoned until then", ",".join(remaining),
            )  # fmt: skip
        return remaining

    def stop(self) -> None:
        self.stopping.set()
        self.elector.stop()
        self.port.stop()
        if self._server is not None:
            self._server.stop()


def run(settings: RunSettings) -> None:
    """Run until SIGTERM or SIGINT; the lease is released on the way out so a standby takes over at once."""
    runner = Runner(settings)

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal=%d: stopping", signum)
        runner.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    runner.start()
    try:
        runner.loop()
        if runner.elector.is_leader() and settings.mode == "enforce":
            runner.finish_in_flight()
    finally:
        runner.stop()
