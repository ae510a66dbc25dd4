"""Reading and writing snapshot files (YAML or JSON) for `migopt plan`; every failure is one `MigoptError` line."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from migopt.render import json_text, yaml_text
from nvidia_protocol.safe_yaml import bounded_validator_may_read, load_document, read_text_file, read_yaml_file
from solver.collector import collector_paused
from solver.errors import MigoptError, first_problem
from solver.scope import PlanScope
from solver.snapshot import ClusterSnapshot, checked_against_catalog, parse_snapshot


@collector_paused
def load_snapshot(path: Path) -> ClusterSnapshot:
    """A snapshot file, validated (unreadable, not UTF-8, not YAML, nested too deeply: one line each). JSON goes
    to pydantic as text, parsed and validated in one pass (a fifth faster than parsing first; the snapshot's
    schema nests a few levels, so nothing deeper passes); anything else, or JSON pydantic refuses, is read by the
    JSON parser or libyaml's (`load_document`) and then validated, which names what is wrong. The cyclic
    collector waits: parsing makes millions of objects, none of them garbage."""
    what = f"snapshot {str(path)!r}"
    text = read_text_file(path, what)
    if bounded_validator_may_read(text):
        try:
            snapshot = ClusterSnapshot.model_validate_json(text)
        except ValidationError:
            pass  # not JSON, or not a valid snapshot: the reading below says which, on one line
        else:
            return checked_against_catalog(snapshot)
    return parse_snapshot(load_document(text, what, language="YAML/JSON"))


def load_scope(path: Path) -> PlanScope:
    """A scope file (`PlanScope`: managedNodes, models), validated; any problem is one line naming the field."""
    what = f"scope {str(path)!r}"
    data = read_yaml_file(path, what)
    try:
        return PlanScope.model_validate(data if data is not None else {})
    except ValidationError as err:
        where, message = first_problem(err, "scope")
        raise MigoptError(f"{what}: {where}: {message}") from None


def snapshot_text(snapshot: ClusterSnapshot, as_json: bool) -> str:
    """YAML or JSON that `load_snapshot` reads back to the same snapshot."""
    data = snapshot.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return json_text(data) if as_json else yaml_text(data)


def write_snapshot(snapshot: ClusterSnapshot, path: Path, as_json: bool | None = None) -> None:
    """`snapshot_text` in a file: JSON when asked, else by the path (`.json`), else YAML."""
    text = snapshot_text(snapshot, path.suffix == ".json" if as_json is None else as_json)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise MigoptError(f"cannot write snapshot {str(path)!r}: {err.strerror}") from None
