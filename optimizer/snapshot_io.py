"""Reading a cluster snapshot file (YAML or JSON) for `migopt plan`; every failure is one `MigoptError` line."""

from __future__ import annotations

from pathlib import Path

import yaml

from solver.errors import MigoptError
from solver.snapshot import ClusterSnapshot, parse_snapshot


def load_snapshot(path: Path) -> ClusterSnapshot:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise MigoptError(f"cannot read snapshot {str(path)!r}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise MigoptError(f"snapshot {str(path)!r} is not valid YAML/JSON{where}") from None
    return parse_snapshot(data)
