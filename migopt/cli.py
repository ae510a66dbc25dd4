"""The `migopt` command line. Each command parses its input, calls `solver`/`optimizer`, and renders."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import sys
import threading
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from migopt.render import Output, console, emit_data, format_map, render_plan, table
from migopt.snapshot_io import load_scope, load_snapshot
from migopt.twin_cli import twin_app
from optimizer.agent.node_agent import agent as agent_command
from optimizer.agent.nvml_discovery import compare_gpu, load_nvml, read_gpus
from optimizer.logs import LogFormatOption, LogLevelOption, configure_logging
from optimizer.metrics.http_serve import RunningServer
from solver.catalog import GpuModel, load_catalog
from solver.collector import keep_until_exit, keeping, kept
from solver.errors import MigoptError
from solver.geometry import explain_map, feasible_maps, find_layout, maximal_maps
from solver.plan import PlanPolicy
from solver.scope import PlanScope

app = typer.Typer(
    name="migopt",
    help="MIG geometry optimizer for Kubernetes GPU clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(twin_app, name="twin")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"migopt {package_version('migopt')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """MIG geometry optimizer for Kubernetes GPU clusters."""

GpuOption = Annotated[str, typer.Option("--gpu", help="GPU model: alias, GFD product, NVML name or PCI id.")]


def _catalog_rows(model: GpuModel) -> list[list[object]]:
    return [
        [
            p.name,
            p.id,
            p.compute_slices,
            p.memory_slices,
            p.memory_mib,
            p.multiprocessors,
            p.max_count,
            "{" + ",".join(map(str, p.starts)) + f"}}:{p.memory_slices}",
            ",".join(p.drift),
        ]
        for p in model.profiles
    ]


@app.command()
def catalog(
    gpu: Annotated[str | None, typer.Option("--gpu", help="Show one model (any of its names).")] = None,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    from_nvml: Annotated[
        bool, typer.Option("--from-nvml", help="Compare this machine's GPUs with the catalog.")
    ] = False,
) -> None:
    """The MIG profiles, placements and limits of every known GPU model."""
    if from_nvml:
        _compare_with_nvml(output)
        return
    models = [load_catalog().model(gpu)] if gpu else list(load_catalog().models)
    if output is not Output.table:
        emit_data([m.model_dump(mode="json") for m in models], output)
        return
    for model in models:
        flags = f" (unverified: {', '.join(model.unverified)})" if model.unverified else ""
        title = (
            f"{model.key}: {model.product}, {model.compute_slices} compute / {model.memory_slices} memory slices{flags}"
        )
        columns = ["profile", "id", "g", "mem", "MiB", "SMs", "max", "placements", "driver names"]
        console.print(table(title, columns, _catalog_rows(model)))


def _compare_with_nvml(output: Output) -> None:
    comparisons = [compare_gpu(gpu) for gpu in read_gpus(load_nvml())]
    if output is not Output.table:
        emit_data([c.model_dump(mode="json") for c in comparisons], output)
    else:
        for c in comparisons:
            g = c.gpu
            console.print(
                f"GPU {g.index}: {g.name} ({g.pci_device_id}) → {c.model or 'not in catalog'}; "
                f"MIG current={'on' if g.mig_current else 'off'} pending={'on' if g.mig_pending else 'off'}; "
                f"{len(g.profiles)} profiles, {len(g.instances)} instances"
            )
            if c.differences:
                rows = [[d.profile, d.field, d.catalog, d.nvml, d.severity] for d in c.differences]
                console.print(table(None, ["profile", "field", "catalog", "nvml", "severity"], rows))
            else:
                console.print("  matches the catalog")
            for problem in c.layout_problems:
                console.print(f"  layout problem: {problem}")
    if any(d.severity == "mismatch" for c in comparisons for d in c.differences):
        raise typer.Exit(1)


def _parse_map(text: str) -> dict[str, int]:
    devices: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise MigoptError(f"bad --check entry {part!r}: expected PROFILE=COUNT, e.g. 1g.5gb=2")
        devices[name.strip()] = devices.get(name.strip(), 0) + int(count)
    if not devices:
        raise MigoptError("empty --check: expected PROFILE=COUNT[,PROFILE=COUNT…]")
    return devices


@app.command()
def geometries(
    gpu: GpuOption,
    maximal: Annotated[bool, typer.Option("--maximal", help="Only maps no instance can be added to.")] = False,
    check: Annotated[str | None, typer.Option("--check", help="Check one map, e.g. 1g.5gb=2,3g.20gb=1.")] = None,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
) -> None:
    """Every feasible `mig-devices` map of a GPU model, or whether one map is feasible (exit 0/1)."""
    model = load_catalog().model(gpu)
    if check is not None:
        devices = _parse_map(check)
        reason = explain_map(model, devices)
        layout = find_layout(model, devices) if reason is None else None
        if output is not Output.table:
            emit_data(
                {
                    "gpu": model.key,
                    "devices": devices,
                    "feasible": reason is None,
                    "reason": reason,
                    "layout": [i.model_dump() for i in layout or []],
                },
                output,
            )
        elif layout is not None:
            placed = " ".join(f"{i.profile}@{i.start}" for i in layout)
            console.print(f"feasible on {model.key}: {format_map(devices)} (e.g. {placed})")
        else:
            console.print(f"infeasible on {model.key}: {format_map(devices)}: {reason}")
        raise typer.Exit(0 if reason is None else 1)
    maps = maximal_maps(model) if maximal else feasible_maps(model)
    if output is not Output.table:
        emit_data(maps, output)
        return
    rows = [
        [i + 1, format_map(m), sum(model.profile(n).compute_slices * c for n, c in m.items())]
        for i, m in enumerate(maps)
    ]
    console.print(
        table(f"{model.key}: {len(maps)} {'maximal ' if maximal else ''}maps", ["#", "mig-devices", "compute"], rows)
    )


@app.command()
def plan(
    snapshot: Annotated[Path, typer.Option("--snapshot", "-f", help="Cluster snapshot, YAML or JSON.")],
    policy: Annotated[str, typer.Option("--policy", help="optimal (CP-SAT) or greedy (baseline).")] = "optimal",
    time_limit: Annotated[
        float, typer.Option("--time-limit", help="Seconds for the whole planning run (CP-SAT gets what is left).")
    ] = 2.0,
    max_evictions: Annotated[int | None, typer.Option("--max-evictions", help="Cap on evicted pods.")] = None,
    max_reconfigurations: Annotated[
        int | None, typer.Option("--max-reconfigurations", help="Cap on reconfigured GPUs.")
    ] = None,
    protect_priority: Annotated[
        int, typer.Option("--protect-priority", help="Never evict pods at or above this priority.")
    ] = PlanPolicy().protect_priority,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    dump_model: Annotated[
        Path | None, typer.Option("--dump-model", help="Write the CP-SAT model of the first solve here, as text.")
    ] = None,
    scope: Annotated[
        Path | None,
        typer.Option("--scope", help="YAML: managedNodes (a label selector) and per-model target allowlists."),
    ] = None,
) -> None:
    """Plan the MIG geometry of every GPU for the pending pods of a snapshot."""
    from solver.policies import get_planner  # OR-Tools loads only for the commands that plan

    planner = get_planner(policy)
    if not math.isfinite(time_limit) or time_limit <= 0 or (max_evictions is not None and max_evictions < 0):
        raise MigoptError("--time-limit must be a positive number of seconds and --max-evictions non-negative")
    if max_reconfigurations is not None and max_reconfigurations < 0:
        raise MigoptError("--max-reconfigurations must be non-negative")
    knobs = PlanPolicy(
        time_limit_s=time_limit,
        max_evictions=max_evictions,
        max_reconfigurations=max_reconfigurations,
        protect_priority=protect_priority,
        scope=load_scope(scope) if scope is not None else PlanScope(),
    )
    _memory_left_to_exit()
    cluster = load_snapshot(snapshot)
    result = planner(cluster, knobs, dump_model=dump_model, as_json=output is Output.json)
    if output is Output.table:
        render_plan(result)
    else:
        emit_data(result, output)  # the model: serialised in one pass
    kept(cluster, result)  # under `console_main`, left to the exit (`_memory_left_to_exit`)


@app.command()
def simulate(
    scenario: Annotated[Path | None, typer.Argument(help="Scenario YAML; the built-in scenario when omitted.")] = None,
    trace: Annotated[Path | None, typer.Option("--trace", help="Alibaba GPU trace CSV to replay instead.")] = None,
    replay: Annotated[
        str | None, typer.Option("--replay", help="inflate or timed (default: timed if timestamps).")
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option("--policies", help="Comma-separated, e.g. static:all-balanced,nos,hami,dra,greedy,optimal"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--output-dir", "--out", help="Folder for report.json and PNG plots.")
    ] = None,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
    serve_metrics: Annotated[
        int | None, typer.Option("--serve-metrics", help="Serve /metrics here, also after the run until Ctrl-C.")
    ] = None,
    metrics_bind_address: Annotated[
        str, typer.Option("--metrics-bind-address", help="Address --serve-metrics listens on.")
    ] = "127.0.0.1",
) -> None:
    """Run policies side by side on a simulated cluster (the digital twin) and compare them."""
    from rich.progress import Progress

    from simulations.engine import run_scenario
    from simulations.policies import check_simulation_policy
    from simulations.report import load_pyplot, plot
    from simulations.scenario import TraceSource, default_scenario, load_scenario

    if out is not None:
        load_pyplot()  # a missing `plots` extra fails now, not after the run
    if replay not in (None, "inflate", "timed"):
        raise MigoptError(f"unknown --replay {replay!r}: expected inflate or timed")
    if replay is not None and trace is None:
        raise MigoptError("--replay applies to a trace: give --trace CSV too")
    if out is not None and out.exists() and not out.is_dir():
        raise MigoptError(f"--output-dir {str(out)!r} exists and is not a folder")
    chosen = load_scenario(scenario) if scenario else default_scenario()
    update: dict[str, object] = {}
    if trace is not None:
        update["workload"] = TraceSource(path=str(trace), replay=replay)
    if policies is not None:
        names = [check_simulation_policy(p.strip()) for p in policies.split(",") if p.strip()]
        if not names:
            raise MigoptError("--policies is empty: name at least one policy")
        update["policies"] = names
    if update:
        chosen = chosen.model_copy(update=update)  # every value above is checked: the flags' own errors
    observer = server = None
    if serve_metrics is not None:
        from optimizer.metrics.exporter import MetricsObserver, serve_http

        observer = MetricsObserver()
        server = serve_http(
            serve_metrics, observer.registry, healthy=lambda: True, ready=lambda: True, host=metrics_bind_address
        )
    with Progress(console=console, transient=True, disable=output is not Output.table) as bar:
        tasks = {p: bar.add_task(p, total=1.0) for p in chosen.policies}
        report = run_scenario(chosen, lambda policy, share: bar.update(tasks[policy], completed=share), observer)
    data = report.model_dump(mode="json")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        plot(list(report.policies.values()), out)
    if output is not Output.table:
        emit_data(data, output)
        if server is not None:
            _serve_until_interrupted(server)
        return
    columns = ["policy", "served", "pending p50 s", "pending p95 s", "slice allocation", "reconfigurations"]
    columns += ["evictions", "instance creations", "operand restarts", "plans", "wall s"]
    rows = [
        [r.policy, f"{r.served_pods}/{r.arrived_pods}", r.pending_seconds_p50, r.pending_seconds_p95,
         f"{r.slice_allocation:.1%}", r.reconfigurations, r.evictions, r.instance_creations, r.operand_restarts,
         r.plans, r.wall_seconds]
        for r in report.policies.values()
    ]  # fmt: skip
    console.print(table(f"{report.scenario}: {report.pods} pods over {report.horizon_s / 3600:.1f} h", columns, rows))
    if server is not None:
        _serve_until_interrupted(server)


app.command("agent")(agent_command)


@app.command()
def run(
    mode: Annotated[str | None, typer.Option("--mode", help="recommend (publish only) or enforce (act).")] = None,
    kubeconfig: Annotated[
        str | None, typer.Option("--kubeconfig", help="In-cluster configuration when omitted.")
    ] = None,
    context: Annotated[str | None, typer.Option("--context", help="kubeconfig context.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Settings YAML (flags and MIGOPT_* win).")] = None,
    interval: Annotated[float | None, typer.Option("--interval", help="Seconds between reconcile passes.")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="/metrics, /healthz, /readyz.")] = None,
    metrics_bind_address: Annotated[
        str | None,
        typer.Option("--metrics-bind-address", help="Listen address (all in a pod, loopback with a kubeconfig)."),
    ] = None,
    prometheus: Annotated[str | None, typer.Option("--prometheus", help="Prometheus URL (dcgm-exporter).")] = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run the controller against a cluster (a Deployment's main process), until SIGTERM."""
    from migopt.run import run as run_controller
    from migopt.settings import load_settings

    configure_logging(log_level, log_format)  # a controller's log is its record of what it did: INFO by default
    settings = load_settings(
        config, mode=mode, kubeconfig=kubeconfig, context=context, interval_s=interval, metrics_port=metrics_port,
        metrics_bind_address=metrics_bind_address,
        prometheus_url=prometheus,
    )  # fmt: skip
    run_controller(settings)


@app.command()
def snapshot(
    output: Annotated[Output, typer.Option("-o", "--output", help="yaml or json.")] = Output.yaml,
    output_file: Annotated[
        Path | None, typer.Option("--output-file", help="Write the snapshot here instead of to stdout.")
    ] = None,
    kubeconfig: Annotated[
        str | None, typer.Option("--kubeconfig", help="Default: $KUBECONFIG, in-cluster, ~/.kube/config.")
    ] = None,
    context: Annotated[str | None, typer.Option("--context", help="kubeconfig context.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Settings YAML (ConfigMap location).")] = None,
) -> None:
    """Write the live cluster as a snapshot for `migopt plan` and `migopt simulate` (a summary on stderr)."""
    from migopt.settings import load_settings
    from migopt.snapshot_io import snapshot_text, write_snapshot
    from optimizer.actuators.mig_manager import MigManagerActuator
    from optimizer.controller.isolation import isolation
    from optimizer.kube.adapter import KubeClusterPort
    from optimizer.kube.api import make_api_client
    from solver.scope import scoped

    if output is Output.table:
        raise MigoptError("a snapshot is data: -o yaml or -o json")
    settings = load_settings(config, kubeconfig=kubeconfig, context=context)
    port = KubeClusterPort(make_api_client(settings.kubeconfig, settings.context), settings.kube)
    port.sync_once()
    scope = settings.controller.policy.scope
    taken = scoped(port.snapshot(), scope)  # nodes outside the managed ones say so, for `migopt plan`
    if output_file is None:
        sys.stdout.write(snapshot_text(taken, output is Output.json))
    else:
        write_snapshot(taken, output_file, output is Output.json)
    where = str(output_file) if output_file is not None else "stdout"
    notes = Console(stderr=True, soft_wrap=True)
    counts = f"{len(taken.nodes)} nodes, {len(taken.pods)} pending pods, {len(taken.running)} running"
    notes.print(f"wrote {where}: {counts}")
    sources = ", ".join(f"{node}: {source}" for node, source in sorted(port.sources.items()))
    notes.print(f"GPU sources: {sources or 'no GPU nodes'}")
    for pod, reason in sorted(port.skipped_pods.items()):
        notes.print(f"skipped {pod}: {reason}")
    for what, reason in sorted(port.dra_skipped.items()):
        notes.print(f"skipped {what}: {reason}")
    for note in scope.notes(taken):
        notes.print(f"scope: {note}")
    statuses = MigManagerActuator().statuses(port, taken)
    held = isolation(statuses, port.now(), settings.controller.isolation)
    for node, status in sorted(statuses.items()):
        until = held.quarantined.get(node)
        note = f", quarantined for {until - port.now():.0f}s more" if until is not None else ""
        notes.print(f"node {node}: last change {status.plan_id} {status.phase}{note}")


def _serve_until_interrupted(server: RunningServer) -> None:
    """Keep `/metrics` up after a simulation so Prometheus and Grafana can read its last state."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sys.stderr.write(f"serving metrics on http://{server.host}:{server.port}/metrics; Ctrl-C to stop\n")
    sys.stderr.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


@app.command()
def recommend(
    prometheus: Annotated[
        str, typer.Option("--prometheus", help="Prometheus base URL with dcgm-exporter series.")
    ] = "http://localhost:9090",
    window: Annotated[str, typer.Option("--window", help="Usage window, a Prometheus duration.")] = "1h",
    percentile: Annotated[float, typer.Option("--percentile", help="Usage percentile, 0..1.")] = 0.95,
    memory_headroom: Annotated[float, typer.Option("--memory-headroom", help="Added to framebuffer.")] = 0.2,
    compute_headroom: Annotated[float, typer.Option("--compute-headroom", help="Added to slices in use.")] = 0.2,
    min_samples: Annotated[int, typer.Option("--min-samples", help="Fewer: low confidence.")] = 30,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also list devices whose recommended profile is the current one.")
    ] = False,
    ca_file: Annotated[Path | None, typer.Option("--ca-file", help="CA bundle for an https Prometheus.")] = None,
    bearer_token_file: Annotated[
        Path | None, typer.Option("--bearer-token-file", help="Send this file's token as Authorization: Bearer.")
    ] = None,
    insecure_skip_tls_verify: Annotated[
        bool, typer.Option("--insecure-skip-tls-verify", help="Do not verify the server's certificate.")
    ] = False,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.table,
) -> None:
    """Right-size running pods: the smallest MIG profile covering each one's usage (advice; evicts nothing)."""
    from pydantic import ValidationError

    from optimizer.usage.prometheus import PrometheusUsage, UsageSettings
    from optimizer.usage.rightsizing import RightSizingSettings
    from optimizer.usage.rightsizing import recommend as right_size

    try:
        usage_settings = UsageSettings(
            window=window,
            percentile=percentile,
            tls_verify=not insecure_skip_tls_verify,
            ca_file=str(ca_file) if ca_file else None,
            bearer_token_file=str(bearer_token_file) if bearer_token_file else None,
        )
        sizing = RightSizingSettings(
            memory_headroom=memory_headroom, compute_headroom=compute_headroom, min_samples=min_samples
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise MigoptError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    report = PrometheusUsage(prometheus, usage_settings, consequence=None).usage()
    if not report.available:
        sys.stderr.write(f"usage unavailable: {report.reason} ({prometheus})\n")
        raise typer.Exit(1)
    every = right_size(report, sizing)
    recommendations = every if show_all else [r for r in every if r.recommended_profile != r.current_profile]
    if output is not Output.table:
        emit_data([r.model_dump(mode="json") for r in recommendations], output)
        return
    rows = [
        [r.pod, f"{r.node}/{r.gpu}", r.current_profile, r.recommended_profile, r.slices_freed,
         "-" if r.fb_needed_mib is None else f"{r.fb_needed_mib:.0f}", f"{r.slices_needed:.2f}", r.samples,
         "yes" if r.confident else "no"]
        for r in recommendations
    ]  # fmt: skip
    columns = ["pod", "node/gpu", "current", "recommended", "slices freed", "MiB needed", "slices needed"]
    columns += ["samples", "confident"]
    hidden = len(every) - len(recommendations)
    title = f"right-sizing over {window} at p{percentile * 100:g}: {len(recommendations)} devices to change"
    title += f" ({hidden} already right-sized: --all lists them)" if hidden else ""
    console.print(table(title, columns, rows))


_one_shot = False  # set by `console_main`: the process ends as soon as the command has


def _memory_left_to_exit() -> None:
    """Under `console_main`, a command that builds a snapshot and a plan (millions of objects at thousands of
    nodes) leaves them to the exit: planners and the command hand what they built to `kept` instead of freeing
    it object by object (a fifth of a second after a 1,000-node plan, 0.1 s more of the planner's own data at
    5,000 nodes, measured), and Python's cyclic collector stays off, as its first pass once planning let it run
    again walked every object the plan left alive and freed nothing (0.18–0.28 s at 5,000 nodes). In-process
    (tests), both are left as they are."""
    if _one_shot:
        gc.disable()
        keep_until_exit()


def console_main() -> None:
    """The `migopt` console script and `python -m migopt`: `main`; after a command that left its memory to the
    exit (`_memory_left_to_exit`) and succeeded, the process ends at once, its output flushed, instead of tearing
    every object down."""
    global _one_shot
    _one_shot = True
    try:
        main()
    except SystemExit as done:
        if done.code not in (0, None) or not keeping():
            raise
    if keeping():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2."""
    try:
        configure_logging(default="WARNING")  # one-shot commands: only what went wrong
        app()
    except MigoptError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
