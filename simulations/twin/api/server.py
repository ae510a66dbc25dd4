"""`TwinApiServer`: the twin served over a subset of the Kubernetes REST API, on loopback.

This is a facade of the API, not a kube-apiserver: no authentication or admission, no protobuf, no
server-side apply; fields are checked against the OpenAPI schemas only for being known (`fieldValidation`), and
objects other than the twin's nodes and pods are kept as given. It exists so the production Kubernetes
adapter can be tested end to end and so `kubectl` or the real controller can be pointed at a simulated cluster.
One lock guards the twin and the store; a background thread advances the twin's clock in real time × `speed`
(`speed=0`: only `advance()` moves it, for deterministic tests).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from kubefacade.errors import bad_request
from kubefacade.faults import FaultRequest, Faults
from kubefacade.handler import ApiCore, ApiHttpServer
from kubefacade.objects import namespace_object
from kubefacade.service import ApiService
from kubefacade.store import ObjectStore
from simulations.twin.api.bridge import ConfigMapRef, TwinBridge
from simulations.twin.api.state import state_record
from simulations.twin.api.wallclock import SimWallClock
from simulations.twin.cluster import Twin

BASE_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
MIGOPT_NAMESPACE = "migopt-system"  # as `kubectl apply -k deploy` leaves it: the controller's Lease lives there


class _MigManagerFaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stuck_pending: list[str] | None = None


class TwinApiServer:
    def __init__(
        self,
        twin: Twin,
        *,
        speed: float = 1.0,
        port: int = 0,
        host: str = "127.0.0.1",
        agent_annotations: bool = True,
        mig_config: ConfigMapRef = ConfigMapRef(),  # noqa: B008 (frozen, so sharing the default is safe)
        history: int = 10_000,
        tick_s: float = 0.05,
    ) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self.twin = twin
        self.speed = speed
        self.tick_s = tick_s
        self.lock = threading.RLock()
        self.wall_clock = SimWallClock(twin.now())
        self.store = ObjectStore(self.lock, lambda: self.timestamp(self.twin.now()), history)
        self.bridge = TwinBridge(
            twin, self.store, agent_annotations=agent_annotations, mig_config=mig_config, timestamp=self.timestamp
        )
        self.faults = Faults()
        self.core = ApiCore(
            lock=self.lock, store=self.store, service=ApiService(self.store, self.bridge), faults=self.faults,
            state=lambda: state_record(self.twin, self.store, self.core.requests, self.faults),
            apply_faults=self.apply_faults, endpoints={"/migopt-twin/mig-manager": self.mig_manager_faults},
        )  # fmt: skip
        with self.lock:
            for name in (*BASE_NAMESPACES, MIGOPT_NAMESPACE, mig_config.namespace):
                if self.store.get("namespaces", "", name) is None:
                    self.store.put("namespaces", namespace_object(name))
            self.bridge.sync()
        self._host, self._requested_port = host, port
        self._http: ApiHttpServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop_clock = threading.Event()

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> TwinApiServer:
        if self._http is not None:
            return self
        self._http = ApiHttpServer((self._host, self._requested_port), self.core)
        serve = threading.Thread(target=self._http.serve_forever, args=(0.05,), name="twin-api-http", daemon=True)
        serve.start()
        self._threads = [serve]
        if self.speed > 0:
            clock = threading.Thread(target=self._run_clock, name="twin-api-clock", daemon=True)
            clock.start()
            self._threads.append(clock)
        return self

    def stop(self) -> None:
        if self._http is None:
            return
        self.core.stopping.set()
        self._stop_clock.set()
        with self.lock:
            self.store.changed.notify_all()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._http = None

    def __enter__(self) -> TwinApiServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("the server is not started")
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # ---- time -------------------------------------------------------------------------------------------

    def timestamp(self, sim_seconds: float) -> str:
        """Simulated seconds as the RFC 3339 wall-clock time the API shows (`SimWallClock`: never in the future)."""
        return self.wall_clock.stamp(sim_seconds, self.twin.now())

    def advance(self, seconds: float) -> int:
        """Move the twin's clock by `seconds` now (tests with `speed=0`); returns the twin events fired."""
        with self.lock:
            fired = self.twin.advance(seconds)
            self.bridge.sync()
        return fired

    def sync(self) -> None:
        """Publish changes made to the twin in-process (outside the API) to the store and its watchers."""
        with self.lock:
            self.bridge.sync()

    def _run_clock(self) -> None:
        started_wall, started_sim = time.monotonic(), self.twin.now()
        last_full = started_wall
        while not self._stop_clock.wait(self.tick_s):
            now = time.monotonic()
            with self.lock:
                target = started_sim + (now - started_wall) * self.speed
                fired = self.twin.run_until(max(target, self.twin.now()))
                if fired or now - last_full >= 1.0:  # in-process edits are picked up within a second too
                    self.bridge.sync()
                    last_full = now

    # ---- faults and records -----------------------------------------------------------------------------

    def apply_faults(self, request: FaultRequest) -> None:
        if request.clear:
            self.faults.clear()
        for rule in request.rules:
            self.faults.add(rule)
        with self.lock:
            if request.expire_history:
                self.store.expire_history()
            if request.close_watches:
                self.store.close_watches()

    def mig_manager_faults(self, body: bytes) -> dict[str, Any]:
        """`POST /migopt-twin/mig-manager {"stuck_pending": ["node-1"]}`: the nodes whose operand pods do not
        terminate from now on (replacing the set; `[]` releases them). A run waits in `pending` for them at most
        the twin's `component_wait_s` (5 minutes by default); one released in time carries on, one that timed out
        has ended as its mig-manager version ends it (v0.13-v0.15: `pending` left, operands paused, later labels
        acted on). Answers the set now in force."""
        try:
            request = _MigManagerFaults.model_validate_json(body or b"{}")
        except ValidationError as err:
            raise bad_request(f"mig-manager faults: {err.errors()[0]['msg']}") from None
        with self.lock:
            if request.stuck_pending is not None:
                self.twin.stuck_pending = set(request.stuck_pending)
            return {"stuck_pending": sorted(self.twin.stuck_pending)}

    def state(self) -> dict[str, Any]:
        """What `GET /migopt-twin/state` answers."""
        with self.lock:
            return state_record(self.twin, self.store, self.core.requests, self.faults)

    @property
    def requests(self) -> Counter[tuple[str, str]]:
        """Requests served, by (verb, resource); `resource` as fault rules name it (`pods/eviction`)."""
        with self.lock:
            return Counter(self.core.requests)
