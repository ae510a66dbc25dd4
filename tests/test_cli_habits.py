"""The command line behaves as kubectl users expect: --version, -h, completion, KUBECONFIG, --context, -o as a
format, timestamped text or JSON logs, warnings for misspelled MIGOPT_* variables, and one-line errors
(exit 2) for ports, paths and numbers that cannot work."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from migopt.settings import settings_variables, warn_unknown_variables
from optimizer.kube.api import make_api_client
from optimizer.logs import configure_logging
from tests.cli_runner import run_cli, run_cli_process


def kubeconfig(path: Path, server: str, context: str, current: bool = True) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": f"{context}-cluster", "cluster": {"server": server}}],
        "users": [{"name": f"{context}-user", "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": f"{context}-cluster", "user": f"{context}-user"}}],
    }
    if current:
        document["current-context"] = context
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def one_line_error(result_err: str) -> bool:
    return result_err.startswith("error: ") and result_err.count("\n") == 1 and "Traceback" not in result_err


def test_version_help_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    version = run_cli(capsys, "--version")
    assert version.code == 0 and version.out.startswith("migopt ")
    for args in (("-h",), ("plan", "-h"), ("twin", "serve", "-h"), ("agent", "-h")):
        shown = run_cli(capsys, *args)
        assert shown.code == 0 and "Usage:" in shown.out, args
    assert "--install-completion" in run_cli(capsys, "--help").out


def test_kubeconfig_variable_with_a_colon_separated_list_and_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = kubeconfig(tmp_path / "a", "http://127.0.0.1:1", "a")
    second = kubeconfig(tmp_path / "b", "http://127.0.0.1:2", "b", current=False)
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    assert make_api_client().configuration.host == "http://127.0.0.1:1"
    assert make_api_client(context="b").configuration.host == "http://127.0.0.1:2"
    assert make_api_client(str(second), "b").configuration.host == "http://127.0.0.1:2"  # the flag wins


def test_without_any_configuration_the_error_names_both_ways(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(Exception, match="pass --kubeconfig or set KUBECONFIG"):
        make_api_client()


def test_snapshot_honours_kubeconfig_and_says_the_server_is_down(tmp_path: Path) -> None:
    config = kubeconfig(tmp_path / "dead", "http://127.0.0.1:1", "dead")
    import os
    import subprocess
    import sys

    env = {**os.environ, "KUBECONFIG": str(config)}
    done = subprocess.run(
        [sys.executable, "-m", "migopt", "snapshot", "--output-file", str(tmp_path / "s.yaml")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and one_line_error(done.stderr), done.stderr
    assert "127.0.0.1" in done.stderr and "not running in a cluster" not in done.stderr


def test_every_cluster_command_takes_a_context(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "snapshot", "agent"):
        assert "--context" in run_cli(capsys, command, "-h").out, command


def test_json_logs_carry_a_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", None)
    from optimizer.logs import LogFormat

    configure_logging("info", LogFormat.json)
    logging.getLogger("migopt.test").info("event=%s", "hello")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "event=hello" and entry["level"] == "INFO" and entry["time"].endswith("Z")
    configure_logging("warning", LogFormat.text)
    logging.getLogger("migopt.test").warning("plain")
    text = capsys.readouterr().err.strip()
    assert text.startswith("time=") and "level=WARNING logger=migopt.test plain" in text


def test_bad_log_level_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "run", "--log-level", "loud")
    assert result.code == 2 and one_line_error(result.err) and "unknown log level" in result.err


def test_misspelled_variables_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"MIGOPT_MODE": "enforce", "MIGOPT_CONTROLER__BATCH_IDLE_S": "3", "PATH": "/bin"}
    with caplog.at_level(logging.WARNING):
        assert warn_unknown_variables(environ) == ["MIGOPT_CONTROLER__BATCH_IDLE_S"]
    assert "did you mean MIGOPT_CONTROLLER__BATCH_IDLE_S?" in caplog.text
    assert {"MIGOPT_CONTROLLER__ACTUATION__CONFIG_PROPAGATION_S", "MIGOPT_USAGE__CA_FILE"} <= settings_variables()


def test_ports_that_cannot_be_served_are_one_line(capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
    small = ("--policies", "static:all-balanced")
    in_use = run_cli(capsys, "simulate", *small, "--serve-metrics", str(busy_port))
    assert in_use.code == 2 and one_line_error(in_use.err) and str(busy_port) in in_use.err
    out_of_range = run_cli(capsys, "simulate", *small, "--serve-metrics", "70000")
    assert out_of_range.code == 2 and one_line_error(out_of_range.err)
    for port in (str(busy_port), "70000"):
        twin = run_cli_process("twin", "serve", "--port", port)
        assert twin.code == 2 and one_line_error(twin.err), twin.err


def test_run_with_a_busy_metrics_port_is_one_line(tmp_path: Path, busy_port: int) -> None:
    config = kubeconfig(tmp_path / "dead", "http://127.0.0.1:1", "dead")
    result = run_cli_process("run", "--kubeconfig", str(config), "--metrics-port", str(busy_port))
    assert result.code == 2 and "error: " in result.err and "Traceback" not in result.err, result.err
    bad = run_cli_process("run", "--kubeconfig", str(config), "--metrics-port", "70000")
    assert bad.code == 2 and one_line_error(bad.err), bad.err


def test_simulate_output_dir_that_is_a_file_and_a_nan_time_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    taken = tmp_path / "report"
    taken.write_text("mine", encoding="utf-8")
    result = run_cli(capsys, "simulate", "--output-dir", str(taken))
    assert result.code == 2 and one_line_error(result.err) and taken.read_text(encoding="utf-8") == "mine"
    snapshot = Path(__file__).resolve().parents[1] / "examples" / "snapshot.yaml"
    for value in ("nan", "inf", "-1"):
        plan = run_cli(capsys, "plan", "-f", str(snapshot), "--time-limit", value)
        assert plan.code == 2 and one_line_error(plan.err), value
