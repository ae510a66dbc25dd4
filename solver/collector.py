"""Python's cyclic garbage collector, paused while a plan is made.

Planning allocates millions of small objects and frees nearly all of them by reference counting; meanwhile the
collector's full passes walk the whole snapshot again and again, which measured as a third of the planning time
outside CP-SAT on large clusters. Nothing planning builds needs the collector to be freed, so it is paused for
the call and resumed after (by the outermost planner when calls overlap, and only if it was running).

A process that ends once its plan is written (the `migopt plan` command) need not free what planning built at
all: after `keep_until_exit`, planners (and the command, its snapshot and plan) hand their data to `kept`
instead of freeing it object by object as they return (the planners' own: 0.1 s after a 5,000-node plan, 0.2 s
after a 10,000-node one, measured). Anywhere else (the controller, tests) `kept` does nothing.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

_lock = threading.Lock()
_depth = 0
_resume = False
_kept: list[object] | None = None  # what planners built, kept; None unless the process ends after its plan


def keep_until_exit() -> None:
    """Say that the process ends once its plan is written: from now on, `kept` keeps what it is given."""
    global _kept
    if _kept is None:
        _kept = []


def keeping() -> bool:
    """Whether the process said it ends once its plan is written (`keep_until_exit`)."""
    return _kept is not None


def kept(*objects: object) -> None:
    """Keep the objects until the process ends, when it said so (`keep_until_exit`); else nothing."""
    if _kept is not None:
        _kept.extend(objects)


def collector_paused(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """`function`, run with the cyclic collector paused."""

    @wraps(function)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        global _depth, _resume
        with _lock:
            if _depth == 0:
                _resume = gc.isenabled()
                gc.disable()
            _depth += 1
        try:
            return function(*args, **kwargs)
        finally:
            with _lock:
                _depth -= 1
                if _depth == 0 and _resume:
                    gc.enable()

    return paused
