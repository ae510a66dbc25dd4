"""Reading and writing snapshot files (YAML or JSON) for `migopt plan`; every failure is one `MigoptError` line."""

from __future__ import annotations

import json
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


def write_snapshot(snapshot: ClusterSnapshot, path: Path) -> None:
    """YAML (JSON for a `.json` path) that `load_snapshot` reads back to the same snapshot."""
    data = snapshot.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise MigoptError(f"cannot write snapshot {str(path)!r}: {err.strerror}") from None
