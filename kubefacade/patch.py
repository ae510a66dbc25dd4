"""PATCH bodies applied to a stored object: JSON merge patch (RFC 7386), strategic merge patch (lists merged as the
kind's schema says, see `kubefacade.strategic`), and JSON patch (RFC 6902). Server-side apply
(`application/apply-patch+yaml`) is not served: 415."""

from __future__ import annotations

import copy
import json
from typing import Any

from kubefacade.errors import ApiError, bad_request
from kubefacade.strategic import PatchSchema, strategic_merge

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, `null` removes, anything else replaces; `$`-directives are dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: dict[str, Any], ops: Any) -> dict[str, Any]:
    if not isinstance(ops, list):
        raise bad_request("a JSON patch is a list of operations")
    result = copy.deepcopy(doc)
    for op in ops:
        try:
            parts = _pointer(op["path"])
            parent = _parent(result, parts)
            last = parts[-1]
            kind = op["op"]
            if kind in ("add", "replace"):
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(index, op["value"])
                    else:
                        parent[index] = op["value"]
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = op["value"]
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op["value"]:
                    raise ApiError(
                        422,
                        f"the server rejected our request due to an error in our request: test failed at {op['path']}",
                    )
            else:
                raise bad_request(f"unsupported JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise ApiError(422, f"the server rejected our request due to an error in our request: {err!r}") from None
    return result


def apply_patch(
    doc: dict[str, Any], content_type: str, body: bytes, schema: PatchSchema | None = None
) -> dict[str, Any]:  # fmt: skip
    """`schema`: the kind's, for a strategic merge patch's lists (None: lists are replaced, as by a merge patch)."""
    kind = content_type.split(";")[0].strip()
    try:
        patch = json.loads(body or b"null")
    except (json.JSONDecodeError, RecursionError):  # not JSON, or nested past the parser's recursion limit
        raise bad_request("the patch is not valid JSON") from None
    if kind in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise bad_request("a merge patch is a JSON object")
        result = strategic_merge(doc, patch, schema) if kind == STRATEGIC else merge(doc, patch)
        assert isinstance(result, dict)
        return result
    if kind == JSON_PATCH:
        return json_patch(doc, patch)
    raise ApiError(
        415,
        "the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC}",
    )
