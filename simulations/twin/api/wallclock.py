"""Simulated seconds as the wall-clock times the API shows (creationTimestamp, event times, condition times).

A twin's clock may run at any speed, or stand still and jump (`advance()`), so "server start + simulated seconds"
puts objects in the future whenever the simulation runs ahead of the wall clock (kubectl then shows AGE `0s` or
`<invalid>`), and in the past when it lags. Here simulated time is shown when it was seen to happen, as a real
cluster stamps things: each time the twin's clock is read (`observe`, at every render), its reading is pinned to
the wall clock's, and times in between are interpolated. So a stamp is never in the future, never goes backwards,
and once simulated time has moved past it, never changes; only "now" follows the wall clock while the twin's
clock stands still (speed 0).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

MAX_POINTS = 100_000  # beyond this the oldest half is forgotten (times before the rest extrapolate at 1:1)


class SimWallClock:
    def __init__(self, sim_now: float, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._sims = [sim_now]
        self._walls = [wall()]
        self._formatted = (-1, "")  # the last whole second formatted, and its text (renders stamp in bursts)

    def observe(self, sim_now: float) -> None:
        """Pin simulated time `sim_now` to the wall clock now."""
        now = max(self._wall(), self._walls[-1])
        last_sim = self._sims[-1]
        if sim_now < last_sim:
            return
        if sim_now == last_sim:  # standing still: "now" moves with the wall clock, earlier times stay put
            if len(self._sims) >= 2 and self._sims[-2] == last_sim:
                self._walls[-1] = now
            elif now > self._walls[-1]:
                self._sims.append(sim_now)
                self._walls.append(now)
            return
        self._sims.append(sim_now)
        self._walls.append(now)
        if len(self._sims) > MAX_POINTS:
            del self._sims[: MAX_POINTS // 2], self._walls[: MAX_POINTS // 2]

    def wall_at(self, sim: float, sim_now: float) -> float:
        """The wall-clock time (Unix seconds) simulated time `sim` is shown as, `sim_now` being the twin's now."""
        self.observe(sim_now)
        sims, walls = self._sims, self._walls
        if sim >= sims[-1]:
            return walls[-1] + (sim - sims[-1])  # only scheduled future times get here
        if sim < sims[0]:
            return walls[0] - (sims[0] - sim)
        i = bisect.bisect_right(sims, sim)  # a time the clock stood still at: the last wall time it was seen at
        s0, s1, w0, w1 = sims[i - 1], sims[i], walls[i - 1], walls[i]
        return w0 + (w1 - w0) * (sim - s0) / (s1 - s0)

    def stamp(self, sim: float, sim_now: float) -> str:
        """RFC 3339 in whole seconds, as the API writes times."""
        second = math.floor(self.wall_at(sim, sim_now))
        if self._formatted[0] != second:
            self._formatted = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return self._formatted[1]
