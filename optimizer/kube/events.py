"""Kubernetes Events, written off the reconcile path, rate-limited and de-duplicated.

A plan for thousands of pending pods produces an event per pod; writing them inline would make a reconcile as
slow as thousands of requests and could starve the API server. Events are best effort (as in every Kubernetes
controller): a bounded queue drained at a fixed rate, the same (object, reason, message) written once per
`dedupe_s`, and what does not fit is dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from optimizer.controller.reasons import WARNING_REASONS, EventReason
from optimizer.kube.api import ApiCaller
from optimizer.kube.errors import KubeApiError

log = logging.getLogger(__name__)
COMPONENT = "migopt"


def event_body(
    kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str, instance: str
) -> dict[str, Any]:
    """A core/v1 Event on a pod (`namespace/name`) or node; node events live in `default`, as kubelet's do."""
    namespace, _, short = name.rpartition("/") if kind == "Pod" else ("", "", name)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "name": short}
    if kind == "Pod":
        involved["namespace"] = namespace or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{short}.", "namespace": involved.get("namespace", "default")},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if reason in WARNING_REASONS else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventRecorder:
    """`record` never blocks and never raises; a daemon thread writes at most `qps` events per second."""

    def __init__(
        self,
        create: Callable[[str, dict[str, Any]], object],
        caller: ApiCaller,
        *,
        instance: str,
        qps: float = 10.0,
        capacity: int = 1000,
        dedupe_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._create = create
        self._caller = caller
        self._instance = instance
        self._interval = 1.0 / qps if qps > 0 else 0.0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=capacity)
        self._dedupe_s = dedupe_s
        self._clock = clock
        self._recent: dict[tuple[str, str, str, str], float] = {}
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0

    def record(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        now = self._clock()
        key = (kind, name, reason, message)
        if now - self._recent.get(key, -self._dedupe_s - 1) < self._dedupe_s:
            return
        self._recent[key] = now
        if len(self._recent) > 50_000:
            self._recent = {k: t for k, t in self._recent.items() if now - t < self._dedupe_s}
        try:
            self._queue.put_nowait(event_body(kind, name, reason, message, self._instance))
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._drain, name="event-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """End the drain thread now. Events still queued are dropped and counted, as those that did not fit were:
        a thread left draining a full queue is still writing when the interpreter exits, and a daemon thread
        caught in a socket call then can abort the whole process (exit code 134)."""
        if self._thread is not None:
            while True:
                try:
                    body = self._queue.get_nowait()
                except queue.Empty:
                    break
                if body is not None:
                    self.dropped += 1
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout_s)
            self._thread.join(timeout=timeout_s)

    def flush(self) -> None:
        """Write everything queued now (one-shot commands and tests)."""
        while True:
            try:
                body = self._queue.get_nowait()
            except queue.Empty:
                return
            if body is not None:
                self._write(body)

    def _drain(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            self._write(body)
            if self._interval:
                time.sleep(self._interval)

    def _write(self, body: dict[str, Any]) -> None:
        try:
            self._caller("create", "events", lambda: self._create(body["metadata"]["namespace"], body))
            self.written += 1
        except KubeApiError as err:
            self.failed += 1
            log.debug("event not written: %s", err)
        except Exception:  # best effort: the drain thread must outlive any one event
            self.failed += 1
            log.debug("event not written", exc_info=True)
