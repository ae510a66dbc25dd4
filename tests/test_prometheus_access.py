"""Reaching a secured Prometheus: TLS verified by default (against the real server with a test CA), a CA file,
and a bearer token file re-read every round (against a loopback stub: Prometheus itself checks no tokens)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from optimizer.usage.prometheus import PrometheusUsage, UsageSettings
from solver.errors import MigoptError
from tests.cli_runner import run_cli
from tests.prometheus_server import PrometheusServer, prometheus


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and a server certificate it signed for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    names = ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    ca_key, ca, key, request, cert = (folder / name for name in names)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=migopt test CA",
            "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(request))
    extensions = folder / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(extensions), "-out", str(cert))  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tls_prometheus(certificates: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    tls = {"cert_file": str(certificates / "server.pem"), "key_file": str(certificates / "server.key")}
    web = {"tls_server_config": tls}
    with prometheus({}, tmp_path_factory.mktemp("prom"), web_config=web, ca_file=certificates / "ca.pem") as server:
        yield server


def test_tls_is_verified_by_default_and_an_unknown_ca_is_refused(tls_prometheus: PrometheusServer) -> None:
    assert tls_prometheus.url.startswith("https://")
    report = PrometheusUsage(tls_prometheus.url, consequence=None).usage()
    assert not report.available
    assert report.reason is not None and report.reason.startswith("Prometheus TLS failed: certificate verify failed")


def test_the_ca_file_makes_the_real_server_trusted(tls_prometheus: PrometheusServer, certificates: Path) -> None:
    settings = UsageSettings(ca_file=str(certificates / "ca.pem"))
    report = PrometheusUsage(tls_prometheus.url, settings).usage()
    assert report.available, report.reason


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_off_is_an_explicit_choice(tls_prometheus: PrometheusServer) -> None:
    assert PrometheusUsage(tls_prometheus.url, UsageSettings(tls_verify=False)).usage().available


def test_recommend_takes_the_ca_file(
    tls_prometheus: PrometheusServer, certificates: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_file = str(certificates / "ca.pem")
    trusted = run_cli(capsys, "recommend", "--prometheus", tls_prometheus.url, "--ca-file", ca_file)
    assert trusted.code == 0, trusted.err
    refused = run_cli(capsys, "recommend", "--prometheus", tls_prometheus.url)
    assert refused.code == 1 and "certificate verify failed" in refused.err and refused.err.count("\n") == 1


class _Recorder(BaseHTTPRequestHandler):
    """Answers every query with an empty vector and remembers the Authorization header it came with."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def stub() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_bearer_token_is_sent_and_rotation_is_followed(
    stub: tuple[str, list[str | None]], tmp_path: Path
) -> None:
    url, seen = stub
    token = tmp_path / "token"
    token.write_text("first-token\n", encoding="utf-8")
    usage = PrometheusUsage(url, UsageSettings(bearer_token_file=str(token)))
    assert usage.usage().available
    token.write_text("rotated-token", encoding="utf-8")
    assert usage.usage().available
    assert set(seen[:7]) == {"Bearer first-token"} and set(seen[7:]) == {"Bearer rotated-token"}


def test_without_a_token_file_no_authorization_is_sent(stub: tuple[str, list[str | None]]) -> None:
    url, seen = stub
    assert PrometheusUsage(url).usage().available
    assert seen and set(seen) == {None}


def test_a_token_file_that_vanishes_makes_usage_unavailable_not_a_crash(
    stub: tuple[str, list[str | None]], tmp_path: Path
) -> None:
    url, seen = stub
    token = tmp_path / "token"
    token.write_text("t", encoding="utf-8")
    usage = PrometheusUsage(url, UsageSettings(bearer_token_file=str(token)))
    token.unlink()
    report = usage.usage()
    assert not report.available and report.reason is not None and "bearer token file" in report.reason
    assert not seen  # nothing was sent without the token


def test_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MigoptError, match=r"usage\.ca_file"):
        PrometheusUsage("https://127.0.0.1:1", UsageSettings(ca_file=str(tmp_path / "nope.pem")))
    with pytest.raises(MigoptError, match=r"usage\.bearer_token_file"):
        PrometheusUsage("https://127.0.0.1:1", UsageSettings(bearer_token_file=str(tmp_path / "nope")))
