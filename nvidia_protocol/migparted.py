"""The mig-parted configuration file migopt owns: one key (`config.yaml`) of one ConfigMap.

The GPU Operator's `migManager.config.name` points mig-manager at this ConfigMap, and each node's
`nvidia.com/mig.config` label names one entry of it (spec §1.1, §1.6). migopt writes one entry per distinct
node layout, named after a hash of its content: relabelling a node to a layout that already exists is then
idempotent, and a changed layout always gets a new label value. That matters because mig-manager ignores a
relabel to the value it already holds (spec §1.2) and a ConfigMap edit alone never triggers a run (spec §1.7).

Parsing enforces mig-parted's own schema rules (spec §2.1) with its wording, so a file migopt accepts is one
mig-manager accepts. Every entry migopt writes names every GPU of its node by index, because partial
coverage never asserts (spec §2.2), and never carries a zero count, which never asserts either (spec §2.5).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from nvidia_protocol.safe_yaml import BoundedLoader, load_yaml
from solver.catalog import GpuModel
from solver.errors import MigoptError
from solver.geometry import explain_map, find_layout, normalise_map
from solver.profiles import parse_profile

VERSION: Literal["v1"] = "v1"
NAME_PREFIX = "migopt-"
ALL_DISABLED = "all-disabled"
ALL_ENABLED = "all-enabled"
STANDARD_NAMES = frozenset({ALL_DISABLED, ALL_ENABLED})

_ENTRY_KEYS = {"devices": "devices", "mig_enabled": "mig-enabled", "mig_devices": "mig-devices"}
_ENTRY_KEYS |= {"device_filter": "device-filter"}
_ALLOWED_ENTRY_KEYS = frozenset(_ENTRY_KEYS.values())
_DEVICE_ID = re.compile(r"^0x[0-9A-Fa-f]{8}(?::0x[0-9A-Fa-f]{8})?$")
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
_INT64_MAX = 2**63 - 1  # mig-parted decodes into Go ints: anything larger fails to unmarshal
_GO_YAML_NON_STRING = re.compile(
    r"^(?:[yYnN]|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|true|True|TRUE|false|False|FALSE|~|null|Null|NULL"
    r"|[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?0x[0-9a-fA-F_]+|[-+]?0o?[0-7_]+|[-+]?0b[01_]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
"""Plain scalars go-yaml v2 (mig-parted's reader) resolves to a bool, null, int or float: written unquoted, a
config name such as `y` or `1e3` would come back as `true` or `1000` (PyYAML's YAML 1.1 rules keep some of
these strings, so the renderer must quote them itself)."""


def _text(value: object) -> str:
    """A YAML scalar as JSON would spell it (mig-parted converts YAML to JSON), kept on one line."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):  # keys JSON cannot spell (YAML dates, say)
            text = str(value)
    return text.replace("\n", "\\n")


def _from_file(info: ValidationInfo) -> bool:
    """Whether the data came from a file (only mig-parted's key names count) rather than Python code."""
    return isinstance(info.context, dict) and bool(info.context.get("file"))


def _check_devices(value: object) -> None:
    if isinstance(value, str):
        if value != "all":
            raise ValueError(f"invalid string input for 'devices': {_text(value)}")
        return
    if not isinstance(value, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise ValueError(f"invalid input for 'devices': {_text(value)} (expected 'all' or a list of integers)")
    if any(abs(i) > _INT64_MAX for i in value):
        raise ValueError(f"invalid input for 'devices': {_text(value)} (a device index beyond a 64-bit integer)")


def _check_device_filter(value: object) -> None:
    if value == "":  # mig-parted reads an empty filter as "no filter"
        return
    filters = [value] if isinstance(value, str) else value
    if not isinstance(filters, list) or any(not isinstance(f, str) for f in filters):
        raise ValueError(f"invalid input for 'device-filter': {_text(value)} (expected a string or a list of strings)")
    for item in filters:
        if not _DEVICE_ID.match(item):
            raise ValueError(
                f"invalid device-filter {_text(item)}: expected 0x<device><vendor> (e.g. 0x20B010DE), "
                "optionally followed by :0x<subsystem device><subsystem vendor>"
            )


def _check_mig_devices(value: object) -> None:
    where = "error validating values in 'mig-devices' field"
    if not isinstance(value, dict):
        raise ValueError(f"invalid input for 'mig-devices': {_text(value)} (expected a map of profile to count)")
    for name, count in value.items():
        try:
            if not isinstance(name, str) or name != name.strip():
                raise MigoptError(f"malformed MIG profile {_text(name)!r}")
            parsed = parse_profile(name)
            if max(parsed.gpu_slices, parsed.compute_slices, parsed.memory_gb) > _INT64_MAX:
                raise MigoptError("a number beyond a 64-bit integer")
        except MigoptError as err:
            raise ValueError(f"{where}: invalid format for '{_text(name)}': {err}") from None
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _INT64_MAX:
            raise ValueError(f"{where}: invalid count for '{name}': {_text(count)} (expected an integer >= 0)")
    if value and not any(value.values()):
        raise ValueError(f"{where}: all counts for all MigProfiles are 0")


class MigConfigEntry(BaseModel):
    """One entry of a named mig-config (mig-parted's `MigConfigSpec`); construction enforces spec §2.1."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, strict=True)

    devices: Literal["all"] | list[int]
    mig_enabled: bool = Field(alias="mig-enabled")
    mig_devices: dict[str, int] | None = Field(default=None, alias="mig-devices")
    device_filter: str | list[str] | None = Field(default=None, alias="device-filter")

    @model_validator(mode="before")
    @classmethod
    def _mig_parted_rules(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, MigConfigEntry):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"invalid entry: {_text(data)} (expected a map)")
        raw = data if _from_file(info) else {_ENTRY_KEYS.get(k, k): v for k, v in data.items()}
        for required in ("devices", "mig-enabled"):
            if required not in raw:
                raise ValueError(f"missing required field: {required}")
        for key, value in raw.items():
            if key not in _ALLOWED_ENTRY_KEYS:
                raise ValueError(f"unexpected field: {_text(key)}")
            if key == "devices":
                _check_devices(value)
            elif key == "mig-enabled" and not isinstance(value, bool):
                raise ValueError(f"invalid input for 'mig-enabled': {_text(value)} (expected true or false)")
            elif key == "device-filter" and value is not None:
                _check_device_filter(value)
            elif key == "mig-devices" and value is not None:
                _check_mig_devices(value)
        if raw["mig-enabled"] and raw.get("mig-devices") is None:
            raise ValueError("missing required field 'mig-devices' when 'mig-enabled' is true")
        if not raw["mig-enabled"] and raw.get("mig-devices"):
            raise ValueError("MIG devices included when 'mig-enabled' is false")
        return raw


class MigPartedConfig(BaseModel):
    """A whole v1 mig-parted file: named mig-configs, each a non-empty list of entries."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, strict=True)

    version: Literal["v1"] = VERSION
    mig_configs: dict[str, list[MigConfigEntry]] = Field(alias="mig-configs")

    @model_validator(mode="before")
    @classmethod
    def _mig_parted_rules(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, MigPartedConfig):
            return data
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"invalid config: {_text(data)} (expected a map)")
        if _from_file(info):
            raw = data
        else:  # built in Python: field names allowed, version defaults
            raw = {"version": VERSION} | {"mig-configs" if k == "mig_configs" else k: v for k, v in data.items()}
        if "version" not in raw:
            raise ValueError("unable to parse with missing 'version' field")
        if raw["version"] != VERSION:
            raise ValueError(f"unknown version: {_text(raw['version'])}")
        for key in raw:
            if key not in ("version", "mig-configs"):
                raise ValueError(f"unexpected field: {_text(key)}")
        configs = raw.get("mig-configs")
        if configs is None or configs == {}:
            raise ValueError("at least one entry in 'mig-configs' is required")
        if not isinstance(configs, dict):
            raise ValueError(f"invalid input for 'mig-configs': {_text(configs)} (expected a map of name to entries)")
        named: dict[str, Any] = {}
        for key, entries in configs.items():
            if key is None:  # JSON has no null key: mig-parted's YAML-to-JSON conversion fails on it
                raise ValueError("invalid input for 'mig-configs': a config name is null")
            name = _text(key)  # YAML keys become JSON strings in mig-parted
            if entries is None or entries == []:
                raise ValueError(f"at least one entry in '{name}' is required")
            if not isinstance(entries, list):
                raise ValueError(f"invalid input for '{name}': {_text(entries)} (expected a list of entries)")
            named[name] = entries
        return {"version": VERSION, "mig-configs": named}


class _UniqueKeyLoader(BoundedLoader):
    """SafeLoader (nesting bounded) that refuses duplicate keys: a second `migopt-…:` would silently win otherwise."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                line = key_node.start_mark.line + 1
                raise MigoptError(f"invalid mig-parted config: duplicate key {_text(key)} at line {line}")
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _where(loc: tuple[int | str, ...]) -> str:
    """`('mig-configs', 'team-split', 1)` → `mig-configs.team-split[1]`: which entry the error is in."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse_config(text: str) -> MigPartedConfig:
    """Parse and validate a mig-parted file; every failure is one `MigoptError` line (bad YAML, nesting deeper
    than `safe_yaml.MAX_DEPTH`, text that is not Unicode included), so a hostile owned ConfigMap is reported as
    invalid and rewritten, never a crash of the pass that reads it."""
    data = load_yaml(text, "invalid mig-parted config: the file", loader=_UniqueKeyLoader)
    try:
        return MigPartedConfig.model_validate(data, context={"file": True})
    except (TypeError, RecursionError) as err:  # whatever a hostile value trips on is still "invalid", not a crash
        raise MigoptError(f"invalid mig-parted config: cannot be read ({type(err).__name__})") from None
    except ValidationError as err:
        first = err.errors()[0]
        cause = first.get("ctx", {}).get("error")
        message = str(cause) if cause is not None else first["msg"]
        where = _where(first["loc"])
        prefix = f"invalid mig-parted config: {where}: " if where else "invalid mig-parted config: "
        raise MigoptError((prefix + message).replace("\n", " ")) from None


def _profile_order(name: str) -> tuple[int, int, int, str]:
    parsed = parse_profile(name)
    return (-parsed.gpu_slices, -parsed.compute_slices, -parsed.memory_gb, name)


def _entry_data(entry: MigConfigEntry) -> dict[str, Any]:
    """An entry as mig-parted's YAML keys, profiles biggest first so equal entries render alike."""
    data: dict[str, Any] = {}
    if entry.device_filter is not None:
        data["device-filter"] = entry.device_filter
    data["devices"] = entry.devices
    data["mig-enabled"] = entry.mig_enabled
    if entry.mig_devices is not None:
        data["mig-devices"] = {n: entry.mig_devices[n] for n in sorted(entry.mig_devices, key=_profile_order)}
    return data


def render_config(config: MigPartedConfig) -> str:
    """The file's YAML: config names sorted, entries in order; `parse_config` reads it back equal.

    Put together from each named config's own YAML, made once per name and content (`_Pieces`): a plan adds a few
    configs to a file of hundreds, and rendering it whole took most of starting a plan's changes. The pieces are
    exactly the whole file's text, except where a list is shared between entries (the dumper would anchor it, and
    an anchor may span pieces): such a config is rendered whole, as before."""
    if config.version != VERSION or not config.mig_configs or _shares_lists(config):
        return _render_whole(config)
    pieces = [_PIECES.get(name, config.mig_configs[name]) for name in sorted(config.mig_configs)]
    if any(piece is None for piece in pieces):
        return _render_whole(config)
    return _HEADER + "".join(piece for piece in pieces if piece is not None)


def _render_whole(config: MigPartedConfig) -> str:
    return _dump(config.version, {name: config.mig_configs[name] for name in sorted(config.mig_configs)})


def _dump(version: str, configs: Mapping[str, Sequence[MigConfigEntry]]) -> str:
    data = {
        "version": version,
        "mig-configs": {name: [_entry_data(e) for e in entries] for name, entries in configs.items()},
    }
    return yaml.dump(
        data, Dumper=_GoSafeDumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=1 << 16
    )


_HEADER = f"version: {VERSION}\nmig-configs:\n"


def _shares_lists(config: MigPartedConfig) -> bool:
    """Whether one list object appears twice in the file's data (an entry listed twice, or two entries sharing
    their `devices` or `device_filter`): the YAML dumper writes it once with an anchor and then an alias."""
    lists = [
        id(value)
        for entries in config.mig_configs.values()
        for entry in entries
        for value in (entry.devices, entry.device_filter)
        if isinstance(value, list)
    ]
    return len(set(lists)) != len(lists)


def reads_back(config: MigPartedConfig) -> bool:
    """Whether `parse_config(render_config(config))` is `config` again in everything its holder can tell: equal field
    for field, and no list shared between entries (a parsed file shares none; a shared one renders as an anchor).
    So for a config with no shared list whose strings are all printable (they render, quoted where a YAML reader
    would take them for something else, and read back as themselves), keeping it is as good as parsing its text."""
    if config.version != VERSION or _shares_lists(config):
        return False
    return all(text.isprintable() for text in _strings(config))


def _strings(config: MigPartedConfig) -> Iterator[str]:
    for name, entries in config.mig_configs.items():
        yield name
        for entry in entries:
            if isinstance(entry.devices, str):
                yield entry.devices
            yield from entry.mig_devices or {}
            if isinstance(entry.device_filter, str):
                yield entry.device_filter
            else:
                yield from entry.device_filter or []


class _Pieces:
    """Each named config's part of a rendered file (its key line and entries, indented as in the file), by name and
    content (`_canonical`, which fixes everything `_entry_data` writes); bounded, the oldest forgotten first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: dict[tuple[str, str], str] = {}

    def get(self, name: str, entries: Sequence[MigConfigEntry]) -> str | None:
        """The piece, rendered as the only config of a file; None if that file does not start as every file does."""
        key = (name, _canonical(entries))
        piece = self._known.get(key)
        if piece is None:
            text = _dump(VERSION, {name: entries})
            if not text.startswith(_HEADER):
                return None
            piece = self._known[key] = text[len(_HEADER) :]
            if len(self._known) > self._limit:
                del self._known[next(iter(self._known))]
        return piece


_PIECES = _Pieces(limit=8192)


class _GoSafeDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string mig-parted's YAML reader would not read back as that string."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if _GO_YAML_NON_STRING.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoSafeDumper.add_representer(str, _represent_str)


def node_entry(gpus: Sequence[tuple[int, GpuModel, Mapping[str, int] | None]]) -> list[MigConfigEntry]:
    """Entries covering every GPU of one node by index; None → MIG off, a map → MIG on with exactly that map.

    Maps are checked against the model (names canonical, zeros dropped, some placement must exist), and GPUs
    with identical settings share an entry.
    """
    if not gpus:
        raise MigoptError("a node entry needs at least one GPU")
    groups: dict[tuple[bool, tuple[tuple[str, int], ...]], list[int]] = {}
    for index, model, devices in sorted(gpus, key=lambda g: g[0]):
        if index < 0:
            raise MigoptError(f"GPU index must be >= 0, got {index}")
        if any(index in members for members in groups.values()):
            raise MigoptError(f"GPU index {index} is listed more than once")
        if devices is None:
            groups.setdefault((False, ()), []).append(index)
            continue
        try:
            target = normalise_map(model, devices)
        except MigoptError as err:
            raise MigoptError(f"GPU {index} ({model.key}): {err}") from None
        if find_layout(model, target) is None:
            shown = ",".join(f"{n}={c}" for n, c in target.items())
            raise MigoptError(
                f"GPU {index} ({model.key}): mig-devices {{{shown}}} is infeasible: {explain_map(model, target)}"
            )
        groups.setdefault((True, tuple(target.items())), []).append(index)
    return [
        MigConfigEntry(devices=members, mig_enabled=enabled, mig_devices=dict(target) if enabled else None)
        for (enabled, target), members in groups.items()
    ]


def _canonical(entries: Iterable[MigConfigEntry]) -> str:
    return json.dumps([_entry_data(e) for e in entries], sort_keys=True, separators=(",", ":"))


def config_name(entries: Sequence[MigConfigEntry]) -> str:
    """`migopt-` + 10 hex digits of the entries' SHA-256: same content, same name; a valid label value."""
    if not entries:
        raise MigoptError("a mig-config needs at least one entry")
    return NAME_PREFIX + hashlib.sha256(_canonical(entries).encode()).hexdigest()[:10]


def is_label_value(text: str) -> bool:
    """Whether `text` can be a Kubernetes label value (it goes into `nvidia.com/mig.config`)."""
    return bool(_LABEL_VALUE.match(text))


def empty_config() -> MigPartedConfig:
    """A file with only `all-disabled`, the value the Operator pre-sets on MIG-capable nodes (spec §1.9)."""
    return MigPartedConfig(mig_configs={ALL_DISABLED: [MigConfigEntry(devices="all", mig_enabled=False)]})


def with_entry(config: MigPartedConfig | None, name: str, entries: Sequence[MigConfigEntry]) -> MigPartedConfig:
    """The config with `name` → `entries` added; an equal entry already there is kept as is.

    The same name with other content is refused: for content-addressed names it means a hash collision,
    and silently replacing it would change the layout under nodes already labelled with that name.
    """
    if not is_label_value(name) or not name:
        raise MigoptError(f"mig-config name {name!r} is not a valid label value")
    if not entries:
        raise MigoptError(f"mig-config {name!r} needs at least one entry")
    base = config if config is not None else empty_config()
    existing = base.mig_configs.get(name)
    if existing is not None:
        if _canonical(existing) != _canonical(entries):
            raise MigoptError(f"mig-config {name!r} already exists with different content (hash collision?)")
        return base
    return MigPartedConfig(mig_configs={**base.mig_configs, name: list(entries)})


def garbage_collect(
    config: MigPartedConfig, names_in_use: AbstractSet[str], keep: AbstractSet[str] = STANDARD_NAMES
) -> MigPartedConfig:
    """Drop `migopt-*` configs no node is labelled with; others (not ours) and `keep` always stay.

    If nothing would be left, `all-disabled` stays so the file remains valid for mig-parted.
    """
    kept = {
        name: entries
        for name, entries in config.mig_configs.items()
        if not name.startswith(NAME_PREFIX) or name in names_in_use or name in keep
    }
    if not kept:
        kept = dict(empty_config().mig_configs)
    return MigPartedConfig(version=config.version, mig_configs=kept)


def entry_applies(entry: MigConfigEntry, index: int, model: GpuModel) -> bool:
    """Whether mig-parted applies the entry to GPU `index` (spec §2.2): its devices name the GPU and its device
    filter, if any, names one of the model's PCI ids (a model-level check: any of the model's ids matches)."""
    if entry.devices != "all" and index not in entry.devices:
        return False
    raw = entry.device_filter
    filters = [f for f in ([raw] if isinstance(raw, str) else list(raw or [])) if f]
    if not filters:
        return True
    ids = {pci.lower() for pci in model.pci_device_ids}
    return any(f.split(":", 1)[0].lower() in ids for f in filters)
