"""Reading YAML (and JSON) that a person or another program wrote, where every failure is one `MigoptError` line.

Speed: JSON text is read by the `json` parser and YAML by libyaml's parser (`yaml.CSafeLoader`), so a
snapshot of thousands of nodes reads in a fraction of a second instead of the pure-Python loader's many
seconds; without libyaml the pure-Python loader (`PurePythonLoader`) is used, with the same limits.

Limits, the same whichever parser reads a file:
- nesting: a collection nested deeper than `MAX_DEPTH` (counting every node, scalars included) is refused, far
  beyond any file migopt reads and far below Python's recursion limit, so whether a document is refused does
  not depend on how deep the caller's stack already is (PyYAML builds collections recursively: deep documents
  and long `<<` merge chains would otherwise raise `RecursionError`, which is no `yaml.YAMLError`);
- aliases: a YAML document whose aliases (and `<<` merges) would expand it beyond `MAX_REPEATED_NODES` plus its
  own size again is refused ("billion laughs": PyYAML shares the aliased objects, but whatever walks the data
  afterwards, pydantic included, pays for every repetition); a self-referencing alias counts as too deep;
- text: bytes that are not UTF-8, characters YAML forbids, lone surrogates.

It lives at the lowest layer that parses YAML: the mig-parted file (`migparted.parse_config`), snapshot files,
scenario files and `migopt run`'s settings file all read through it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from solver.errors import MigoptError

MAX_DEPTH = 100
"""Nodes nested deeper than this are refused (migopt's own files nest fewer than 10 levels)."""

MAX_REPEATED_NODES = 100_000
"""Nodes that aliases may repeat beyond the document's own count of nodes (see the module docstring)."""


class _Refused(yaml.MarkedYAMLError):
    """A document that parses but exceeds a limit; reported like any other YAML error."""


def _children(node: yaml.Node) -> Sequence[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value  # type: ignore[no-any-return]
    return ()


def _too_deep(node: yaml.Node) -> _Refused:
    return _Refused(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=node.start_mark)


def check_graph(root: yaml.Node | None) -> yaml.Node | None:
    """`root`, after checking the composed document's depth and what its aliases expand to (aliases point at the
    anchored node itself, so the walk memoises each node's expanded size and height; iterative: a cycle is just
    a path that gets too deep)."""
    if root is None:
        return None
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes once aliases are expanded, levels from it down)
    written = 0  # nodes as written: each collection once, with its scalars
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, finished = stack.pop()
        children = _children(node)
        if finished:
            size, height = 1, 1
            for child in children:
                known = done.get(id(child))
                if known is None:  # a scalar: not recorded
                    written += 1
                    known = (1, 1)
                size += known[0]
                height = max(height, known[1] + 1)
            done[id(node)] = (size, height)
            written += 1
            continue
        known = done.get(id(node))
        if known is not None:  # pushed twice (an alias) before its first visit ended: walked once
            if depth - 1 + known[1] > MAX_DEPTH:
                raise _too_deep(node)
            continue
        if depth > MAX_DEPTH:
            raise _too_deep(node)
        if depth == MAX_DEPTH and children:
            raise _too_deep(children[0])
        stack.append((node, depth, True))
        for child in children:
            if isinstance(child, yaml.ScalarNode):
                continue
            known = done.get(id(child))
            if known is None:
                stack.append((child, depth + 1, False))
            elif depth + known[1] > MAX_DEPTH:
                raise _too_deep(child)
    expanded = done[id(root)][0] if id(root) in done else 1
    if expanded > 2 * written + MAX_REPEATED_NODES:
        raise _Refused(
            problem=f"its aliases expand it to {expanded} nodes, more than twice its own plus {MAX_REPEATED_NODES}",
            problem_mark=None,
        )
    return root


class PurePythonLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` (no arbitrary objects) within the limits; refuses deep nesting while composing, before
    PyYAML's recursive composer could run out of stack. The fallback where libyaml is missing, and a reference."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            raise _too_deep_event(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        return check_graph(super().get_single_node())


def _too_deep_event(mark: yaml.Mark) -> _Refused:
    return _Refused(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)


if TYPE_CHECKING or yaml.__with_libyaml__:

    class BoundedLoader(yaml.CSafeLoader):
        """libyaml's parser and composer (C), PyYAML's safe constructor (no arbitrary objects), within the limits
        (checked on the composed document, before anything is constructed). Subclass it to refine construction."""

        def get_single_node(self) -> yaml.Node | None:
            return check_graph(super().get_single_node())

else:  # pragma: no cover - PyYAML built without libyaml

    class BoundedLoader(PurePythonLoader):
        """No libyaml here: the pure-Python loader."""


def _problem(err: yaml.YAMLError) -> str:
    """` at line N: what is wrong`, as far as the error says."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    if isinstance(err, yaml.reader.ReaderError):
        problem: object = f"unacceptable character #x{err.character:04x}" if isinstance(err.character, int) else ""
    else:
        problem = getattr(err, "problem", None)
    return where + (f": {' '.join(str(problem).split())}" if problem else "")


_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"
"""libyaml's own refusal, 1,000 levels down."""


def _pure_python_error(text: str) -> yaml.YAMLError | None:
    """The pure-Python composer's error for `text`: it says where `MAX_DEPTH` was passed, where libyaml only
    stops at its own limit, ten times deeper (error paths only: it is slow)."""
    loader = PurePythonLoader(text)
    try:
        loader.get_single_node()
    except yaml.YAMLError as err:
        return err
    finally:
        loader.dispose()
    return None


def load_yaml(
    text: str,
    what: str,
    *,
    loader: type[BoundedLoader] | type[PurePythonLoader] = BoundedLoader,
    language: str = "YAML",
) -> Any:
    """`text` parsed with `loader`; a failure is `MigoptError("<what> is not valid <language> at line N: …")`.

    A `MigoptError` the loader raises itself (say, a refused duplicate key) passes through unchanged.
    """
    try:
        return yaml.load(text, Loader=loader)  # a safe loader: no arbitrary objects
    except yaml.YAMLError as err:
        if getattr(err, "problem", None) == _LIBYAML_TOO_DEEP:
            err = _pure_python_error(text) or err
        raise MigoptError(f"{what} is not valid {language}{_problem(err)}") from None
    except RecursionError:
        raise MigoptError(f"{what} is not valid {language}: nested too deeply") from None
    except UnicodeError:
        raise MigoptError(f"{what} is not valid {language}: not valid Unicode text") from None
    except MigoptError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError) as err:  # a tagged or date-like value PyYAML's
        # constructors trip on (`2001-13-14`, `!!timestamp x`): still only a bad file
        cause = " ".join(str(err).split()) or type(err).__name__
        raise MigoptError(f"{what} is not valid {language}: a value cannot be read ({cause})") from None


# ---- JSON ---------------------------------------------------------------------------------------------------

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NotPlainJson(ValueError):
    """A constant (`NaN`, `Infinity`) JSON allows only as an extension: YAML reads the text instead."""


def _refuse_constant(name: str) -> Any:
    raise _NotPlainJson(name)


_STRUCTURE_ONLY = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTED = re.compile(rb'"[^"]*"')
_EMPTY_COLLECTION = re.compile(rb"\[\]|\{\}")


def _json_height_below(text: str, limit: int) -> bool:
    """Whether valid JSON text nests its collections fewer than `limit` levels deep, read from the text alone.

    Only the brackets outside strings matter: escaped backslashes and then escaped quotes are removed, then every
    character but quotes and brackets, then the strings (adjacent quotes first: two strings with nothing
    structural between them merge harmlessly), then the empty collections, one level a pass. On a snapshot of
    thousands of nodes this takes a third of walking the parsed data (`_json_depth_exceeded`), which runs only
    when this says no."""
    raw = text.encode("utf-8")
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = raw.translate(None, _STRUCTURE_ONLY).replace(b'""', b"")
    if b'"' in structure:
        structure = _QUOTED.sub(b"", structure)
    for _ in range(limit):
        if not structure:
            return True
        structure = _EMPTY_COLLECTION.sub(b"", structure)
    return False


def _json_depth_exceeded(data: Any) -> bool:
    """Whether parsed JSON nests deeper than `MAX_DEPTH`, counted as YAML nodes are (scalars are a level).
    Level by level, collections only: a third of what parsing took (a stack of (value, depth) pairs: twice)."""
    level: list[Any] = [data] if isinstance(data, dict | list) else []
    depth = 1
    while level:
        if depth >= MAX_DEPTH and any(level):
            return True
        below = [item for value in level if isinstance(value, dict) for item in value.values()]
        below += [item for value in level if isinstance(value, list) for item in value]
        level = [item for item in below if isinstance(item, dict | list)]
        depth += 1
    return False


def _deep_json_line(text: str) -> int:
    """The line of the first JSON value nested deeper than `MAX_DEPTH` (only called once it is known to be)."""
    depth, in_string, escaped = 0, False, False
    for offset, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char in "]}":
            depth -= 1
        elif depth >= MAX_DEPTH and not char.isspace() and char not in ",:":
            return text.count("\n", 0, offset) + 1
        elif char in "[{":
            depth += 1
        elif char == '"':
            in_string = True
    return 1


def _load_json(text: str, what: str, language: str) -> tuple[bool, Any]:
    """(True, data) for text that is plain JSON; (False, None) for anything else, which YAML then reads."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
        too_deep = not _json_height_below(text, MAX_DEPTH) and _json_depth_exceeded(data)
    except ValueError:  # not JSON (or a NaN): YAML reads it and, if it is not YAML either, says why
        return False, None
    except RecursionError:  # the C scanner gave up hundreds of levels down: far beyond MAX_DEPTH
        too_deep = True
    if too_deep:
        line = _deep_json_line(text)
        raise MigoptError(f"{what} is not valid {language} at line {line}: nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text):  # rare: check that no escape left half a surrogate pair
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MigoptError(f"{what} is not valid {language}: not valid Unicode text") from None
    return True, data


def load_document(text: str, what: str, *, language: str = "YAML") -> Any:
    """JSON text (it starts with `{` or `[` and parses as JSON) read by the JSON parser, anything else as YAML
    (`load_yaml`); the same limits and the same one-line errors either way."""
    if text.lstrip(" \t\r\n\ufeff")[:1] in ("{", "["):
        is_json, data = _load_json(text.lstrip("\ufeff"), what, language)
        if is_json:
            return data
    return load_yaml(text, what, language=language)


def bounded_validator_may_read(text: str) -> bool:
    """Whether text that may be JSON can go as it is to a JSON validator whose schema nests fewer than `MAX_DEPTH`
    levels (pydantic's `model_validate_json` on a model without free-form fields, which parses and validates in
    one pass): it starts with `{` or `[` and holds no surrogate escape (whose pairing `_load_json` checks on the
    parsed data). Depth needs no check here: text nested deeper than the schema fails its validation. Text the
    validator refuses goes to `load_document`, which says what is wrong (too deep, not JSON, ...)."""
    return text.lstrip(" \t\r\n")[:1] in ("{", "[") and not _SURROGATE_ESCAPE.search(text)


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file's text; unreadable or not UTF-8 is one `MigoptError` line (see `read_yaml_file`)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MigoptError(f"cannot read {what}: {err.strerror or err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MigoptError(f"{what} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None


def read_yaml_file(path: Path, what: str, *, language: str = "YAML") -> Any:
    """A UTF-8 YAML (or JSON) file, parsed; every failure (unreadable, not UTF-8, not YAML, nested too deeply)
    is one `MigoptError` line starting with `what` (say `scenario 'x.yaml'`) or `cannot read <what>`."""
    return load_document(read_text_file(path, what), what, language=language)
