"""Objects by resource, one global resourceVersion counter, and a bounded history of watch events.

Every change (create, update, delete) bumps the counter, stamps the object and appends a watch event; a watch
resumes from any resourceVersion still in the history, and an older one is `Expired` (410), as etcd's
compaction makes it on a real server. Each object is kept with its JSON bytes, so a list of thousands of pods
is a join, not a re-serialisation. Callers hold the server lock around every call; `changed` is a Condition on
that lock that watchers wait on.
"""

from __future__ import annotations

import bisect
import copy
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from kubefacade.errors import ApiError

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
_UID_NAMESPACE = uuid.UUID("5f0e2a4c-6d1b-4e0b-9a55-6d6967747769")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Stored:
    obj: dict[str, Any]
    raw: bytes

    @property
    def rv(self) -> int:
        return int(self.obj["metadata"]["resourceVersion"])


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    key: str
    namespace: str
    type: EventType
    stored: Stored


def expired(rv: int) -> ApiError:
    return ApiError(410, f"too old resource version: {rv}", reason="Expired")


class ObjectStore:
    def __init__(self, lock: threading.RLock, timestamp: Callable[[], str], history: int = 10_000) -> None:
        self.changed = threading.Condition(lock)
        self._timestamp = timestamp
        self._history_size = max(1, history)
        self._objects: dict[str, dict[tuple[str, str], Stored]] = {}
        self._events: list[WatchEvent] = []
        self._floor = 0  # watch events at or below this resourceVersion are no longer retained
        self.rv = 0
        self.closed_generation = 0  # bumped to end every open watch stream

    # ---- reads ------------------------------------------------------------------------------------------

    def get(self, key: str, namespace: str, name: str) -> Stored | None:
        return self._objects.get(key, {}).get((namespace, name))

    def items(self, key: str, namespace: str | None = None) -> Iterator[Stored]:
        for (ns, _), stored in self._objects.get(key, {}).items():
            if namespace is None or ns == namespace:
                yield stored

    def names(self, key: str) -> set[tuple[str, str]]:
        return set(self._objects.get(key, {}))

    # ---- writes -----------------------------------------------------------------------------------------

    def put(self, key: str, obj: dict[str, Any]) -> Stored:
        """Create or replace (the caller checked conflicts); stamps uid, creationTimestamp, resourceVersion."""
        meta = obj.setdefault("metadata", {})
        namespace, name = meta.get("namespace", ""), meta["name"]
        bucket = self._objects.setdefault(key, {})
        old = bucket.get((namespace, name))
        self.rv += 1
        if old is None:
            meta.setdefault("uid", str(uuid.uuid5(_UID_NAMESPACE, f"{key}/{namespace}/{name}/{self.rv}")))
            meta.setdefault("creationTimestamp", self._timestamp())
        else:
            meta["uid"] = old.obj["metadata"]["uid"]
            meta["creationTimestamp"] = old.obj["metadata"]["creationTimestamp"]
        meta["resourceVersion"] = str(self.rv)
        stored = Stored(obj, dumps(obj))
        bucket[(namespace, name)] = stored
        self._record(key, namespace, "ADDED" if old is None else "MODIFIED", stored)
        return stored

    def delete(self, key: str, namespace: str, name: str) -> Stored | None:
        old = self._objects.get(key, {}).pop((namespace, name), None)
        if old is None:
            return None
        self.rv += 1
        obj = copy.deepcopy(old.obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        stored = Stored(obj, dumps(obj))
        self._record(key, namespace, "DELETED", stored)
        return stored

    def _record(self, key: str, namespace: str, kind: EventType, stored: Stored) -> None:
        self._events.append(WatchEvent(self.rv, key, namespace, kind, stored))
        if len(self._events) >= 2 * self._history_size:
            cut = len(self._events) - self._history_size
            self._floor = self._events[cut - 1].rv
            del self._events[:cut]
        self.changed.notify_all()

    # ---- watch ------------------------------------------------------------------------------------------

    def events_after(self, rv: int, key: str, namespace: str | None) -> list[WatchEvent]:
        """The events of one resource after `rv`; `Expired` when the history no longer reaches back to it."""
        if rv < self._floor:
            raise expired(rv)
        start = bisect.bisect_right(self._events, rv, key=lambda e: e.rv)
        return [e for e in self._events[start:] if e.key == key and (namespace is None or e.namespace == namespace)]

    def expire_history(self) -> None:
        """Forget every retained event: a watch resuming from any earlier resourceVersion gets 410."""
        self.rv += 1
        self._events.clear()
        self._floor = self.rv
        self.changed.notify_all()

    def close_watches(self) -> None:
        self.closed_generation += 1
        self.changed.notify_all()
