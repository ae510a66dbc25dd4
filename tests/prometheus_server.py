"""A real Prometheus (`/usr/bin/prometheus`) for integration tests: loopback port, temp data dir, 1 s scrapes.

Tests that use it fail, not skip, when the binary is missing: CI installs it, and a silently skipped
integration suite would hide exactly the breakage it exists to catch.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

BINARY = os.environ.get("MIGOPT_PROMETHEUS", "/usr/bin/prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        answer.raise_for_status()
        return list(answer.json()["data"]["result"])

    def wait_for(
        self, promql: str, done: Callable[[list[dict[str, Any]]], bool] = bool, timeout_s: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll until `done(result)`; fail with the last answer when the deadline passes."""
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if done(result):
                return result
            time.sleep(0.25)
        pytest.fail(f"Prometheus: {promql!r} not as expected within {timeout_s}s; last answer {result!r}")

    def targets_up(self, count: int) -> None:
        self.wait_for("up == 1", lambda r: len(r) >= count)


@contextmanager
def prometheus(
    targets: Mapping[str, str], workdir: Path, web_config: Mapping[str, Any] | None = None, ca_file: Path | None = None
) -> Iterator[PrometheusServer]:
    """Run Prometheus scraping `targets` (job name → `host:port`, path `/metrics`) every second; with
    `web_config` (Prometheus' `--web.config.file`, e.g. TLS) it serves https, checked against `ca_file`."""
    if not (shutil.which(BINARY) or Path(BINARY).exists()):
        pytest.fail(f"Prometheus binary {BINARY} not found: install the `prometheus` package (CI does)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "honor_labels": True, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = workdir / "prometheus.log"
    command = [
        BINARY,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    if web_config is not None:
        (workdir / "web.yml").write_text(yaml.safe_dump(dict(web_config)), encoding="utf-8")
        command.append(f"--web.config.file={workdir / 'web.yml'}")
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    scheme = "https" if web_config is not None else "http"
    server = PrometheusServer(f"{scheme}://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"Prometheus exited {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
            try:
                verify: str | bool = str(ca_file) if ca_file is not None else True
                if requests.get(f"{server.url}/-/ready", timeout=1, verify=verify).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("Prometheus did not become ready within 30s")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
