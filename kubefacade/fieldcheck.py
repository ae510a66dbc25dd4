"""Server-side field validation (`?fieldValidation=Strict|Warn|Ignore`), as kube-apiserver does it since 1.27.

A field the kind's schema does not define is an error under `Strict` (400, "strict decoding error: unknown field
\"spec.foo\"") and a `Warning` response header under `Warn`, the server's default; `Ignore` skips the check. kubectl
sends `Strict` when the OpenAPI v3 document lists the parameter (see `kubefacade.openapi`) and relies on the server
instead of validating on its side. Patch bodies are checked the same way, their `$`-directives aside. Without
schemas (no `kubernetes-validate`) nothing is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubefacade.errors import bad_request
from kubefacade.schemas import Schemas

DIRECTIVES = ("Strict", "Warn", "Ignore")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_fields(found: Schemas, schema: Mapping[str, Any] | None, value: Any, path: str = "") -> list[str]:
    """The dotted paths (`spec.containers[0].foo`) of the fields in `value` that `schema` does not define."""
    resolved = found.resolve(dict(schema)) if schema is not None else None
    if resolved is None or resolved.get("x-kubernetes-preserve-unknown-fields"):
        return []
    unknown: list[str] = []
    if isinstance(value, Mapping):
        properties = resolved.get("properties")
        extra = resolved.get("additionalProperties")
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$"):  # strategic-merge directives
                continue
            if isinstance(properties, Mapping) and key in properties:
                unknown += unknown_fields(found, properties[key], item, _join(path, key))
            elif isinstance(extra, Mapping):
                unknown += unknown_fields(found, extra, item, _join(path, key))
            elif isinstance(properties, Mapping):
                unknown.append(_join(path, key))
    elif isinstance(value, list):
        items = resolved.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                unknown += unknown_fields(found, items, item, f"{path}[{index}]")
    return unknown


def check_fields(
    found: Schemas | None, gvk: tuple[str, str, str], obj: Any, directive: str | None
) -> list[str]:  # fmt: skip
    """The warnings to send (`Warn`), nothing (`Ignore`, no schema), or a 400 (`Strict`) for unknown fields."""
    mode = directive or "Warn"
    if mode not in DIRECTIVES:
        raise bad_request(f"fieldValidation must be one of {', '.join(DIRECTIVES)}, got {mode!r}")
    name = found.kind(*gvk) if found is not None else None
    if found is None or name is None or mode == "Ignore":
        return []
    fields = unknown_fields(found, found.v3[name], obj)
    messages = [f'unknown field "{field}"' for field in fields]
    if messages and mode == "Strict":
        group, version, kind = gvk
        api_version = f"{group}/{version}" if group else version
        raise bad_request(
            f'{kind} in version "{api_version}" cannot be handled as a {kind}: strict decoding error: '
            + ", ".join(messages)
        )
    return messages
