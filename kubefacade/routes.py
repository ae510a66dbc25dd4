"""URL paths to (group, version, namespace, resource, name, subresource), as the Kubernetes API lays them out."""

from __future__ import annotations

from dataclasses import dataclass

from kubefacade.errors import ApiError
from kubefacade.resources import Resource, find_resource


@dataclass(frozen=True)
class Target:
    resource: Resource
    namespace: str  # "" for cluster-scoped requests and for lists across namespaces
    name: str  # "" for collections

    @property
    def label(self) -> str:
        """The resource as request counters and fault rules name it: `pods`, `pods/eviction`, `leases`."""
        return self.resource.name


def page_not_found(path: str) -> ApiError:
    return ApiError(404, "the server could not find the requested resource", details={"causes": [{"message": path}]})


def parse_target(path: str) -> Target | None:
    """The resource a path names; None when the path is not a resource path at all."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        raise page_not_found(path)
    plural, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
    resource = find_resource(group, version, f"{plural}/{sub}" if sub else plural)
    if resource is None:
        raise page_not_found(path)
    if namespace and not resource.namespaced:
        raise page_not_found(path)
    if resource.namespaced and name and not namespace:
        raise page_not_found(path)
    return Target(resource=resource, namespace=namespace, name=name)
