"""A node-wide lock around slow node operations: they run one at a time, in the order they were asked for.

The DRA driver serializes every prepare and unprepare on a node behind one file lock, and HAMi's scheduler holds
a per-node lock from Bind until the device plugin's Allocate has created the instance (spec dynamic-mig-peers §1
"One node-wide lock", §2 "Bind"). Each operation takes its own simulated time; its effect happens when it ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from simulations.twin.clock import SimClock

Done = Callable[[], None]


class NodeLock:
    """One node's queue of operations behind its lock."""

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock
        self._waiting: deque[tuple[float, Done]] = deque()
        self._held = False

    @property
    def busy(self) -> bool:
        """An operation holds the lock now."""
        return self._held

    def __len__(self) -> int:
        """Operations asked for and not finished, the running one included."""
        return len(self._waiting) + self._held

    def submit(self, duration_s: float, done: Done) -> None:
        """Run an operation of `duration_s` once the lock is free; `done` applies its effect when it ends."""
        if duration_s < 0:
            raise ValueError(f"negative duration {duration_s}")
        self._waiting.append((duration_s, done))
        if not self._held:
            self._next()

    def _next(self) -> None:
        if not self._waiting:
            self._held = False
            return
        self._held = True
        duration, done = self._waiting.popleft()

        def finish() -> None:
            done()
            self._next()

        self._clock.call_in(duration, finish)
