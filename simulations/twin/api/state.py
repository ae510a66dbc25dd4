"""The JSON record `GET /migopt-twin/state` returns, for assertions from another process.

{"time": 12.5, "resourceVersion": 840,
 "evictions": [{"time", "pod", "outcome": "evicted|blocked|gone"}],
 "label_log": [{"time", "node", "key", "old", "new"}],
 "mig_runs": [{"node", "config", "started_at", "finished_at", "outcome", "went_pending", "message"}],
 "cordoned": ["node-1"],
 "pods": [{"name": "ns/name", "origin", "phase", "node", "terminating", "deleted"}],
 "events": [{"kind", "name", "reason", "message"}], "event_reasons": ["MigReconfigure", ...],
 "requests": {"patch": {"nodes": 3}, "list": {"pods": 10}},
 "faults_fired": [{"verb", "resource", "name", "code"}]}
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kubefacade.faults import Faults
from kubefacade.store import ObjectStore
from simulations.twin.cluster import Twin


def _events(store: ObjectStore) -> list[dict[str, Any]]:
    found = []
    for key, subject, text in (("events", "involvedObject", "message"), ("events.events.k8s.io", "regarding", "note")):
        for stored in store.items(key):
            obj = stored.obj
            about = obj.get(subject) or {}
            found.append(
                {
                    "rv": stored.rv,
                    "kind": about.get("kind", ""),
                    "name": about.get("name", ""),
                    "reason": obj.get("reason", ""),
                    "message": obj.get(text, ""),
                }
            )
    found.sort(key=lambda e: e.pop("rv"))
    return found


def state_record(twin: Twin, store: ObjectStore, requests: Counter[tuple[str, str]], faults: Faults) -> dict[str, Any]:
    by_verb: dict[str, dict[str, int]] = {}
    for (verb, resource), count in sorted(requests.items()):
        by_verb.setdefault(verb, {})[resource] = count
    events = _events(store)
    return {
        "time": twin.now(),
        "resourceVersion": store.rv,
        "evictions": [e.model_dump(mode="json") for e in twin.evictions],
        "label_log": [c.model_dump(mode="json") for c in twin.label_log],
        "mig_runs": [r.model_dump(mode="json") for r in twin.mig_runs],
        "cordoned": sorted(n.name for n in twin.nodes.values() if n.unschedulable),
        "pods": [
            {
                "name": p.name,
                "origin": p.origin,
                "phase": str(p.phase),
                "node": p.node,
                "terminating": p.terminating,
                "deleted": p.deleted_at is not None,
            }
            for p in twin.pods.values()
        ],
        "events": events,
        "event_reasons": [e["reason"] for e in events],
        "requests": by_verb,
        "faults_fired": list(faults.fired),
    }
