"""Reading and writing snapshot files (YAML or JSON) for `migopt plan`; every failure is one `MigoptError` line."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nvidia_protocol.safe_yaml import read_yaml_file
from solver.errors import MigoptError
from solver.snapshot import ClusterSnapshot, parse_snapshot


def load_snapshot(path: Path) -> ClusterSnapshot:
    """A snapshot file, validated (unreadable, not UTF-8, not YAML, nested too deeply: one line each)."""
    data = read_yaml_file(path, f"snapshot {str(path)!r}", language="YAML/JSON")  # JSON is YAML too
    return parse_snapshot(data)


def write_snapshot(snapshot: ClusterSnapshot, path: Path) -> None:
    """YAML (JSON for a `.json` path) that `load_snapshot` reads back to the same snapshot."""
    data = snapshot.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise MigoptError(f"cannot write snapshot {str(path)!r}: {err.strerror}") from None
