"""The twin's own reader of mig-parted v1 files: what real mig-parted accepts, rejects and applies to which GPU.

It is deliberately independent of the controller's `nvidia_protocol.migparted`: if the twin read files with the
controller's parser, a format bug would be accepted by both sides and never seen. The rules come from NVIDIA's code
(NVIDIA/mig-parted@bd7160f43f16, cited per rule below as `mp:<path>`), not from the controller:

* mig-parted reads YAML with sigs.k8s.io/yaml, i.e. go-yaml v2 (YAML 1.1) into untyped values, keys made strings,
  then JSON, then its own strict `UnmarshalJSON` (mp:api/spec/v1/spec.go, mp:vendor/sigs.k8s.io/yaml/yaml.go).
  So plain scalars resolve as go-yaml v2 does (`y`/`n` are booleans, `1e3` a float, `0o17` an int), duplicate
  keys are allowed (the last wins), and values then convert as Go's encoding/json converts them: JSON null leaves
  a bool/int/string at its zero value, an integral float is a valid int, a number is never a string.
* Wrong types, unknown fields, a version other than `v1`, empty `mig-configs` or config lists, a malformed
  profile name (go-nvlib's grammar), a negative count or an all-zero map are rejected; device indices that do not
  exist and device filters that do not parse are not (they just match no GPU).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import yaml

from solver.catalog import GpuModel

try:
    from yaml import CSafeLoader as _SafeLoader  # libyaml's parser: the same documents, five times faster
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

VERSION = "v1"
_INT64 = 1 << 63

Target = dict[str, int] | None
"""What one GPU is to become: None (MIG disabled) or the `mig-devices` map exactly as the file spells it."""


class ReadError(Exception):
    """The file is not one mig-parted accepts, or the selected config is not in it (mig-parted's wording)."""


class Profile(NamedTuple):
    """A parsed profile string; mig-parted matches a GPU's profile on exactly these (go-nvlib `Matches`)."""

    c: int
    g: int
    gb: int
    attributes: frozenset[str]
    excluded: frozenset[str]


# --- YAML as go-yaml v2 resolves it (mp:vendor/go.yaml.in/yaml/v2/resolve.go) -----------------------------------

_WORDS: dict[str, object] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_UINT = re.compile(
    r"0[xX](?P<x>[0-9a-fA-F_]+)|0[oO](?P<o>[0-7_]+)|0[bB](?P<b>[01_]+)|0(?P<z>[0-7_]*)|(?P<d>[1-9][0-9_]*)"
)
_BASES = {"x": 16, "o": 8, "b": 2, "z": 8, "d": 10}
_PLAIN = "tag:migopt.twin:plain"  # a plain scalar, resolved below instead of by PyYAML's YAML 1.1 rules
_MERGE = "tag:yaml.org,2002:merge"


def _go_uint(text: str, bits: int) -> int | None:
    """Go's `strconv.ParseUint(text, 0, bits)`: 0x/0o/0b prefixes, a leading 0 means octal, `_` between digits."""
    match = _UINT.fullmatch(text)
    if match is None or "__" in text or text.endswith("_"):
        return None
    base, digits = _BASES[str(match.lastgroup)], match[str(match.lastgroup)]
    value = int(digits.replace("_", "") or "0", base)
    return value if value < 1 << bits else None


@lru_cache(maxsize=4096)
def _go_plain(text: str) -> object:
    """A plain (unquoted, untagged) scalar as go-yaml v2 resolves it into an untyped value (each value immutable, so
    remembered per text: a file re-read after every plan repeats the same few hundred scalars)."""
    if text in _WORDS:
        return _WORDS[text]
    if text[:1] == ".":
        return float(text) if _FLOAT.fullmatch(text) and not math.isinf(float(text)) else text
    if text[:1] not in tuple("+-0123456789"):
        return text
    plain = text.replace("_", "")  # timestamps stay text: v2 hands them to untyped targets as strings
    signed = plain[0] in "+-"
    value = _go_uint(plain[1:] if signed else plain, 64)
    if value is not None:
        if plain[0] == "-" and value <= _INT64:
            return -value  # strconv.ParseInt
        if value < _INT64 or not signed:
            return value  # ParseInt, or ParseUint (which takes no sign) for 2^63..2^64-1
    if _FLOAT.fullmatch(plain) and not math.isinf(float(plain)):
        return float(plain)
    return text


class _GoYamlLoader(_SafeLoader):
    """SafeLoader whose plain scalars resolve as go-yaml v2's do (quoted and explicitly tagged ones are untouched)."""


def _construct_plain(loader: _SafeLoader, node: yaml.Node) -> object:
    return _go_plain(str(node.value))


_GoYamlLoader.yaml_implicit_resolvers = {}  # none of PyYAML's YAML 1.1 rules: only the two below
_GoYamlLoader.add_implicit_resolver(_MERGE, re.compile(r"<<\Z"), ["<"])
_GoYamlLoader.add_implicit_resolver(_PLAIN, re.compile(r"(?s).*"), None)  # every other plain scalar
_GoYamlLoader.add_constructor(_PLAIN, _construct_plain)


def _go_float32_text(value: float) -> str:
    """`strconv.FormatFloat(float32(v), 'g', -1, 32)`, the text sigs.k8s.io/yaml gives a float map key."""
    if math.isnan(value):
        return ".nan"
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        single = math.copysign(math.inf, value)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    for precision in range(9):  # shortest digits that read back as the same float32
        text = f"{single:.{precision}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            break
    mantissa, exponent_text = text.split("e")
    exponent, digits = int(exponent_text), mantissa.lstrip("-").replace(".", "")
    if exponent < -4 or exponent >= 6:  # Go's shortest 'g' switches to %e at exponent 6
        return text
    sign = "-" if math.copysign(1.0, single) < 0 else ""
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    whole, fraction = digits[: exponent + 1].ljust(exponent + 1, "0"), digits[exponent + 1 :]
    return sign + whole + (f".{fraction}" if fraction else "")


def _key(key: object) -> str:
    """A YAML map key as sigs.k8s.io/yaml makes it a JSON key (`convertToJSONableObject`)."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int) and -_INT64 <= key < _INT64:
        return str(key)
    if isinstance(key, float):
        return _go_float32_text(key)
    raise ReadError(f"error converting YAML to JSON: unsupported map key of type: {type(key).__name__}, key: {key!r}")


def _jsonable(value: object) -> object:
    """The document as the JSON mig-parted decodes: string keys, and no value JSON cannot hold."""
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ReadError(f"error converting YAML to JSON: json: unsupported value: {value}")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ReadError(f"error converting YAML to JSON: unsupported value of type {type(value).__name__}")


# --- Go's encoding/json conversions into mig-parted's typed fields ------------------------------------------------


def _kind(value: object) -> str:
    names = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _go_string(value: object, field: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""  # JSON null leaves a Go string empty
    raise ReadError(f"json: cannot unmarshal {_kind(value)} into Go value of type string ({field})")


def _go_int(value: object, field: str) -> int:
    if value is None:
        return 0  # JSON null leaves a Go int at 0
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        value = int(value)  # json.Marshal writes an integral float without a fraction: a valid int
    if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64:
        return value
    raise ReadError(f"json: cannot unmarshal {_kind(value)} {value!r} into Go value of type int ({field})")


def _go_bool(value: object, field: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)  # JSON null leaves a Go bool false
    raise ReadError(f"json: cannot unmarshal {_kind(value)} into Go value of type bool ({field})")


# --- go-nvlib's profile grammar (mp:vendor/github.com/NVIDIA/go-nvlib/pkg/nvlib/device/mig_profile.go) -----------


def _profile_field(text: str, suffix: str) -> int:
    if text.strip() != text:
        raise ReadError(f"leading or trailing spaces on '%d{suffix}'")
    if not text.endswith(suffix):
        raise ReadError(f"missing '{suffix}' from '%d{suffix}'")
    number = text.removesuffix(suffix)
    if not re.fullmatch(r"[0-9]+", number) or int(number) >= _INT64:  # strconv.Atoi: ASCII digits, int64
        raise ReadError(f"malformed number in '%d{suffix}'")
    return int(number)


def _profile_attributes(text: str) -> frozenset[str]:
    attributes = text.split(",")
    for attribute in attributes:
        if attributes.count(attribute) > 1:
            raise ReadError("non unique attribute in list")
        if attribute == "":
            raise ReadError("empty attribute in list")
        if attribute.strip() != attribute:
            raise ReadError("leading or trailing spaces in attribute")
        if attribute[0].isdigit() and attribute[0].isascii():
            raise ReadError("attribute begins with a number")
        if attribute[0] == "." or attribute[-1] == ".":
            raise ReadError("attribute begins/ends with a dot")
        if not re.fullmatch(r"[A-Za-z0-9.]+", attribute):
            raise ReadError("non alpha-numeric character or digit in attribute")
    return frozenset(attributes)


@lru_cache(maxsize=1024)
def parse_profile(text: str) -> Profile:
    """`<G>g.<GB>gb` or `<C>c.<G>g.<GB>gb`, then `+attrs` or `-attrs`; C may exceed G and numbers may be 0."""
    if text == "":
        raise ReadError("profile is the empty string")
    plus, minus = text.split("+", 1), text.split("-", 1)
    if len(plus) == 2 and len(minus) == 2:
        raise ReadError(f"profile '{text}' contains both '+/-' attributes")
    head, *tail = plus if len(plus) == 2 else minus
    fields = head.split(".", 2)
    try:
        if len(fields) == 3:
            c, g, gb = (_profile_field(f, s) for f, s in zip(fields, ("c", "g", "gb"), strict=True))
        elif len(fields) == 2:
            g, gb = _profile_field(fields[0], "g"), _profile_field(fields[1], "gb")
            c = g
        else:
            raise ReadError("parsed wrong number of fields, expected 2 or 3")
    except ReadError as err:
        raise ReadError(f"cannot parse fields of '{text}': {err}") from None
    try:
        attributes = _profile_attributes(tail[0]) if tail else frozenset()
    except ReadError as err:
        raise ReadError(f"cannot parse attributes of '{text}': {err}") from None
    if len(minus) == 2:
        return Profile(c, g, gb, frozenset(), attributes)
    return Profile(c, g, gb, attributes, frozenset())


# --- device filters (mp:pkg/types/device.go, mp:api/spec/v1/helpers.go) ------------------------------------------


@lru_cache(maxsize=256)
def _device_id(text: str) -> tuple[int, int | None] | None:
    """`NewDeviceIDFromString`: (device<<16|vendor, subsystem or None); None when it does not parse (mig-parted
    ignores that error and compares a zero id, which no GPU has)."""
    parts = text.split(":")
    if len(parts) > 2:
        return None
    primary = _go_uint(parts[0], 32)
    subsystem = _go_uint(parts[1], 32) if len(parts) == 2 else None
    if primary is None or (len(parts) == 2 and subsystem is None):
        return None
    return primary, subsystem


# --- the file -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One `MigConfigSpec` as mig-parted holds it after reading."""

    devices: tuple[int, ...] | None  # None: `all`
    mig_enabled: bool
    mig_devices: Mapping[str, int] | None  # names as written; None when absent or null
    device_filter: tuple[str, ...] = ()  # empty: no filter

    def applies_to(self, index: int, model: GpuModel) -> bool:
        """`MatchesDeviceFilter` and `MatchesDevices` (mp:api/spec/v1/helpers.go).

        The twin's GPUs have a model, not a board: the filter matches when it names any of the model's PCI ids,
        and a `:0x<subsystem>` qualification is taken to match (the twin has no subsystem ids to compare).
        """
        if self.devices is not None and index not in self.devices:
            return False
        if not self.device_filter:
            return True
        hardware = {_device_id(pci) for pci in model.pci_device_ids}
        ids = {parsed[0] for parsed in hardware if parsed is not None}
        return any(parsed is not None and parsed[0] in ids for parsed in map(_device_id, self.device_filter))


@dataclass(frozen=True)
class MigPartedFile:
    """The named configs of one file (mig-parted accepts a file with none: only selecting from it fails)."""

    configs: Mapping[str, tuple[Entry, ...]]

    def select(self, name: str) -> tuple[Entry, ...]:
        """`GetSelectedMigConfig` (mp:cmd/nvidia-mig-parted/assert/assert.go): an empty name picks a sole config."""
        if len(self.configs) > 1 and not name:
            raise ReadError("missing required flag 'selected-config' when more than one config available")
        if len(self.configs) == 1 and not name:
            name = next(iter(self.configs))
        if name not in self.configs:
            raise ReadError(f"selected mig-config not present: {name}")
        return self.configs[name]


def _devices(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list):
        return tuple(_go_int(i, "devices") for i in value)
    if value is not None and not isinstance(value, str):
        raise ReadError(f"invalid input for 'devices': a {_kind(value)} is neither a string nor a list of int")
    if value != "all":
        raise ReadError(f"invalid string input for 'devices': {value or ''}")
    return None


def _device_filter(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(_go_string(f, "device-filter") for f in value)
    if value is not None and not isinstance(value, str):
        raise ReadError(f"invalid input for 'device-filter': a {_kind(value)} is neither a string nor a list of string")
    return (value,) if value else ()  # "" and null: no filter (`MatchesDeviceFilter`)


def _mig_devices(value: object) -> dict[str, int] | None:
    """`types.MigConfig` and its `AssertValidFormat` (mp:pkg/types/mig_config.go)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReadError(f"json: cannot unmarshal {_kind(value)} into Go value of type types.MigConfig")
    counts = {name: _go_int(count, f"mig-devices.{name}") for name, count in value.items()}
    where = "error validating values in 'mig-devices' field"
    for name, count in counts.items():
        try:
            parse_profile(name)
        except ReadError as err:
            raise ReadError(f"{where}: invalid format for '{name}': {err}") from None
        if count < 0:
            raise ReadError(f"{where}: invalid count for '{name}': {count}")
    if counts and not any(counts.values()):
        raise ReadError(f"{where}: all counts for all MigProfiles are 0")
    return counts


def _entry(value: object) -> Entry:
    """`MigConfigSpec.UnmarshalJSON` (mp:api/spec/v1/spec.go); a null entry is an empty map."""
    raw = {} if value is None else value
    if not isinstance(raw, dict):
        raise ReadError(f"json: cannot unmarshal {_kind(raw)} into Go value of type map[string]json.RawMessage")
    for required in ("devices", "mig-enabled"):
        if required not in raw:
            raise ReadError(f"missing required field: {required}")
    fields: dict[str, Any] = {"device_filter": ()}
    for key, item in raw.items():
        if key == "device-filter":
            fields["device_filter"] = _device_filter(item)
        elif key == "devices":
            fields["devices"] = _devices(item)
        elif key == "mig-enabled":
            fields["mig_enabled"] = _go_bool(item, key)
        elif key == "mig-devices":
            fields["mig_devices"] = _mig_devices(item)
        else:
            raise ReadError(f"unexpected field: {key}")
    entry = Entry(**{"mig_devices": None} | fields)
    if entry.mig_enabled and entry.mig_devices is None:
        raise ReadError("missing required field 'mig-devices' when 'mig-enabled' is true")
    if not entry.mig_enabled and entry.mig_devices:
        raise ReadError("MIG devices included when 'mig-enabled' is false")
    return entry


def _configs(value: object) -> dict[str, tuple[Entry, ...]]:
    if value is not None and not isinstance(value, dict):
        raise ReadError(f"json: cannot unmarshal {_kind(value)} into Go value of type map[string]v1.MigConfigSpecSlice")
    configs: dict[str, tuple[Entry, ...]] = {}
    for name, entries in (value or {}).items():
        if entries is not None and not isinstance(entries, list):
            raise ReadError(f"json: cannot unmarshal {_kind(entries)} into Go value of type v1.MigConfigSpecSlice")
        configs[name] = tuple(_entry(e) for e in entries or [])
    if not configs:
        raise ReadError("at least one entry in 'mig-configs' is required")
    for name, found in configs.items():
        if not found:
            raise ReadError(f"at least one entry in '{name}' is required")
    return configs


def read(text: str) -> MigPartedFile:
    """Read a file as `nvidia-mig-parted` does (`ParseConfigFile`); raises `ReadError` where it would fail."""
    try:  # v2 reads the first document only (the generator, dropped at once, disposes of its loader)
        document = next(iter(yaml.load_all(text, Loader=_GoYamlLoader)), None)
    except yaml.YAMLError as err:
        raise ReadError(f"error converting YAML to JSON: {' '.join(str(err).split())}") from None
    data = _jsonable(document)
    if data is None:  # an empty (or null) document is JSON null, which sigs.k8s.io/yaml decodes into the interface
        # holding *Spec: Go's decoder then sets that interface to nil and never calls Spec.UnmarshalJSON, so the
        # version check is skipped (mp:vendor/sigs.k8s.io/yaml/yaml.go `jsonUnmarshal`; mp spec_test "Empty")
        return MigPartedFile(configs={})
    if not isinstance(data, dict):
        raise ReadError(f"json: cannot unmarshal {_kind(data)} into Go value of type map[string]json.RawMessage")
    if "version" not in data and data:
        raise ReadError("unable to parse with missing 'version' field")
    version = _go_string(data.get("version"), "version")
    if version != VERSION:
        raise ReadError(f"unknown version: {version}")
    configs: dict[str, tuple[Entry, ...]] = {}
    for key, value in data.items():
        if key == "mig-configs":
            configs = _configs(value)
        elif key != "version":
            raise ReadError(f"unexpected field: {key}")
    return MigPartedFile(configs=configs)  # no `mig-configs` at all is accepted (mp spec_test "Only version field")


# --- a node ---------------------------------------------------------------------------------------------------


def walk(entries: Sequence[Entry], gpus: Iterable[tuple[int, GpuModel]]) -> list[tuple[Entry, int]]:
    """(entry, GPU index) in `WalkSelectedMigConfigForEachGPU`'s order: entries in file order, GPUs by index."""
    ordered = sorted(gpus, key=lambda g: g[0])
    return [(entry, index) for entry in entries for index, model in ordered if entry.applies_to(index, model)]


def targets(entries: Sequence[Entry], gpus: Iterable[tuple[int, GpuModel]]) -> dict[int, Target]:
    """Each matched GPU's target: the last entry that matches it wins, as apply processes every match in turn."""
    found: dict[int, Target] = {}
    for entry, index in walk(entries, gpus):
        found[index] = dict(entry.mig_devices or {}) if entry.mig_enabled else None
    return found
