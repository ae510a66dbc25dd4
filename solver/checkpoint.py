"""Cooperative cancellation of long planning work: a checkpoint is called between its steps and raises
`Abandoned` once the result is no longer wanted (a speculative disaggregation of a solution the solver has
since improved on)."""

from __future__ import annotations

from collections.abc import Callable

Checkpoint = Callable[[], None]


class Abandoned(Exception):
    """Raised by a checkpoint: the work it interrupts is not wanted any more."""


def carry_on() -> None:
    """The checkpoint of work that is always wanted."""
