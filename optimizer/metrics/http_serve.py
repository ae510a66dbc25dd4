"""A tiny threaded HTTP server for plain-text endpoints (`/metrics`, `/healthz`, the twin's dcgm exporter).

The standard library's server is enough for a scrape every few seconds; each route is a function called per
request, so what is served is always computed from the caller's current state, never cached here.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from solver.errors import MigoptError

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
"""Status code, content type, body."""
Route = Callable[[Mapping[str, str]], Response]
"""Called with the request's headers, names lower-cased (content negotiation); answers the response."""
GZIP_MIN_BYTES = 1024
"""Smaller bodies are sent as they are: compressing them saves nothing worth the CPU."""


class RunningServer:
    """A server answering from a daemon thread; `stop()` shuts it down and frees the port."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether `Accept-Encoding` lists gzip with a non-zero quality (Prometheus sends `gzip`)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            quality = params.strip().removeprefix("q=").strip()
            return not quality or _quality(quality) > 0
    return False


def _quality(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def serve_routes(port: int, routes: Mapping[str, Route], *, host: str = "127.0.0.1") -> RunningServer:
    """Serve `routes` (path → function) on `host:port` (0 picks a free port) from a daemon thread."""
    table = dict(routes)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = table.get(self.path.split("?", 1)[0])
            if route is None:
                status, kind, body = 404, "text/plain; charset=utf-8", b"not found\n"
            else:
                try:
                    status, kind, body = route({k.lower(): v for k, v in self.headers.items()})
                except Exception:  # a broken route answers 500; the server keeps serving
                    log.exception("route=%s failed", self.path)
                    status, kind, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            compress = len(body) >= GZIP_MIN_BYTES and _accepts_gzip(self.headers.get("Accept-Encoding", ""))
            if compress:
                body = gzip.compress(body, compresslevel=6)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            if compress:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Silent: a scrape every second must not write a log line every second."""

    if not 0 <= port <= 65535:
        raise MigoptError(f"port {port} is out of range (0-65535)")
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as err:  # in use, not allowed, or an address this machine does not have
        raise MigoptError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"http-{server.server_address[1]}", daemon=True)
    thread.start()
    return RunningServer(server, thread)
