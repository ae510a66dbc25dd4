"""What-if scenarios: a cluster, a workload, the policies to compare, and how long to run.

Scenario files are YAML validated into these models; every mistake is one line naming the field. The built-in
scenario (`default_scenario`) is what `migopt simulate` runs without arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nvidia_protocol.safe_yaml import read_yaml_file
from simulations.peers.knobs import PeerKnobs
from simulations.policies import check_simulation_policy
from simulations.workloads import GpuMilliMapping, SyntheticWorkload
from solver.catalog import load_catalog
from solver.errors import MigoptError, first_problem
from solver.scope import PlanScope
from solver.snapshot import MAX_GPUS_PER_NODE


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_NODES = 100_000
"""Nodes a scenario's cluster may have: 20 times the largest benchmark, and a bound on what a typo can allocate."""


class ClusterShape(_Strict):
    """Nodes of one or more GPU models, all starting from one standard MIG config."""

    nodes: int = Field(default=8, ge=1, le=MAX_NODES)
    gpus_per_node: int = Field(default=8, ge=1, le=MAX_GPUS_PER_NODE)
    models: list[str] = Field(default=["A100-80GB"], min_length=1)
    strategy: Literal["mixed", "single"] = "mixed"
    initial_config: str = "all-balanced"

    @field_validator("models")
    @classmethod
    def _known(cls, models: list[str]) -> list[str]:
        return [load_catalog().model(m).key for m in models]


class SyntheticSource(_Strict):
    kind: Literal["synthetic"] = "synthetic"
    spec: SyntheticWorkload


class TraceSource(_Strict):
    kind: Literal["trace"] = "trace"
    path: str
    replay: Literal["inflate", "timed"] | None = None  # default: timed when the file has timestamps
    mapping: GpuMilliMapping = GpuMilliMapping()
    target_share: float = Field(default=1.0, gt=0)
    time_scale: float = Field(default=1.0, gt=0)
    window_s: float | None = Field(default=None, gt=0)
    seed: int = 0


class ControllerKnobs(_Strict):
    tick_s: float = Field(default=30.0, gt=0)
    batch_idle_s: float = Field(default=10.0, ge=0)
    batch_timeout_s: float = Field(default=60.0, ge=0)
    time_limit_s: float = Field(default=1.0, gt=0)
    max_evictions: int | None = Field(default=None, ge=0)
    scope: PlanScope = Field(default=PlanScope(), description="managed nodes and per-model target allowlists")
    forecast_share: float = Field(
        default=0.5, ge=0, le=1, description="proactive: share of idle compute reshaped for forecast demand"
    )
    config_propagation_s: float | None = Field(
        default=None,
        ge=0,
        description="seconds between writing a new ConfigMap entry and naming it in a label; "
        "unset: the controller's own default, as `migopt run` uses on a cluster",
    )


class TwinKnobs(_Strict):
    """How slow the simulated cluster's NVIDIA components are; the defaults are a real cluster's."""

    config_refresh_s: float = Field(
        default=60.0,
        ge=0,
        description="mig-manager sees a ConfigMap write this many simulated seconds late: kubelet refreshes "
        "the mounted volume only every sync period (spec §1.7); 0 makes simulations optimistic",
    )


class Scenario(_Strict):
    name: str = "scenario"
    cluster: ClusterShape = ClusterShape()
    workload: Annotated[SyntheticSource | TraceSource, Field(discriminator="kind")]
    horizon_s: float = Field(default=6 * 3600.0, gt=0)
    policies: list[str] = Field(default=["static:all-balanced", "greedy", "optimal"], min_length=1)
    controller: ControllerKnobs = ControllerKnobs()
    twin: TwinKnobs = TwinKnobs()
    peers: PeerKnobs = Field(default=PeerKnobs(), description="settings and latency guesses of nos, hami and dra")
    seed: int = 0

    @field_validator("policies")
    @classmethod
    def _policy_names(cls, policies: list[str]) -> list[str]:
        return [check_simulation_policy(policy) for policy in policies]


def default_scenario() -> Scenario:
    """Half a day on 8 A100-80GB nodes: a mixed stream of inference and training slices, 3 policies."""
    return Scenario(
        name="built-in: 8 x 8 A100-80GB, mixed MIG demand",
        cluster=ClusterShape(nodes=8, gpus_per_node=8, models=["A100-80GB"], initial_config="all-balanced"),
        workload=SyntheticSource(
            spec=SyntheticWorkload(
                arrival_rate_per_s=1 / 25,
                duration_mean_s=3600,
                duration_dist="lognormal",
                profile_mix={"1g.10gb": 5, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1},
                priorities={0: 3, 100: 1},
                horizon_s=12 * 3600,
                seed=7,
            )
        ),
        horizon_s=12 * 3600,
    )


def load_scenario(path: Path) -> Scenario:
    """A scenario file, validated; a bad one is a one-line `MigoptError` naming the field."""
    data = read_yaml_file(path, f"scenario {str(path)!r}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        where, message = first_problem(err, "scenario")
        raise MigoptError(f"scenario {str(path)!r}: {where}: {message}") from None
    except MigoptError as err:
        raise MigoptError(f"scenario {str(path)!r}: {err}") from None
