"""A list+watch cache of one kind of object, so a reconcile reads memory instead of listing the cluster.

One list, then one long watch from the list's resourceVersion; a watch that ends (server timeout, connection
closed) resumes from the last resourceVersion seen; a 410 Gone (the version left the server's window) relists.
Objects stay plain JSON dicts: a thousand nodes and thousands of pods deserialised into client models on every
event would cost more than everything else the controller does.

The adapter's own writes are applied at once (`apply`) from the API's response, so the next reconcile sees
them even before their watch event arrives (read-your-writes: the actuation's crash-safety records depend on it).

An `optional` informer is for an API group a cluster may not serve (resource.k8s.io/v1 before Kubernetes 1.34):
a 404 on its list means "not served here", so it holds nothing, counts as synced, says so once, and lists again
every `watch_timeout_s` in case the cluster starts serving it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from optimizer.kube.api import ApiCaller, Collection, WatchStream, watch_error
from optimizer.kube.errors import Gone, KubeApiError, NotFound

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def _newer(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """resourceVersions are opaque, but etcd's (and the twin's) are integers; compare when both are."""
    if current is None:
        return True
    try:
        return int(candidate["metadata"]["resourceVersion"]) >= int(current["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True


class Informer:
    """Keeps `objects` (key → dict) current. `keep` filters what is cached (e.g. only pods that use GPUs)."""

    def __init__(
        self,
        collection: Collection,
        caller: ApiCaller,
        *,
        keep: Callable[[Obj], bool] = lambda _: True,
        watch_timeout_s: int = 300,
        error_backoff_s: float = 1.0,
        optional: bool = False,
    ) -> None:
        self.resource = collection.resource
        self._collection = collection
        self._caller = caller
        self._keep = keep
        self._watch_timeout_s = watch_timeout_s
        self._error_backoff_s = error_backoff_s
        self.optional = optional
        self.served: bool | None = None  # None until the first list answers; False: an optional one got 404
        self._objects: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self.resource_version: str | None = None
        self.relists = 0
        self.watch_restarts = 0
        self._failures = 0  # consecutive: reset by any successful list or watch event

    # ---- reading --------------------------------------------------------------------------------------

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def entries(self) -> list[tuple[str, Obj]]:
        """(key, object) pairs. An object is replaced, never edited, when its event arrives: one still here is
        unchanged (what lets the adapter reuse what it built from it)."""
        with self._lock:
            return list(self._objects.items())

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._objects.get(key)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    def apply(self, obj: Obj) -> None:
        """Record an object the API returned for our own write."""
        with self._lock:
            self._put(obj)

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.resource}", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """End the watch now, waking the thread blocked reading it."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if wait and self._thread is not None:
            self._thread.join(timeout=5)

    def sync_once(self) -> None:
        """List now (tests and one-shot commands such as `migopt snapshot` need no watch)."""
        self._relist()

    # ---- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                    if self.served is False:  # an optional resource this cluster does not serve: ask again later
                        self._stop.wait(self._watch_timeout_s)
                        continue
                self._watch()
            except Gone:
                log.info("resource=%s watch expired (410): relisting", self.resource)
                self.resource_version = None
                continue
            except KubeApiError as err:  # before ValueError: it is one (a MigoptError)
                if self.optional and isinstance(err, NotFound):  # a watch's 404: served no more? the relist tells
                    self.resource_version = None
                self._pause(f"{err.status} {err.reason}" if err.status else err.detail)
            except ValueError as err:  # a line that is not JSON
                self._pause(str(err).splitlines()[0] if str(err) else type(err).__name__)
            except Exception as err:  # the cache must outlive any single bad response
                if not self._stop.is_set():  # closing the stream from `stop` ends the read any way it likes
                    log.exception("resource=%s informer error", self.resource)
                self._pause(type(err).__name__)

    def _pause(self, why: str) -> None:
        """Back off, doubling up to 30 s while the API stays unreachable; log the first failure of an outage only."""
        if self._stop.is_set():
            return
        self.watch_restarts += 1
        self._failures += 1
        wait = min(self._error_backoff_s * 2 ** (self._failures - 1), 30.0)
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "resource=%s watch interrupted (%s): resuming in %.1fs", self.resource, why, wait)
        self._stop.wait(wait)

    def _relist(self) -> None:
        self._caller.count("list", self.resource)
        try:
            body = self._collection.list()
        except NotFound:
            if not self.optional:
                raise
            self._not_served()
            return
        if self.served is False:
            log.info("resource=%s is served now: reading it", self.resource)
        self.served = True
        fresh = {object_key(o): o for o in body.get("items") or [] if self._keep(o)}
        with self._lock:
            self._objects = fresh
            self.resource_version = str(body["metadata"]["resourceVersion"])
        self.relists += 1
        self._recovered()
        self._synced.set()

    def _not_served(self) -> None:
        """An optional resource the cluster does not serve (404): nothing to hold, and nothing to wait for."""
        if self.served is not False:
            log.info("resource=%s is not served by this cluster (404): reading nothing from it", self.resource)
        self.served = False
        with self._lock:
            self._objects = {}
            self.resource_version = None
        self._recovered()
        self._synced.set()

    def _watch(self) -> None:
        self._caller.count("watch", self.resource)
        with self._collection.watch(self.resource_version, self._watch_timeout_s) as stream:
            self._stream = stream
            try:
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._recovered()
                    if event.get("type") == "ERROR":
                        raise watch_error(self.resource, event)
                    self._handle(event)
            finally:
                self._stream = None

    def _recovered(self) -> None:
        if self._failures:
            log.info("resource=%s watch resumed after %d failed attempts", self.resource, self._failures)
            self._failures = 0

    def _handle(self, event: Mapping[str, Any]) -> None:
        obj = event["object"]
        version = (obj.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            if event["type"] == "DELETED":
                self._objects.pop(object_key(obj), None)
            elif event["type"] in ("ADDED", "MODIFIED"):
                self._put(obj)
            if version:
                self.resource_version = str(version)

    def _put(self, obj: Obj) -> None:
        key = object_key(obj)
        if not self._keep(obj):
            self._objects.pop(key, None)
            return
        if _newer(obj, self._objects.get(key)):
            self._objects[key] = obj


def wait_all_synced(informers: list[Informer], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    return all(i.wait_synced(max(0.0, deadline - time.monotonic())) for i in informers)
