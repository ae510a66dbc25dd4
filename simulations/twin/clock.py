"""The twin's discrete-event engine: a simulated clock and the callbacks due on it.

Nothing in the twin sleeps or reads wall time. Components schedule callbacks at simulated instants; `run_until`
fires them in time order, and callbacks due at the same instant fire in the order they were scheduled, so a
run is reproducible event for event. Listeners run after every event (the scheduler binds pods there).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

Callback = Callable[[], None]


@dataclass(order=True)
class EventHandle:
    """A scheduled callback; `cancel()` it to stop it from firing."""

    at: float
    seq: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """Simulated seconds, starting at `start`; time only moves inside `run_until`/`step`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = 0
        self._queue: list[EventHandle] = []
        self._listeners: list[Callback] = []

    @property
    def now(self) -> float:
        return self._now

    def schedule(self, at: float, callback: Callback) -> EventHandle:
        """Fire `callback` at simulated time `at` (not in the past, finite)."""
        if not math.isfinite(at):
            raise ValueError(f"cannot schedule at {at}")
        if at < self._now:
            raise ValueError(f"cannot schedule at {at}: the clock is already at {self._now}")
        self._seq += 1
        handle = EventHandle(at=at, seq=self._seq, callback=callback)
        heapq.heappush(self._queue, handle)
        return handle

    def call_in(self, delay: float, callback: Callback) -> EventHandle:
        """Fire `callback` `delay` seconds from now."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        return self.schedule(self._now + delay, callback)

    def add_listener(self, listener: Callback) -> None:
        """Call `listener` after every event that fires."""
        self._listeners.append(listener)

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)

    def next_time(self) -> float | None:
        """When the next live event is due, or None when nothing is scheduled."""
        self._drop_cancelled()
        return self._queue[0].at if self._queue else None

    def step(self) -> bool:
        """Fire the next live event (advancing the clock to it); False when nothing is scheduled."""
        self._drop_cancelled()
        if not self._queue:
            return False
        handle = heapq.heappop(self._queue)
        self._now = handle.at
        handle.callback()
        for listener in self._listeners:
            listener()
        return True

    def run_until(self, until: float) -> int:
        """Fire every event due at or before `until`, then leave the clock at `until`; returns the count fired."""
        if until < self._now:
            raise ValueError(f"cannot run back to {until}: the clock is already at {self._now}")
        fired = 0
        while (due := self.next_time()) is not None and due <= until:
            self.step()
            fired += 1
        self._now = until
        return fired

    def run_until_idle(self, limit: float) -> int:
        """Fire events until none is scheduled or the next is after `limit`; the clock stays at the last event."""
        fired = 0
        while (due := self.next_time()) is not None and due <= limit:
            self.step()
            fired += 1
        return fired
