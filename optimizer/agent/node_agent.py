"""The node agent (`migopt agent`): read the node's MIG truth through NVML and publish it as one node annotation.

Runs as a DaemonSet on MIG-capable nodes. Every interval it reads NVML (read-only: `Get`/query calls only; it
never changes MIG mode, creates or destroys instances, or resets anything), maps MIG devices to pods through
the kubelet pod-resources socket when one is mounted, and patches `migopt.io/gpu-report` on its own node when
what it saw changed, so node watchers are not woken every 30 s for nothing, and otherwise every `heartbeat`
seconds: each report carries the time it was observed, and the controller does not trust a report older than
its `kube.report_max_age_s` (default 600 s; the heartbeat, default 300 s, must be at most half of it). A
missing driver or an NVML error becomes a report with `error` set, logged once, and the loop goes on.

This module imports neither `kubernetes` (the writer goes through `optimizer.kube.api`, imported when a writer is
made) nor `grpc` at module level, nor anything that pulls in OR-Tools, so
`python -m optimizer.agent.node_agent --once --dry-run` runs on a bare GPU machine with only pynvml, PyYAML,
pydantic and typer.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, NodeGpuReport, observed_time
from optimizer.agent.nvml_common import load_nvml
from optimizer.agent.nvml_layout import read_layout
from optimizer.logs import LogFormatOption, LogLevelOption, configure_logging
from solver.errors import MigoptError

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"  # pod_resources.DEFAULT_SOCKET, without grpc
DEFAULT_HEARTBEAT_S = 300.0  # half the controller's default kube.report_max_age_s

Writer = Callable[[str], None]
"""Publishes one annotation value; raises MigoptError when it could not."""
PodOwners = Callable[[], dict[str, str] | None]
"""MIG UUID → `namespace/name`, or None when no pod-resources socket is there to ask; raises MigoptError."""


@dataclass(frozen=True)
class StepResult:
    """What one step did; internal to the process, so a plain dataclass rather than a boundary model."""

    report: NodeGpuReport
    written: bool
    failed: bool


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def read_report(nvml: Any, pod_owners: PodOwners | None) -> tuple[NodeGpuReport, list[str]]:
    """One report and the warnings worth a log line. Never raises: failures become the report's `error`."""
    try:
        layout = read_layout(nvml)
    except MigoptError as err:
        return NodeGpuReport(error=_one_line(err)), []
    except Exception as err:  # a daemon must survive a driver's surprise; the report carries it
        log.debug("event=nvml-read-failed", exc_info=True)
        return NodeGpuReport(error=f"unexpected {type(err).__name__}: {_one_line(err)}"), []
    warnings = list(layout.warnings)
    owners: dict[str, str] | None = None
    if pod_owners is not None:
        try:
            owners = pod_owners()
        except MigoptError as err:
            warnings.append(_one_line(err))
    gpus = layout.gpus
    if owners is not None:
        gpus = [
            gpu.model_copy(
                update={"instances": [i.model_copy(update={"pod": owners.get(i.uuid or "")}) for i in gpu.instances]}
            )
            for gpu in gpus
        ]
    return NodeGpuReport(driver=layout.driver, pod_resources=owners is not None, gpus=gpus), warnings


class NodeAgent:
    """Holds what was last published, when, and what was last complained about: a report is published when what
    it says changed or `heartbeat_s` after the last one (so its reader can tell it is alive), and complaints are
    logged when they change. `clock` is the wall clock the reports are stamped with."""

    def __init__(
        self,
        nvml: Any,
        write: Writer,
        pod_owners: PodOwners | None = None,
        *,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nvml = nvml
        self._write = write
        self._pod_owners = pod_owners
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._published: str | None = None  # what the last published report said, without its time
        self._published_at: float | None = None
        self._complaints: set[str] = set()

    def step(self) -> StepResult:
        report, problems = read_report(self._nvml, self._pod_owners)
        now = self._clock()
        report = report.model_copy(update={"observed_at": observed_time(now)})
        if report.error:
            problems.insert(0, f"report error: {report.error}")
        content = report.model_copy(update={"observed_at": None}).to_annotation()
        changed = content != self._published
        due = self._published_at is None or now - self._published_at >= self._heartbeat_s
        written = failed = False
        if changed or due:
            try:
                self._write(report.to_annotation())
                self._published, self._published_at = content, now
                written = True
                log.log(
                    logging.INFO if changed else logging.DEBUG,
                    "event=report-published gpus=%d error=%s heartbeat=%s",
                    len(report.gpus), report.error is not None, not changed,
                )  # fmt: skip
            except MigoptError as err:
                problems.append(_one_line(err))
                failed = True
        self._complain(problems)
        return StepResult(report=report, written=written, failed=failed or report.error is not None)

    def _complain(self, problems: list[str]) -> None:
        """Log each problem when it appears, not every interval while it lasts; say so when all are gone."""
        current = set(problems)
        for problem in problems:
            if problem not in self._complaints:
                log.warning("event=agent-problem problem=%r", problem)
        if self._complaints and not current:
            log.warning("event=agent-recovered")
        self._complaints = current


def run_loop(
    agent: NodeAgent,
    interval_s: float,
    once: bool,
    wait: Callable[[float], bool],
    alive_file: Path | None = None,
) -> StepResult:
    """Step, then `wait(interval)` until it says stop (a SIGTERM in production); returns the last step. After
    every step, failed or not, `alive_file` is touched: a liveness probe reads its age (a loop that hangs in
    NVML or the API stops touching it; a failing step is already in its report and needs no restart)."""
    while True:
        result = agent.step()
        if alive_file is not None:
            _touch(alive_file)
        if once or wait(interval_s):
            return result


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError as err:  # a probe that cannot see progress restarts the pod: say why, keep reporting
        log.warning("event=alive-file-unwritable path=%s error=%s", path, err.strerror or err)


def kubernetes_writer(node: str, kubeconfig: Path | None, context: str | None = None) -> Writer:
    """Merge-patch the report annotation onto the node (RBAC: `patch` on `nodes`)."""
    try:
        from optimizer.kube.api import KubeApi, make_api_client
        from optimizer.kube.errors import KubeApiError
    except ImportError as err:  # pragma: no cover - the dependency is declared
        raise MigoptError("the kubernetes package is needed to patch the node (or use --dry-run)") from err
    api = KubeApi(make_api_client(str(kubeconfig) if kubeconfig is not None else None, context))

    def write(value: str) -> None:
        """One attempt, no retry policy: the next interval is the retry."""
        body = {"metadata": {"annotations": {GPU_REPORT_ANNOTATION: value}}}
        try:
            api.patch_node(node, body)
        except KubeApiError as err:  # an HTTP error, or no answer (connection refused, TLS, timeouts)
            what = f"HTTP {err.status} {err.reason}" if err.status else err.detail
            raise MigoptError(f"patch node {node}: {what}") from None
        except Exception as err:  # anything else the client throws: the daemon goes on
            raise MigoptError(f"patch node {node}: {_one_line(err)}") from None

    return write


def socket_owners(socket_path: str) -> PodOwners:
    """Ask the kubelet when its socket is mounted; the socket is optional, so its absence is not a problem."""

    def owners() -> dict[str, str] | None:
        if not Path(socket_path).exists():
            return None
        try:
            from optimizer.agent.pod_resources import list_mig_owners
        except ImportError as err:
            raise MigoptError(f"pod-resources socket found but grpcio/protobuf missing: {err}") from None
        try:
            return list_mig_owners(socket_path)
        except MigoptError:
            raise
        except Exception as err:  # the kubelet's answer must never stop the GPU report
            raise MigoptError(f"pod-resources List on {socket_path} failed: {_one_line(err)}") from None

    return owners


def _print(value: str) -> None:
    print(value, flush=True)


def agent(
    node: Annotated[
        str | None, typer.Option("--node", envvar="NODE_NAME", help="This node's name (default: $NODE_NAME).")
    ] = None,
    interval: Annotated[float, typer.Option("--interval", min=1.0, help="Seconds between reads.")] = 30.0,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat",
            min=1.0,
            help="Re-publish an unchanged report after this many seconds (at most half the controller's "
            "kube.report_max_age_s, default 600).",
        ),
    ] = DEFAULT_HEARTBEAT_S,
    once: Annotated[bool, typer.Option("--once", help="Read and publish once, then exit (1 on error).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the annotation instead of patching.")] = False,
    pod_resources_socket: Annotated[
        str, typer.Option("--pod-resources-socket", help="kubelet pod-resources socket; skipped when absent.")
    ] = DEFAULT_SOCKET,
    kubeconfig: Annotated[
        Path | None,
        typer.Option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)."),
    ] = None,
    context: Annotated[str | None, typer.Option("--context", help="kubeconfig context.")] = None,
    alive_file: Annotated[
        Path | None, typer.Option("--alive-file", help="Touch this file after every read (for a liveness probe).")
    ] = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Publish this node's MIG layout, busy devices and pod owners as the migopt.io/gpu-report annotation."""
    configure_logging(log_level, log_format)
    write: Writer
    if dry_run:
        write = _print
    elif not node:
        raise MigoptError("the node name is required: --node or NODE_NAME (or use --dry-run)")
    else:
        write = kubernetes_writer(node, kubeconfig, context)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node_agent = NodeAgent(load_nvml(), write, socket_owners(pod_resources_socket), heartbeat_s=heartbeat)
    log.info("event=agent-started node=%s interval=%s heartbeat=%s dry_run=%s", node, interval, heartbeat, dry_run)
    result = run_loop(node_agent, interval, once, stop.wait, alive_file)
    if once and result.failed:
        raise typer.Exit(1)


def main() -> None:
    """`python -m optimizer.agent.node_agent`: the agent alone, without the rest of the CLI's imports."""
    app = typer.Typer(
        pretty_exceptions_enable=False, add_completion=False, context_settings={"help_option_names": ["-h", "--help"]}
    )
    app.command()(agent)
    try:
        configure_logging()
        app()
    except MigoptError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
