"""The backend protocol: what a simulated cluster behind the facade owns and does.

The facade keeps every object in its store and serves the API's verbs on them. Some kinds (for the twin: nodes
and pods) belong to the backend instead: the backend renders them into the store, and the facade hands it every
write to them and every eviction. Everything else is a plain stored object; the backend hears about writes to
those too, so it can mirror one it cares about (the twin's mig-parted ConfigMap).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kubefacade.store import Stored


class Backend(Protocol):
    owned: frozenset[str]
    """Resource keys (`nodes`, `pods`) whose objects the backend renders and writes."""

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> Stored:
        """Create an owned object; an `ApiError` when the backend refuses (e.g. 405 for nodes)."""
        ...

    def replace(self, resource: str, namespace: str, name: str, obj: Mapping[str, Any]) -> Stored:
        """Apply an update or patch of an owned object, already merged and checked by the facade."""
        ...

    def delete(self, resource: str, namespace: str, name: str) -> Stored:
        """Delete an owned object; returns it as it was."""
        ...

    def evict(self, namespace: str, name: str, dry_run: bool = False) -> None:
        """`pods/eviction`: evict a pod, or raise the `ApiError` the API would (429 for a budget, 404); with
        `dry_run`, answer the same without evicting."""
        ...

    def stored_changed(self, resource: str, namespace: str, name: str, obj: Mapping[str, Any] | None) -> None:
        """A plain stored object was written (`obj`) or deleted (None)."""
        ...
