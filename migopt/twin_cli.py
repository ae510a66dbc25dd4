"""`migopt twin serve`: a simulated cluster behind a facade of the Kubernetes API, for kubectl or a controller.

The twin starts as the scenario's initial cluster (the built-in scenario when none is given), the same
cluster `migopt simulate` starts from; with `--workload` the scenario's pods arrive over simulated time too.
"""

from __future__ import annotations

import math
import signal
import threading
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from optimizer.logs import LogFormatOption, LogLevelOption, configure_logging
from solver.errors import MigoptError

if TYPE_CHECKING:
    from simulations.twin.cluster import Twin
    from simulations.workloads import WorkloadPod

twin_app = typer.Typer(help="Serve the digital twin over (a subset of) the Kubernetes API.", no_args_is_help=True)


@twin_app.command()
def serve(
    scenario: Annotated[Path | None, typer.Argument(help="Scenario YAML; the built-in scenario when omitted.")] = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = 0,
    speed: Annotated[float, typer.Option("--speed", help="Simulated seconds per real second.", min=0.0)] = 1.0,
    agent: Annotated[bool, typer.Option("--agent/--no-agent", help="Node agent gpu-report annotations.")] = True,
    kubeconfig: Annotated[Path | None, typer.Option("--kubeconfig", help="Write a kubeconfig for it here.")] = None,
    workload: Annotated[bool, typer.Option("--workload", help="Inject the scenario's pods as they arrive.")] = False,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve dcgm-exporter-shaped /metrics for its pods here.")
    ] = None,
    config_refresh: Annotated[
        float,
        typer.Option(
            "--config-refresh", min=0.0, help="Simulated seconds before mig-manager sees a ConfigMap write (kubelet)."
        ),
    ] = 60.0,
    component_wait: Annotated[
        float,
        typer.Option("--component-wait", min=0.001, help="Simulated seconds mig-manager waits for operand pods."),
    ] = 300.0,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve the scenario's initial cluster until interrupted (SIGINT or SIGTERM)."""
    configure_logging(log_level, log_format)
    if not 0 <= port <= 65535:
        raise MigoptError(f"--port {port} is out of range (0-65535)")
    from simulations.engine import initial_cluster, workload_pods
    from simulations.scenario import default_scenario, load_scenario
    from simulations.twin.api import TwinApiServer, write_kubeconfig
    from simulations.twin.cluster import Twin
    from simulations.twin.dcgm_exporter import serve_dcgm_exporter
    from simulations.twin.mig_manager import MigManagerTimings

    chosen = load_scenario(scenario) if scenario else default_scenario()
    snapshot, config_text = initial_cluster(chosen, chosen.cluster.initial_config)
    timings = MigManagerTimings(config_refresh_s=config_refresh, component_wait_s=component_wait)
    twin = Twin.from_snapshot(snapshot, config_text, timings=timings, seed=chosen.seed)
    if workload:
        for pod in workload_pods(chosen):
            twin.clock.schedule(pod.arrival_s, partial(_arrive, twin, pod))
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    propagation_s = matching_config_propagation_s(config_refresh, speed)
    server = TwinApiServer(twin, speed=speed, port=port, agent_annotations=agent)
    try:
        server.start()
    except OSError as err:  # the port is in use or not ours to take
        raise MigoptError(f"cannot serve the twin on 127.0.0.1:{port}: {err.strerror or err}") from None
    with server:
        settings_file = None
        if kubeconfig is not None:  # the settings first: a kubeconfig that exists tells scripts both are there
            settings_file = write_controller_settings(kubeconfig, propagation_s)
            write_kubeconfig(kubeconfig, server.url)
        typer.echo(f"twin API (a facade of the Kubernetes API) serving {len(twin.nodes)} nodes at {server.url}")
        typer.echo(
            f"mig-manager sees ConfigMap writes {config_refresh:g} simulated s late: run the controller with "
            f"MIGOPT_CONTROLLER__ACTUATION__CONFIG_PROPAGATION_S={propagation_s:g}"
        )
        if kubeconfig is not None:
            typer.echo(f"kubeconfig: {kubeconfig}")
        if settings_file is not None:
            typer.echo(f"controller settings for this twin: {settings_file} (migopt run --config {settings_file})")
        exporter = serve_dcgm_exporter(twin, metrics_port, lock=server.lock) if metrics_port is not None else None
        if exporter is not None:
            typer.echo(f"dcgm-exporter-shaped metrics at {exporter.url}/metrics")
        while not stop.wait(0.5):
            pass
        if exporter is not None:
            exporter.stop()
    typer.echo("stopped")


REFRESH_MARGIN = 1.5
"""The controller waits this multiple of the twin's refresh: the real default (90 s) over kubelet's 60 s sync."""


def matching_config_propagation_s(config_refresh_s: float, speed: float) -> float:
    """Wall seconds `migopt run` should wait before naming a new ConfigMap entry in a label, so that the twin's
    mig-manager (which sees writes `config_refresh_s` simulated seconds late) has it; 0 when the twin's clock
    is stopped (speed 0) or sees writes at once."""
    if speed <= 0 or config_refresh_s <= 0:
        return 0.0
    return math.ceil(config_refresh_s / speed * REFRESH_MARGIN * 10) / 10


def write_controller_settings(kubeconfig: Path, config_propagation_s: float) -> Path:
    """`<kubeconfig>.migopt.yaml` beside the kubeconfig: the `--config` file for a `migopt run` against this twin."""
    path = kubeconfig.with_name(kubeconfig.name + ".migopt.yaml")
    document = {"controller": {"actuation": {"config_propagation_s": config_propagation_s}}}
    header = "# written by `migopt twin serve`: the controller's wait that matches this twin's ConfigMap refresh\n"
    path.write_text(header + yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _arrive(twin: Twin, pod: WorkloadPod) -> None:
    twin.add_pod(
        pod.name, pod.requests, priority=pod.priority, node_selector=pod.node_selector, duration_s=pod.duration_s
    )
