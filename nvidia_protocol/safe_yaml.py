"""Reading YAML that a person or another program wrote, where every failure is one `MigoptError` line.

PyYAML builds nested collections recursively, so a document nested a few thousand levels deep raises
`RecursionError` (as does a long chain of `<<` merges), and bytes that are not UTF-8 raise `UnicodeDecodeError`;
neither is a `yaml.YAMLError`. Here both become the caller's one-line error. Nesting is also bounded explicitly
(`MAX_DEPTH`, far beyond any file migopt reads and far below Python's recursion limit), so whether a document is
refused does not depend on how deep the caller's stack already is.

It lives at the lowest layer that parses YAML: the mig-parted file (`migparted.parse_config`), snapshot files,
scenario files and `migopt run`'s settings file all read through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from solver.errors import MigoptError

MAX_DEPTH = 100
"""Collections nested deeper than this are refused (migopt's own files nest fewer than 10 levels)."""


class BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` (no arbitrary objects) that refuses collections nested deeper than `MAX_DEPTH`."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _problem(err: yaml.YAMLError) -> str:
    """` at line N: what is wrong`, as far as the error says."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    if isinstance(err, yaml.reader.ReaderError):
        problem: object = f"unacceptable character #x{err.character:04x}" if isinstance(err.character, int) else ""
    else:
        problem = getattr(err, "problem", None)
    return where + (f": {' '.join(str(problem).split())}" if problem else "")


def load_yaml(text: str, what: str, *, loader: type[BoundedLoader] = BoundedLoader, language: str = "YAML") -> Any:
    """`text` parsed with `loader`; a failure is `MigoptError("<what> is not valid <language> at line N: …")`.

    A `MigoptError` the loader raises itself (say, a refused duplicate key) passes through unchanged.
    """
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise MigoptError(f"{what} is not valid {language}{_problem(err)}") from None
    except RecursionError:
        raise MigoptError(f"{what} is not valid {language}: nested too deeply") from None
    except UnicodeError:
        raise MigoptError(f"{what} is not valid {language}: not valid Unicode text") from None


def read_yaml_file(path: Path, what: str, *, language: str = "YAML") -> Any:
    """A UTF-8 YAML file, parsed; every failure (unreadable, not UTF-8, not YAML, nested too deeply) is one
    `MigoptError` line starting with `what` (say `scenario 'x.yaml'`) or `cannot read <what>`."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MigoptError(f"cannot read {what}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MigoptError(f"{what} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    return load_yaml(text, what, language=language)
