"""The resources the facade serves and the discovery documents that describe them to clients.

kubectl and the `kubernetes` client find resources through `/api`, `/api/v1`, `/apis` and
`/apis/<group>/<version>`; each list here is what those answer, so a resource exists exactly when it is listed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-migopt-twin",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.22.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class Resource(BaseModel):
    """One served resource (or subresource, when `name` contains a slash)."""

    model_config = ConfigDict(frozen=True)

    group: str
    version: str
    name: str
    singular: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    short_names: tuple[str, ...] = ()
    kind_group: str | None = None
    """A subresource whose kind lives in another group version (`pods/eviction`: policy/v1 Eviction) says so in
    discovery (`group`, `version`); `kubectl drain` evicts only when it finds them, and deletes otherwise."""
    kind_version: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvk(self) -> tuple[str, str, str]:
        """The group, version and kind of the objects it takes and returns."""
        if self.kind_group is not None and self.kind_version is not None:
            return self.kind_group, self.kind_version, self.kind
        return self.group, self.version, self.kind

    @property
    def key(self) -> str:
        """How the store and the request counters name it: `pods`, `leases.coordination.k8s.io`."""
        return f"{self.name}.{self.group}" if self.group else self.name

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "singularName": "" if "/" in self.name else self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.kind_group is not None and self.kind_version is not None:
            entry["group"], entry["version"] = self.kind_group, self.kind_version
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        return entry


RESOURCES = (
    Resource(group="", version="v1", name="nodes", singular="node", kind="Node", namespaced=False, short_names=("no",)),
    Resource(group="", version="v1", name="pods", singular="pod", kind="Pod", namespaced=True, short_names=("po",)),
    Resource(
        group="",
        version="v1",
        name="pods/eviction",
        singular="",
        kind="Eviction",
        namespaced=True,
        verbs=("create",),
        kind_group="policy",
        kind_version="v1",
    ),
    Resource(
        group="",
        version="v1",
        name="configmaps",
        singular="configmap",
        kind="ConfigMap",
        namespaced=True,
        short_names=("cm",),
    ),
    Resource(
        group="", version="v1", name="events", singular="event", kind="Event", namespaced=True, short_names=("ev",)
    ),
    Resource(
        group="",
        version="v1",
        name="namespaces",
        singular="namespace",
        kind="Namespace",
        namespaced=False,
        short_names=("ns",),
    ),
    Resource(
        group="policy",
        version="v1",
        name="poddisruptionbudgets",
        singular="poddisruptionbudget",
        kind="PodDisruptionBudget",
        namespaced=True,
        short_names=("pdb",),
    ),
    Resource(group="coordination.k8s.io", version="v1", name="leases", singular="lease", kind="Lease", namespaced=True),
    Resource(
        group="resource.k8s.io",
        version="v1",
        name="resourceclaims",
        singular="resourceclaim",
        kind="ResourceClaim",
        namespaced=True,
    ),
    Resource(
        group="resource.k8s.io",
        version="v1",
        name="resourceslices",
        singular="resourceslice",
        kind="ResourceSlice",
        namespaced=False,
    ),
    Resource(
        group="events.k8s.io",
        version="v1",
        name="events",
        singular="event",
        kind="Event",
        namespaced=True,
        short_names=("ev",),
    ),
)
_BY_PATH = {(r.group, r.version, r.name): r for r in RESOURCES}
GROUPS = tuple(dict.fromkeys((r.group, r.version) for r in RESOURCES if r.group))


def find_resource(group: str, version: str, name: str) -> Resource | None:
    return _BY_PATH.get((group, version, name))


def resource_by_key(key: str) -> Resource:
    return next(r for r in RESOURCES if r.key == key and "/" not in r.name)


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group_list() -> dict[str, Any]:
    groups = []
    for group, version in GROUPS:
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """The APIResourceList of a group version, or None when the facade serves no such group version."""
    entries = [r.discovery() for r in RESOURCES if r.group == group and r.version == version]
    if not entries:
        return None
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}
