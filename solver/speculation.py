"""Working on CP-SAT's incumbent while the solver goes on.

A solve that runs to its time limit, or spends its last stage proving an optimum, mostly ends on a solution it
found well before it returned. What follows the solve (disaggregating that answer and scoring it) can then be
done meanwhile, on the second thread, and taken as it is when the final answer decides the same: CP-SAT holds no
interpreter lock while it searches, so on two cores this costs no wall time. A newer solution abandons the work
in the making (at its checkpoints) and starts it again for that one; the end of the solve abandons work on any
other answer than the final one, and no work starts after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

from solver.checkpoint import Abandoned, Checkpoint
from solver.cpsat import AggregateSolution

T = TypeVar("T")


class Speculation(Generic[T]):
    """`work` done on each incumbent `offer`ed (the newest only), on `thread`; `claim` takes its result for the
    final answer, or None when the caller has to do the work itself."""

    def __init__(self, thread: Executor, work: Callable[[AggregateSolution, Checkpoint], T]) -> None:
        self._thread, self._work = thread, work
        self._changed = threading.Condition()
        self._latest: Callable[[], AggregateSolution] | None = None  # the newest incumbent, not taken up yet
        self._busy = False  # the thread has taken up an incumbent and is reading it or working on it
        self._current: AggregateSolution | None = None  # the answer it works on, once read
        self._done: tuple[AggregateSolution, T] | None = None  # an answer and its result
        self._submitted = False
        self._final: AggregateSolution | None = None  # the solve's answer, once it has ended: no work starts
        self._unwanted = False  # the work in the making is not on the final answer
        self.seconds = 0.0  # all work done on the thread, results used or not

    def offer(self, read: Callable[[], AggregateSolution]) -> None:
        """A new incumbent (called on CP-SAT's thread: `read` is called on the second thread, as work starts)."""
        with self._changed:
            if self._final is not None:
                return
            self._latest = read
            if not self._submitted:
                self._submitted = True
                self._thread.submit(self._work_through)

    def claim(self, final: AggregateSolution) -> T | None:
        """The work's result for the final answer, waiting for it when it is in the making; None when it is not
        (the caller does the work; work on any other answer is abandoned)."""
        with self._changed:
            self._final, self._latest = final, None
            if self._current is not None and not final.decides_as(self._current):
                self._unwanted = True
            while self._busy and not self._unwanted:
                self._changed.wait()
            if self._done is not None and final.decides_as(self._done[0]):
                return self._done[1]
            return None

    def _work_through(self) -> None:
        while True:
            with self._changed:
                read, self._latest = self._latest, None
                self._busy = read is not None
                self._submitted = self._busy
                self._changed.notify_all()
                if read is None:
                    return
            try:
                self._work_on(read())
            finally:
                with self._changed:
                    self._busy, self._current = False, None
                    self._changed.notify_all()

    def _work_on(self, answer: AggregateSolution) -> None:
        with self._changed:
            if self._final is not None and not self._final.decides_as(answer):
                return
            self._current = answer
        started = time.perf_counter()
        try:
            result = self._work(answer, self._checkpoint)
        except Abandoned:
            return
        finally:
            self.seconds += time.perf_counter() - started
        with self._changed:
            self._done = (answer, result)

    def _checkpoint(self) -> None:
        """Abandon the work when a newer incumbent waits, or the solve ended on another answer."""
        if self._latest is not None or self._unwanted:
            raise Abandoned
