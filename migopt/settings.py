"""`migopt run`'s settings: command-line flags over environment (`MIGOPT_…`, nested with `__`) over an optional
YAML file (the Deployment mounts the settings ConfigMap there) over defaults.

Example: `MIGOPT_CONTROLLER__BATCH_IDLE_S=5`, or in the file `controller: {planner: greedy}`.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from nvidia_protocol.safe_yaml import read_yaml_file
from optimizer.controller.reconcile import ControllerSettings
from optimizer.kube.adapter import KubeSettings
from optimizer.kube.leader import LeaderSettings
from optimizer.usage.prometheus import UsageSettings
from optimizer.usage.rightsizing import RightSizingSettings
from solver.errors import MigoptError, first_problem

log = logging.getLogger(__name__)

_settings_file: ContextVar[Path | None] = ContextVar("settings_file", default=None)


def _default_identity() -> str:
    """The pod's name (downward API) or the host name: what `kubectl get lease` shows as the holder."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class RunSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIGOPT_", env_nested_delimiter="__", extra="forbid")

    mode: Literal["recommend", "enforce"] = "recommend"
    kubeconfig: str | None = Field(default=None, description="in-cluster configuration when unset")
    context: str | None = None
    interval_s: float = Field(default=5.0, gt=0, description="seconds between reconcile passes")
    unhealthy_after_failed_passes: int = Field(
        default=5, ge=1, description="/healthz fails once this many reconcile passes in a row have failed"
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="on SIGTERM, keep advancing the changes in flight (no new plans) this long before releasing "
        "the lease; below the pod's terminationGracePeriodSeconds (30)",
    )
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0 disables")
    metrics_bind_address: str | None = Field(
        default=None,
        description="address /metrics listens on; unset: every interface in a cluster (in-cluster configuration), "
        "loopback when run with a kubeconfig (a workstation)",
    )

    def metrics_host(self) -> str:
        """The address to bind: as set, else all interfaces in a pod and loopback elsewhere."""
        if self.metrics_bind_address:
            return self.metrics_bind_address
        from_kubeconfig = self.kubeconfig or os.environ.get("KUBECONFIG") or "KUBERNETES_SERVICE_HOST" not in os.environ
        return "127.0.0.1" if from_kubeconfig else "0.0.0.0"
    prometheus_url: str | None = Field(default=None, description="dcgm-exporter series, for usage and pod mapping")
    rightsizing_interval_s: float = Field(default=300.0, gt=0, description="how often right-sizing is recomputed")
    usage: UsageSettings = UsageSettings()
    rightsizing: RightSizingSettings = RightSizingSettings()
    rightsizing_metrics_cap: int = Field(default=50, ge=0, description="per-pod right-sizing series, at most")
    identity: str = Field(default_factory=_default_identity)
    controller: ControllerSettings = ControllerSettings()
    kube: KubeSettings = KubeSettings()
    leader: LeaderSettings = LeaderSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _settings_file.get()
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if path is not None:
            sources += (_SafeYamlSource(settings_cls, yaml_file=path),)
        return sources


class _SafeYamlSource(YamlConfigSettingsSource):
    """The settings file read through `read_yaml_file`: not UTF-8, not YAML or nested too deeply is one line."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        data = read_yaml_file(Path(str(file_path)), f"settings file {file_path}")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise MigoptError(f"settings file {file_path}: expected a mapping of settings")
        return data


OTHER_VARIABLES = frozenset(
    {"MIGOPT_LOG_LEVEL", "MIGOPT_LOG_FORMAT", "MIGOPT_SHARED", "MIGOPT_PROMETHEUS", "MIGOPT_CHECKOV_VENV"}
)
"""`MIGOPT_*` variables read outside the settings model: logging (`optimizer/logs.py`) and the test suite's
(where the shared traces, the Prometheus binary and checkov's environment are)."""


def settings_variables(model: type[BaseModel] = RunSettings, prefix: str = "MIGOPT_") -> set[str]:
    """Every environment variable the settings read: one per field, nested models also as a whole (JSON)."""
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        name = prefix + field_name.upper()
        names.add(name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= settings_variables(annotation, name + "__")
    return names


def warn_unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Log (and return) each `MIGOPT_*` variable nothing reads: a misspelling would otherwise be silently
    ignored, while the settings file rejects unknown keys."""
    known = settings_variables() | OTHER_VARIABLES
    unknown = sorted(name for name in environ if name.upper().startswith("MIGOPT_") and name.upper() not in known)
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning("environment variable %s is not a migopt setting: ignored%s", name, hint)
    return unknown


def load_settings(file: Path | None = None, **flags: Any) -> RunSettings:
    """Settings from flags (None = not given), environment and `file`; one-line `MigoptError` when invalid."""
    if file is not None and not file.is_file():
        raise MigoptError(f"settings file {file} does not exist")
    warn_unknown_variables()
    token = _settings_file.set(file)
    try:
        return RunSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        where, message = first_problem(err, "settings")
        raise MigoptError(f"settings: {where}: {message}") from None
    except MigoptError:
        raise
    except (ValueError, yaml.YAMLError) as err:  # a YAML file that does not parse
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise MigoptError(f"settings file {file} is not valid YAML{where}") from None
    finally:
        _settings_file.reset(token)
