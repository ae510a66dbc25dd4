"""The Kubernetes object schemas the facade describes itself with, read from the `kubernetes-validate` package.

That package ships each Kubernetes release's definitions as JSON Schema (`<release>-local/_definitions.json`:
`$defs`, nullable types as `["string", "null"]`, `#/$defs/...` references). `load_schemas` picks the release that
matches the facade's claimed server version (else the newest shipped) and converts the definitions the served kinds
reach into the two OpenAPI dialects kube-apiserver publishes: v2 (`#/definitions/...`) and v3
(`#/components/schemas/...`, a reference with siblings wrapped in `allOf`, as kube-apiserver writes it). Nothing
here imports the package's Python code: only its data files are read. Without the package, `load_schemas` answers
None and the facade serves no OpenAPI (clients then need `--validate=false`, as before).

A served kind the claimed release does not define yet (resource.k8s.io/v1, GA in Kubernetes 1.34, served beside a
claimed 1.32) is described by the nearest newer release that defines it (`with_newer_kinds`): its own definitions
are added, the ones both releases share (ObjectMeta, NodeSelector) stay the claimed release's.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_PACKAGE = "kubernetes_validate"
_RELEASE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)-local$")
_JSON_REF = "#/$defs/"
V2_REF = "#/definitions/"
V3_REF = "#/components/schemas/"
Schema = dict[str, Any]


def _schema_root() -> Path | None:
    spec = importlib.util.find_spec(SCHEMA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "kubernetes-json-schema"


def pick_release(available: Iterable[str], major: int, minor: int) -> str | None:
    """The `v<major>.<minor>.<patch>-local` folder for the claimed release, else the newest one shipped."""
    releases = sorted(
        ((int(m[1]), int(m[2]), int(m[3])), name) for name in available if (m := _RELEASE.match(name))
    )  # fmt: skip
    if not releases:
        return None
    exact = [name for (ma, mi, _), name in releases if (ma, mi) == (major, minor)]
    return exact[-1] if exact else releases[-1][1]


def _plain_type(value: Any) -> Any:
    """`["string", "null"]` → `"string"`: OpenAPI says nullable another way, and Kubernetes' own documents don't."""
    if isinstance(value, list):
        kinds = [v for v in value if v != "null"]
        return kinds[0] if len(kinds) == 1 else kinds
    return value


def _one_of(options: list[Any], v3: bool) -> Schema:
    """IntOrString and Quantity: a string or a number. v2 says `string` (with `int-or-string`); v3 lists both."""
    kinds = {_plain_type(o.get("type")) for o in options if isinstance(o, dict)}
    if v3:
        found: Schema = {"anyOf": [{"type": k} for k in sorted(kinds)]}
        if kinds == {"integer", "string"}:
            found["x-kubernetes-int-or-string"] = True
        return found
    return {"type": "string", "format": "int-or-string"} if "integer" in kinds else {"type": "string"}


def convert(schema: Any, v3: bool) -> Any:
    """One JSON Schema definition as OpenAPI v2 or v3 (references renamed, nullable types made plain)."""
    if not isinstance(schema, dict):
        return schema
    prefix = V3_REF if v3 else V2_REF
    out: Schema = {}
    for key, value in schema.items():
        if key == "$ref":
            out[key] = prefix + str(value).removeprefix(_JSON_REF)
        elif key == "type":
            out[key] = _plain_type(value)
        elif key == "oneOf":
            out.update(_one_of(value, v3))
        elif key == "properties":
            out[key] = {name: convert(sub, v3) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = convert(value, v3)
        elif key == "enum":
            out[key] = [v for v in value if v is not None]
        else:
            out[key] = value
    if v3 and "$ref" in out and len(out) > 1:
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def _refs(schema: Any) -> Iterable[str]:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(_JSON_REF):
            yield ref.removeprefix(_JSON_REF)
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def reachable(definitions: Mapping[str, Schema], roots: Iterable[str]) -> list[str]:
    """Every definition the roots refer to, directly or not (the roots included), in a stable order."""
    seen: set[str] = set()
    todo = [r for r in roots if r in definitions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(r for r in _refs(definitions[name]) if r in definitions and r not in seen)
    return sorted(seen)


@dataclass(frozen=True)
class Schemas:
    """The served kinds' definitions in both dialects, and which definition is which group/version/kind."""

    release: str
    v2: dict[str, Schema]
    v3: dict[str, Schema]
    by_kind: dict[tuple[str, str, str], str]

    def kind(self, group: str, version: str, kind: str) -> str | None:
        return self.by_kind.get((group, version, kind))

    def v3_named(self, ref_or_name: str) -> Schema | None:
        return self.v3.get(ref_or_name.removeprefix(V3_REF))

    def resolve(self, schema: Schema | None) -> Schema | None:
        """Follow a v3 reference (bare or in a one-element `allOf`) to the definition it names."""
        seen = 0
        while schema is not None and seen < 64:
            seen += 1
            inner = schema.get("allOf")
            if isinstance(inner, list) and len(inner) == 1 and isinstance(inner[0], dict):
                schema = {**schema, **inner[0]}
                schema.pop("allOf", None)
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                return schema
            schema = self.v3_named(ref)
        return schema


def gvk_of(schema: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    found = schema.get("x-kubernetes-group-version-kind") or []
    return [(str(g.get("group", "")), str(g.get("version", "")), str(g.get("kind", ""))) for g in found]


def build_schemas(definitions: Mapping[str, Schema], release: str, kinds: Iterable[tuple[str, str, str]]) -> Schemas:
    """The definitions the given group/version/kinds reach (with their lists, Status and DeleteOptions)."""
    by_kind = {gvk: name for name, schema in definitions.items() for gvk in gvk_of(schema)}
    wanted = set(kinds)
    roots = [by_kind[k] for k in sorted(wanted) if k in by_kind]
    roots += [by_kind[(g, v, f"{k}List")] for g, v, k in sorted(wanted) if (g, v, f"{k}List") in by_kind]
    roots += [n for n in definitions if n.endswith((".meta.v1.Status", ".meta.v1.DeleteOptions", ".meta.v1.Patch"))]
    names = reachable(definitions, roots)
    return Schemas(
        release=release,
        v2={n: convert(definitions[n], v3=False) for n in names},
        v3={n: convert(definitions[n], v3=True) for n in names},
        by_kind={gvk: n for gvk, n in by_kind.items() if n in names},
    )


def _read_definitions(folder: Path) -> dict[str, Schema]:
    with (folder / "_definitions.json").open(encoding="utf-8") as handle:
        definitions: dict[str, Schema] = json.load(handle)["$defs"]
    return definitions


def _release_key(name: str) -> tuple[int, int, int]:
    found = _RELEASE.match(name)
    return (int(found[1]), int(found[2]), int(found[3])) if found else (-1, -1, -1)


def with_newer_kinds(
    definitions: Mapping[str, Schema], newer: Iterable[Mapping[str, Schema]], kinds: Iterable[tuple[str, str, str]]
) -> dict[str, Schema]:
    """`definitions` plus, for each kind they lack, what the first of the `newer` releases (nearest first) that
    defines it reaches from it and its list; a definition `definitions` already has is kept as it is."""
    merged = dict(definitions)
    known = {gvk for schema in merged.values() for gvk in gvk_of(schema)}
    missing = set(kinds) - known
    for release in newer:
        if not missing:
            break
        by_kind = {gvk: name for name, schema in release.items() for gvk in gvk_of(schema)}
        found = sorted(missing & by_kind.keys())
        lists = [(g, v, f"{k}List") for g, v, k in found]
        roots = [by_kind[k] for k in found] + [by_kind[k] for k in lists if k in by_kind]
        for name in reachable(release, roots):
            merged.setdefault(name, release[name])
        missing -= set(found)
    return merged


@functools.cache
def load_schemas(major: int, minor: int, kinds: tuple[tuple[str, str, str], ...]) -> Schemas | None:
    """The served kinds' schemas, or None (logged once) when `kubernetes-validate` is not installed."""
    root = _schema_root()
    available = [p.name for p in root.iterdir()] if root and root.is_dir() else []
    release = pick_release(available, major, minor)
    if root is None or release is None:
        log.warning(
            "%s is not installed: the facade serves no OpenAPI (kubectl needs --validate=false)", SCHEMA_PACKAGE
        )
        return None
    definitions = _read_definitions(root / release)
    newer = sorted((n for n in available if _release_key(n) > _release_key(release) and _RELEASE.match(n)),
                   key=_release_key)  # fmt: skip
    known = {gvk for schema in definitions.values() for gvk in gvk_of(schema)}
    if set(kinds) - known:
        definitions = with_newer_kinds(definitions, (_read_definitions(root / n) for n in newer), kinds)
    return build_schemas(definitions, release, kinds)


@dataclass(frozen=True)
class FieldSchema:
    """One field's schema as a strategic merge patch sees it: its list strategy and merge key, and its parts."""

    schemas: Schemas
    schema: Schema | None

    def _resolved(self) -> Schema:
        return (self.schemas.resolve(dict(self.schema)) if self.schema is not None else None) or {}

    def field(self, key: str) -> FieldSchema:
        resolved = self._resolved()
        properties = resolved.get("properties")
        if isinstance(properties, dict) and key in properties:
            return FieldSchema(self.schemas, properties[key])
        extra = resolved.get("additionalProperties")
        return FieldSchema(self.schemas, extra if isinstance(extra, dict) else None)

    def items(self) -> FieldSchema:
        items = self._resolved().get("items")
        return FieldSchema(self.schemas, items if isinstance(items, dict) else None)

    @property
    def strategies(self) -> tuple[str, ...]:
        value = (self.schema or {}).get("x-kubernetes-patch-strategy") or ""
        return tuple(s for s in str(value).split(",") if s)

    @property
    def merge_key(self) -> str | None:
        value = (self.schema or {}).get("x-kubernetes-patch-merge-key")
        return str(value) if value else None


def kind_schema(found: Schemas | None, gvk: tuple[str, str, str]) -> FieldSchema | None:
    name = found.kind(*gvk) if found is not None else None
    return FieldSchema(found, found.v3[name]) if found is not None and name is not None else None
