"""Stopping the event recorder ends its thread at once: what is still queued is dropped and counted, so no daemon
thread is left writing while the interpreter exits (one caught in a socket call then can abort the process)."""

from __future__ import annotations

import threading
from typing import Any

from optimizer.controller.reasons import EventReason
from optimizer.kube.api import ApiCaller
from optimizer.kube.events import EventRecorder


def test_stop_drops_what_is_queued_and_ends_the_thread() -> None:
    written: list[dict[str, Any]] = []
    first_written = threading.Event()

    def create(namespace: str, body: dict[str, Any]) -> None:
        written.append(body)
        first_written.set()

    recorder = EventRecorder(create, ApiCaller(), instance="test", qps=2, capacity=100)  # one event per 0.5 s
    for n in range(50):
        recorder.record("Pod", f"team-a/pod-{n}", EventReason.PLANNED, "served")
    recorder.start()
    assert first_written.wait(5)
    recorder.stop(timeout_s=2)
    assert recorder._thread is not None and not recorder._thread.is_alive()
    assert recorder.written == len(written) < 50
    assert recorder.written + recorder.dropped == 50
