"""Usage in: what running MIG instances use, from dcgm-exporter series in Prometheus (the UsagePort).

dcgm-exporter labels a MIG sample with its node (`Hostname`, or `hostname` in newer exporters), the parent GPU
(`gpu`, `UUID`, `modelName`), the GPU instance (`GPU_I_PROFILE`, `GPU_I_ID`) and, when it could attribute the
device, the holder (`pod`, `namespace`, `container`). There is no MIG device UUID, so an instance is identified
by (node, GPU index, GPU-instance id). Per-instance framebuffer series are version dependent (spec §5), series
vanish while mig-manager rebuilds a GPU, and Prometheus may be down or slow: every such case yields a usable
answer (fields `None`, or an unavailable report) instead of an exception, so planning never waits on usage.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from pydantic import BaseModel, ConfigDict, Field
from urllib3.util.retry import Retry

from solver.errors import MigoptError

log = logging.getLogger(__name__)

GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
SM_ACTIVE = "DCGM_FI_PROF_SM_ACTIVE"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
MIG_ONLY = 'GPU_I_ID!=""'
"""Only MIG samples: whole-GPU samples of the same metric carry no GPU-instance id."""

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

StatusListener = Callable[[bool, str | None], None]
"""Told whether usage is available after each query round (the metrics exporter's gauge)."""


def parse_duration(text: str) -> float:
    """A Prometheus duration (`90s`, `5m`, `1h`) in seconds; a bad one is a one-line `MigoptError`."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise MigoptError(f"bad window {text!r}: expected a positive Prometheus duration such as 30m, 1h or 90s")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class PodDevice(_Frozen):
    """One MIG device a running pod holds, as dcgm-exporter attributes it."""

    node: str
    gpu: int
    profile: str
    gi: int = Field(description="NVML GPU-instance id (GPU_I_ID)")
    pod: str = Field(description="namespace/name")
    container: str | None = None


class InstanceUsage(_Frozen):
    """One MIG instance's usage over the window; a `None` figure is one the exporter did not publish."""

    node: str
    gpu: int
    gi: int
    profile: str
    model_name: str | None = Field(default=None, description="the exporter's modelName (the NVML name)")
    pod: str | None = Field(default=None, description="namespace/name of the holder, when attributed")
    engine_active: float | None = Field(default=None, description="GR engine active, ratio 0..1, at the percentile")
    sm_active: float | None = Field(default=None, description="SM active, ratio, at the percentile (opt-in metric)")
    fb_used_mib: float | None = Field(default=None, description="framebuffer used, MiB, at the percentile")
    fb_total_mib: float | None = Field(default=None, description="framebuffer used + free, MiB, latest")
    samples: int = Field(default=0, description="GR engine samples in the window")


class UsageReport(_Frozen):
    """Every instance's usage over one window, or why there is none (`available` false)."""

    available: bool
    reason: str | None = None
    window_s: float
    percentile: float
    instances: list[InstanceUsage] = []

    def by_pod(self) -> dict[str, list[InstanceUsage]]:
        held: dict[str, list[InstanceUsage]] = {}
        for usage in self.instances:
            if usage.pod:
                held.setdefault(usage.pod, []).append(usage)
        return held


class UsagePort(Protocol):
    def usage(self) -> UsageReport:
        """Per-instance usage percentiles over the configured window."""
        ...

    def pod_devices(self) -> list[PodDevice]:
        """The MIG devices running pods hold now (empty when usage is unavailable)."""
        ...


class UsageSettings(BaseModel):
    window: str = Field(default="1h", description="range of the percentiles (a Prometheus duration)")
    percentile: float = Field(default=0.95, gt=0, le=1)
    fresh: str = Field(default="2m", description="a series with no sample this recent is gone (reconfigured)")
    timeout_s: float = Field(default=10.0, gt=0, description="per query, client and server side")
    tls_verify: bool = Field(default=True, description="verify an https server's certificate (off: tests only)")
    ca_file: str | None = Field(default=None, description="CA bundle for the server's certificate (PEM)")
    bearer_token_file: str | None = Field(
        default=None,
        description="sent as `Authorization: Bearer`, re-read every round so a rotated token is used "
        "(OpenShift monitoring: the pod's service-account token)",
    )


def _tls_reason(err: requests.exceptions.SSLError) -> str:
    """The certificate problem in a few words (urllib3 nests it several exceptions deep)."""
    found = re.search(r"certificate verify failed: ([^(]+?)\s*\(", str(err))
    return f"certificate verify failed: {found.group(1)}" if found else f"handshake failed ({type(err).__name__})"


def _key(metric: dict[str, str]) -> tuple[str, int, int] | None:
    """(node, GPU index, GI id) from a sample's labels, either hostname spelling; None if it is not a MIG one."""
    node = metric.get("Hostname") or metric.get("hostname")
    gpu, gi = metric.get("gpu", ""), metric.get("GPU_I_ID", "")
    if not node or not gpu.isdigit() or not gi.isdigit():
        return None
    return node, int(gpu), int(gi)


def _holder(metric: dict[str, str]) -> str | None:
    pod = metric.get("pod") or metric.get("pod_name")
    if not pod:
        return None
    namespace = metric.get("namespace") or metric.get("pod_namespace") or "default"
    return f"{namespace}/{pod}"


class PrometheusUsage:
    """The UsagePort over Prometheus' HTTP API. A failed round is logged once per outage, not per call."""

    def __init__(
        self,
        url: str,
        settings: UsageSettings | None = None,
        *,
        on_status: StatusListener | None = None,
        consequence: str | None = "planning goes on without usage",
    ) -> None:
        """`consequence` ends the log line written when usage becomes unavailable (what the caller does then);
        None: no log line, the caller reports the unavailable report itself."""
        self.settings = settings or UsageSettings()
        self.window_s = parse_duration(self.settings.window)
        parse_duration(self.settings.fresh)
        for name, path in (("ca_file", self.settings.ca_file), ("bearer_token_file", self.settings.bearer_token_file)):
            if path is not None and not Path(path).is_file():
                raise MigoptError(f"usage.{name} {path!r} is not a readable file")
        session = requests.Session()
        session.verify = self.settings.ca_file or self.settings.tls_verify
        self._client = PrometheusConnect(url=url.rstrip("/"), session=session, retry=Retry(total=0, read=False))
        self._on_status = on_status
        self._consequence = consequence
        self._down_since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        """The last query round failed (so an empty `pod_devices()` means "unknown", not "no pods")."""
        return self._down_since is not None

    # ---- queries ----------------------------------------------------------------------------------------

    def _authorize(self) -> str | None:
        """Set the bearer header from the token file as it is now (projected tokens are rotated on disk);
        the reason when the file cannot be read."""
        path = self.settings.bearer_token_file
        if path is None:
            return None
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            return f"cannot read the bearer token file {path!r}: {getattr(err, 'strerror', None) or err}"
        self._client.headers = {"Authorization": f"Bearer {token}"}
        return None

    def _query(self, promql: str) -> list[dict[str, Any]]:
        timeout = self.settings.timeout_s
        server_side = {"timeout": f"{max(int(timeout * 1000), 1)}ms"}
        result = self._client.custom_query(promql, params=server_side, timeout=timeout)
        return list(result) if isinstance(result, list) else []

    def _report(self, ok: bool, reason: str | None) -> None:
        """One log line when usage goes away, one when it comes back; the listener hears every round."""
        if ok and self._down_since is not None:
            log.info("usage=available prometheus=%s", self._client.url)
            self._down_since = None
        elif not ok:
            self.failures += 1
            if self._down_since is None:
                if self._consequence is not None:
                    log.warning("usage=unavailable prometheus=%s reason=%r; %s",
                                self._client.url, reason, self._consequence)  # fmt: skip
                self._down_since = time.monotonic()
        if self._on_status is not None:
            self._on_status(ok, reason)

    def _guarded(self, queries: list[str]) -> list[list[dict[str, Any]]] | str:
        """Run the queries; a failure of any is the reason string (the round's answers are all or nothing)."""
        unauthorized = self._authorize()
        if unauthorized is not None:
            return unauthorized
        try:
            return [self._query(q) for q in queries]
        except requests.exceptions.SSLError as err:
            return f"Prometheus TLS failed: {_tls_reason(err)}"
        except requests.Timeout:
            return f"Prometheus did not answer within {self.settings.timeout_s}s"
        except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
            return f"Prometheus unreachable: {type(err).__name__}"
        except PrometheusApiClientException as err:
            return f"Prometheus refused the query: {str(err)[:200]}"
        except (ValueError, KeyError) as err:  # a proxy answering HTML, or a malformed body
            return f"Prometheus answered something unreadable: {type(err).__name__}"

    # ---- UsagePort --------------------------------------------------------------------------------------

    def usage(self) -> UsageReport:
        s, w = self.settings, self.settings.window
        q = s.percentile
        queries = [
            f"quantile_over_time({q}, {GR_ENGINE_ACTIVE}{{{MIG_ONLY}}}[{w}])",
            f"count_over_time({GR_ENGINE_ACTIVE}{{{MIG_ONLY}}}[{w}])",
            f"quantile_over_time({q}, {SM_ACTIVE}{{{MIG_ONLY}}}[{w}])",
            f"quantile_over_time({q}, {FB_USED}{{{MIG_ONLY}}}[{w}])",
            f"last_over_time({FB_USED}{{{MIG_ONLY}}}[{w}])",
            f"last_over_time({FB_FREE}{{{MIG_ONLY}}}[{w}])",
            f"last_over_time({GR_ENGINE_ACTIVE}{{{MIG_ONLY}}}[{s.fresh}])",
        ]
        answers = self._guarded(queries)
        if isinstance(answers, str):
            self._report(False, answers)
            return UsageReport(available=False, reason=answers, window_s=self.window_s, percentile=q)
        self._report(True, None)
        engine, counts, sm, fb_p, fb_last, free_last, current = answers
        live = {k for k in (_key(r["metric"]) for r in current) if k is not None}
        rows: dict[tuple[str, int, int, str | None], dict[str, Any]] = {}

        def put(results: list[dict[str, Any]], field: str) -> None:
            for r in results:
                metric: dict[str, str] = r["metric"]
                key = _key(metric)
                if key is None or key not in live:
                    continue  # a series that vanished in a reconfiguration describes an instance that is gone
                row = rows.setdefault((*key, _holder(metric)), {"metric": metric})
                value = float(r["value"][1])
                if field in row:  # the same instance under both hostname spellings (an exporter upgrade)
                    value = row[field] + value if field == "samples" else max(row[field], value)
                row[field] = value

        put(engine, "engine_active")
        put(counts, "samples")
        put(sm, "sm_active")
        put(fb_p, "fb_used_mib")
        put(fb_last, "fb_last")
        put(free_last, "fb_free")
        instances = []
        for (node, gpu, gi, pod), row in sorted(rows.items(), key=lambda kv: (kv[0][:3], kv[0][3] or "")):
            metric = row["metric"]
            total = row["fb_last"] + row["fb_free"] if "fb_last" in row and "fb_free" in row else None
            instances.append(
                InstanceUsage(
                    node=node,
                    gpu=gpu,
                    gi=gi,
                    profile=metric.get("GPU_I_PROFILE", ""),
                    model_name=metric.get("modelName"),
                    pod=pod,
                    engine_active=row.get("engine_active"),
                    sm_active=row.get("sm_active"),
                    fb_used_mib=row.get("fb_used_mib"),
                    fb_total_mib=total,
                    samples=int(row.get("samples", 0)),
                )
            )
        return UsageReport(available=True, window_s=self.window_s, percentile=q, instances=instances)

    def pod_devices(self) -> list[PodDevice]:
        """Which MIG device each running pod holds now: the Kubernetes adapter's fallback when the kubelet's
        pod-resources answer is not at hand. Empty when Prometheus is unavailable."""
        fresh = self.settings.fresh
        # no `pod!=""` here: exporters run with --use-old-namespace label `pod_name`; `_holder` reads either
        answers = self._guarded([f"last_over_time({GR_ENGINE_ACTIVE}{{{MIG_ONLY}}}[{fresh}])"])
        if isinstance(answers, str):
            self._report(False, answers)
            return []
        self._report(True, None)
        devices = set()
        for r in answers[0]:
            metric = r["metric"]
            key, pod = _key(metric), _holder(metric)
            if key is None or pod is None:
                continue
            devices.add(
                PodDevice(
                    node=key[0],
                    gpu=key[1],
                    gi=key[2],
                    profile=metric.get("GPU_I_PROFILE", ""),
                    pod=pod,
                    container=metric.get("container") or None,
                )
            )
        return sorted(devices, key=lambda d: (d.node, d.gpu, d.gi, d.pod))
