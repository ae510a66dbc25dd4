"""The twin's dcgm-exporter: the twin's current MIG instances as Prometheus text in dcgm-exporter's shape.

Series names and labels follow spec §5: per MIG instance `gpu`, `UUID` (the parent GPU's), `device`
(`nvidia<gpu>`), `modelName` (the NVML name), `GPU_I_PROFILE`, `GPU_I_ID`, the hostname label (`Hostname`,
or `hostname` as the newest exporters spell it), and `pod`, `namespace`, `container` for a held instance
(pods named `namespace/name`; a bare name is in `default`). Like the real exporter, a node's series vanish
while mig-manager has paused the exporter (`nvidia.com/gpu.deploy.dcgm-exporter=paused-for-mig-change`), and
GPU-instance ids change when a GPU is rebuilt; per-instance framebuffer series can be switched off, as some
exporter versions publish none.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Literal

from nvidia_protocol.labels import DCGM_EXPORTER_DEPLOY_LABEL, PAUSED
from optimizer.metrics.http_serve import Response, RunningServer, serve_routes
from simulations.twin.cluster import Twin
from simulations.twin.state import TwinGpu, TwinInstance, TwinNode
from simulations.twin.usage import UsageModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_HELP = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "Ratio of time the graphics engine is active.",
    "DCGM_FI_PROF_SM_ACTIVE": "The ratio of cycles an SM has at least 1 warp assigned.",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
}


def gpu_uuid(node: str, gpu: int) -> str:
    """A stable, unique parent-GPU UUID for the twin's GPU."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'migopt-twin://{node}/{gpu}')}"


def gpu_instance_id(instance: TwinInstance, memory_slices: int) -> int:
    """An NVML-like GPU-instance id: unique among a GPU's instances (their starts differ) and different when an
    instance of another size takes the same start after a rebuild."""
    return memory_slices * 8 + instance.start


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(metric: str, labels: dict[str, str], value: float) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items() if v != "")
    return f"{metric}{{{body}}} {value:g}"


class DcgmExporter:
    """Renders the twin's dcgm-exporter series; `lock`, when given, is held while reading the twin (pass the one
    the thread driving the twin holds while it changes it)."""

    def __init__(
        self,
        twin: Twin,
        usage: UsageModel | None = None,
        *,
        hostname_label: Literal["Hostname", "hostname"] = "Hostname",
        framebuffer: bool = True,
        sm_active: bool = True,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.twin = twin
        self.usage = usage or UsageModel()
        self.hostname_label = hostname_label
        self.framebuffer = framebuffer
        self.sm_active = sm_active
        self.lock = lock

    def render(self) -> str:
        if self.lock is None:
            return self._render()
        with self.lock:
            return self._render()

    def _render(self) -> str:
        series: dict[str, list[str]] = {name: [] for name in _HELP}
        for node in list(self.twin.nodes.values()):
            if node.labels.get(DCGM_EXPORTER_DEPLOY_LABEL) == PAUSED:
                continue  # mig-manager stopped the exporter on this node for the change
            for gpu in list(node.gpus):
                self._gpu(node, gpu, series)
        out: list[str] = []
        for name, lines in series.items():
            if not lines:
                continue
            out += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge", *lines]
        return "\n".join(out) + "\n"

    def _gpu(self, node: TwinNode, gpu: TwinGpu, series: dict[str, list[str]]) -> None:
        model = gpu.gpu_model
        base = {
            "gpu": str(gpu.index),
            "UUID": gpu_uuid(node.name, gpu.index),
            "device": f"nvidia{gpu.index}",
            "modelName": model.nvml_names[0] if model.nvml_names else model.product,
        }
        host = {self.hostname_label: node.name}
        series["DCGM_FI_DEV_GPU_TEMP"].append(_line("DCGM_FI_DEV_GPU_TEMP", base | host, 40 + gpu.index))
        if not gpu.mig_enabled:
            return
        for instance in list(gpu.instances):
            profile = model.profile(instance.profile)
            labels = (
                base
                | {
                    "GPU_I_PROFILE": profile.name,
                    "GPU_I_ID": str(gpu_instance_id(instance, profile.memory_slices)),
                }
                | host
            )
            engine = sm = used = 0.0
            if instance.pod:
                pod = self.twin.pods.get(instance.pod)
                use = self.usage.of(instance.pod, pod.origin if pod is not None else None)
                engine, sm, used = use.engine_active, use.sm_active, round(use.fb_fraction * profile.memory_mib)
                namespace, _, name = instance.pod.rpartition("/")
                labels |= {"pod": name, "namespace": namespace or "default", "container": "main"}
            series["DCGM_FI_PROF_GR_ENGINE_ACTIVE"].append(_line("DCGM_FI_PROF_GR_ENGINE_ACTIVE", labels, engine))
            if self.sm_active:
                series["DCGM_FI_PROF_SM_ACTIVE"].append(_line("DCGM_FI_PROF_SM_ACTIVE", labels, sm))
            if self.framebuffer:
                series["DCGM_FI_DEV_FB_USED"].append(_line("DCGM_FI_DEV_FB_USED", labels, used))
                free = profile.memory_mib - used
                series["DCGM_FI_DEV_FB_FREE"].append(_line("DCGM_FI_DEV_FB_FREE", labels, free))

    def response(self, headers: Mapping[str, str] | None = None) -> Response:
        try:
            return 200, CONTENT_TYPE, self.render().encode()
        except RuntimeError:  # the twin changed under an unlocked read: the next scrape will do
            return 503, "text/plain; charset=utf-8", b"twin busy\n"

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> RunningServer:
        """Serve `/metrics` on `host:port` (0: a free port) from a daemon thread; `.url`, `.port`, `.stop()`."""
        return serve_routes(port, {"/metrics": self.response}, host=host)


def serve_dcgm_exporter(
    twin: Twin,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    usage: UsageModel | None = None,
    lock: AbstractContextManager[object] | None = None,
) -> RunningServer:
    """One call to expose a twin's dcgm-shaped series at `/metrics` (e.g. from `migopt twin serve`)."""
    return DcgmExporter(twin, usage, lock=lock).serve(port, host)
