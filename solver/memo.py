"""`memo`: `functools.cached_property` without the lock Python 3.11 takes on every first read.

Planning builds tens of thousands of frozen snapshot objects and reads several derived facts of each once, from
one thread; 3.11's class-wide lock made those first reads a visible share of a plan (3.12 dropped the lock).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class memo(cached_property[T], Generic[T]):
    """Computed on first read and stored in the instance's `__dict__`, which later reads find first."""

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> memo[T]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type[Any] | None = None) -> T | memo[T]:
        if instance is None:
            return self
        value = instance.__dict__[self.attrname] = self.func(instance)  # type: ignore[index]
        return value


MEMO_IGNORED = (memo,)
"""For pydantic models' `ignored_types`: pydantic skips `functools`' own descriptors, not subclasses of them."""
