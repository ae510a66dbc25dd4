"""Strategic merge patch (`application/strategic-merge-patch+json`), as kube-apiserver applies it to built-in kinds.

It is a JSON merge patch whose lists follow the kind's schema: a list marked `x-kubernetes-patch-strategy: merge`
merges element by element (by its `x-kubernetes-patch-merge-key`, or as a set of primitives) instead of being
replaced. kubectl's client-side apply and `kubectl edit` send these, with the directives served here: `$patch`
(`replace`, `delete`, `merge`) on a map or a list element, `$retainKeys`, `$setElementOrder/<list>` and
`$deleteFromPrimitiveList/<list>`. Without a schema (no `kubernetes-validate`) every list is replaced, which
is the JSON merge patch.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from kubefacade.errors import ApiError

SET_ORDER = "$setElementOrder/"
DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


class PatchSchema(Protocol):
    """What the patch needs to know of a field (`kubefacade.schemas.FieldSchema` is one)."""

    def field(self, key: str) -> PatchSchema: ...

    def items(self) -> PatchSchema: ...

    @property
    def strategies(self) -> tuple[str, ...]: ...

    @property
    def merge_key(self) -> str | None: ...


def _invalid(message: str) -> ApiError:
    return ApiError(422, f"the server rejected our request due to an error in our request: {message}")


def strategic_merge(original: Any, patch: Any, schema: PatchSchema | None) -> Any:
    """The patched value; `original` is not modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return _strip(body)
    if directive not in (None, "merge"):
        raise _invalid(f"unknown patch directive {directive!r} in a map")
    result = dict(original) if isinstance(original, dict) else {}
    retain = body.pop("$retainKeys", None)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    orders = {k.removeprefix(SET_ORDER): v for k, v in body.items() if k.startswith(SET_ORDER)}
    removals = {k.removeprefix(DELETE_PRIMITIVE): v for k, v in body.items() if k.startswith(DELETE_PRIMITIVE)}
    for key, value in body.items():
        if key.startswith("$"):
            continue
        child = schema.field(key) if schema is not None else None
        if value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, child)
        else:
            result[key] = strategic_merge(result.get(key), value, child)
    for key, values in removals.items():
        if isinstance(result.get(key), list) and isinstance(values, list):
            result[key] = [v for v in result[key] if v not in values]
    for key, order in orders.items():
        if isinstance(result.get(key), list) and isinstance(order, list):
            child = schema.field(key) if schema is not None else None
            result[key] = _ordered(result[key], order, child.merge_key if child is not None else None)
    return result


def _strip(value: Any) -> Any:
    """A replacement value without directives."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _merge_list(original: Any, patch: list[Any], schema: PatchSchema | None) -> list[Any]:
    if schema is None or "merge" not in schema.strategies:
        return [_strip(v) for v in patch if not (isinstance(v, dict) and v.get("$patch"))]
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [_strip(v) for v in patch if not (isinstance(v, dict) and "$patch" in v)]
    current = list(original) if isinstance(original, list) else []
    key = schema.merge_key
    if key is None:  # a set of primitives: union, in order
        return current + [v for v in patch if v not in current]
    items = schema.items()
    for element in patch:
        if not isinstance(element, dict) or key not in element:
            raise _invalid(f"a list element without its merge key {key!r}")
        at = next((i for i, v in enumerate(current) if isinstance(v, dict) and v.get(key) == element[key]), None)
        if element.get("$patch") == "delete":
            current = [v for v in current if not (isinstance(v, dict) and v.get(key) == element[key])]
        elif at is None:
            current.append(_strip(element))
        else:
            current[at] = strategic_merge(current[at], element, items)
    return current


def _ordered(values: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """`$setElementOrder`: the listed elements in that order, any others after them as they were."""

    def identity(value: Any) -> Any:
        return value.get(key) if key is not None and isinstance(value, dict) else value

    wanted = [identity(v) for v in order]
    rank = {repr(w): i for i, w in enumerate(wanted)}
    return sorted(values, key=lambda v: rank.get(repr(identity(v)), len(rank)))
