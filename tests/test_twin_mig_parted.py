"""The twin's own mig-parted reader against the controller's parser: same files, same per-GPU targets.

The twin reads files as NVIDIA's mig-parted does (`simulations/twin/mig_parted_reader.py`); the controller has
its own parser (`nvidia_protocol/migparted.py`). Agreement is checked where mig-manager acts on it: for a config
name and a node, either the run fails (file rejected or name not selectable) or each matched GPU gets a target
(None: MIG off; else the `mig-devices` map as written). Every place they legitimately differ is listed with why,
and disagreements that are bugs are recorded as strict xfails, so fixing one shows up here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvidia_protocol.labels import MIG_CONFIG_LABEL
from nvidia_protocol.migparted import (
    MigConfigEntry,
    MigPartedConfig,
    entry_applies,
    node_entry,
    parse_config,
    render_config,
    with_entry,
)
from nvidia_protocol.standard_configs import standard_config, standard_map, standard_names
from simulations.twin import Twin
from simulations.twin.mig_parted_reader import MigPartedFile, ReadError, Target, parse_profile, read, targets
from solver.catalog import GpuModel, load_catalog
from solver.errors import MigoptError
from solver.snapshot import parse_snapshot
from tests.twin_fixtures import CONFIG, T

CATALOG = load_catalog()
A100 = CATALOG.model("A100-40GB")
A100_80 = CATALOG.model("A100-80GB")
A30 = CATALOG.model("A30")
H100 = CATALOG.model("H100-80GB")

Gpus = Sequence[tuple[int, GpuModel]]
FAILED: Literal["failed"] = "failed"
Outcome = Literal["failed"] | dict[int, Target]

NODES: list[Gpus] = [
    [(0, A100), (1, A100)],
    [(0, A30), (1, A100_80), (2, H100), (3, A100)],
    [(2, H100), (0, H100)],  # a gap in the indices, listed out of order
    *([(0, m), (1, m)] for m in CATALOG.models),
]


@lru_cache(maxsize=16)
def controller_file(text: str) -> MigPartedConfig | None:
    try:
        return parse_config(text)
    except MigoptError:
        return None


@lru_cache(maxsize=16)
def twin_file(text: str) -> MigPartedFile | None:
    try:
        return read(text)
    except ReadError:
        return None


def controller_outcome(text: str, name: str, gpus: Gpus) -> Outcome:
    """What the controller's parser says mig-manager would do: selection as mig-parted's `GetSelectedMigConfig`,
    matching by `entry_applies`, the last matching entry winning."""
    config = controller_file(text)
    if config is None:
        return FAILED
    names = list(config.mig_configs)
    if not name and len(names) == 1:
        name = names[0]
    if name not in config.mig_configs:
        return FAILED
    found: dict[int, Target] = {}
    for entry in config.mig_configs[name]:
        for index, model in sorted(gpus, key=lambda g: g[0]):
            if entry_applies(entry, index, model):
                found[index] = dict(entry.mig_devices or {}) if entry.mig_enabled else None
    return found


def twin_outcome(text: str, name: str, gpus: Gpus) -> Outcome:
    file = twin_file(text)
    if file is None:
        return FAILED
    try:
        return targets(file.select(name), gpus)
    except ReadError:
        return FAILED


def names_in(text: str) -> list[str]:
    """Every name either side sees, plus the empty name (a sole config) and one no file has."""
    controller, twin = controller_file(text), twin_file(text)
    found = (
        {"", "no-such-config"} | set(controller.mig_configs if controller else ()) | set(twin.configs if twin else ())
    )
    return sorted(found)


def assert_agree(text: str, nodes: Sequence[Gpus] = NODES) -> None:
    for name in names_in(text):
        for gpus in nodes:
            controller, twin = controller_outcome(text, name, gpus), twin_outcome(text, name, gpus)
            assert controller == twin, f"config {name!r} on {[(i, m.key) for i, m in gpus]}:\n{text}"


def accepted_by_controller(text: str) -> bool:
    return controller_file(text) is not None


def accepted_by_twin(text: str) -> bool:
    return twin_file(text) is not None


# --- files the controller writes --------------------------------------------------------------------------


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_standard_configs_of_each_model_give_the_same_targets(model: GpuModel) -> None:
    text = render_config(standard_config([model]))
    assert set(read(text).configs) <= set(standard_names(model))
    assert_agree(text)


def test_the_multi_model_standard_file_gives_the_same_targets() -> None:
    text = render_config(standard_config(list(CATALOG.models)))  # one entry per model, with device filters
    assert_agree(text)
    for gpus in NODES:  # and the filters pick each GPU's own model
        assert twin_outcome(text, "all-balanced", gpus) == {i: standard_map(m, "all-balanced") for i, m in gpus}


def test_node_entries_the_controller_writes_give_the_same_targets() -> None:
    node = [(0, H100, None), (1, H100, {"3g.40gb": 2}), (2, H100, {"1g.10gb": 7}), (3, H100, {})]
    config = with_entry(None, "migopt-node", node_entry(node))
    text = render_config(config)
    assert_agree(text)
    assert twin_outcome(text, "migopt-node", [(i, m) for i, m, _ in node]) == {
        0: None, 1: {"3g.40gb": 2}, 2: {"1g.10gb": 7}, 3: {},
    }  # fmt: skip


# Names that start with a letter read alike in PyYAML (YAML 1.1) and go-yaml v2 once longer than one letter;
# other names are ones PyYAML quotes when it writes them. See test_finding_config_names_mig_parted_renames.
SAFE_NAMES = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{1,30}", fullmatch=True),
    st.sampled_from(["all-disabled", "123", "1.5", "0x1F", "1_0", "2024-01-01", "yes", "No", "null", "true", "a b"]),
)
PROFILES = sorted(
    {p.name for m in CATALOG.models for p in m.profiles}
    | {"1c.3g.20gb", "1g.24gb-me", "2g.48gb+me.all", "9g.99gb", "1c.1g.5gb", "3g.39gb"}
)
PCI_IDS = sorted({pci for m in CATALOG.models for pci in m.pci_device_ids})
FILTERS = st.one_of(
    st.sampled_from(PCI_IDS),
    st.sampled_from(PCI_IDS).map(str.lower),
    st.sampled_from(PCI_IDS).map(lambda pci: f"{pci}:0x153210DE"),
)


@st.composite
def controller_entries(draw: st.DrawFn) -> MigConfigEntry:
    devices: Any = draw(st.one_of(st.just("all"), st.lists(st.integers(0, 9), max_size=5)))
    enabled = draw(st.booleans())
    mig_devices: dict[str, int] | None = None
    if enabled:
        mig_devices = draw(st.dictionaries(st.sampled_from(PROFILES), st.integers(0, 7), max_size=4))
        if mig_devices and not any(mig_devices.values()):
            mig_devices[next(iter(mig_devices))] = 1
    elif draw(st.booleans()):
        mig_devices = {}
    device_filter = draw(st.one_of(st.none(), st.just(""), FILTERS, st.lists(FILTERS, max_size=3)))
    return MigConfigEntry(devices=devices, mig_enabled=enabled, mig_devices=mig_devices, device_filter=device_filter)


RENDERED = st.builds(
    lambda configs: render_config(MigPartedConfig(mig_configs=configs)),
    st.dictionaries(SAFE_NAMES, st.lists(controller_entries(), min_size=1, max_size=4), min_size=1, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(RENDERED)
def test_rendered_files_give_the_same_targets_on_every_node(text: str) -> None:
    assert accepted_by_twin(text)
    assert_agree(text)


# --- random valid and invalid files -------------------------------------------------------------------------

Verdict = Literal["same", "controller-stricter"]
Where = tuple[str, int]  # a config name and an entry's position in it
Apply = Callable[[dict[str, Any], Where], None]


@dataclass(frozen=True)
class Mutation:
    """One change to a valid document and what the two readers should make of the result.

    `same`: both reject it, or both accept it with the same targets. `controller-stricter`: mig-parted accepts
    it and the controller's parser refuses it; legitimate, since the controller promises only that a file it
    accepts is one mig-parted accepts (its module docstring), and it never writes these forms itself.
    """

    label: str
    apply: Apply
    verdict: Verdict = "same"
    why: str = ""


def _top(key: str, value: Any) -> Apply:
    def apply(doc: dict[str, Any], _where: Where) -> None:
        if value is _DELETE:
            doc.pop(key, None)
        else:
            doc[key] = value

    return apply


def _field(key: str, value: Any, **also: Any) -> Apply:
    """Set (or delete) one field of the chosen entry, and set others (`mig_enabled=` → `mig-enabled`)."""

    def apply(doc: dict[str, Any], where: Where) -> None:
        entry = doc["mig-configs"][where[0]][where[1]]
        if value is _DELETE:
            entry.pop(key, None)
        else:
            entry[key] = value
        entry.update({k.replace("_", "-"): v for k, v in also.items()})

    return apply


def _devices_map(value: Any) -> Apply:
    return _field("mig-devices", value, mig_enabled=True)


def _first_list(value: Any) -> Apply:
    def apply(doc: dict[str, Any], _where: Where) -> None:
        doc["mig-configs"][next(iter(doc["mig-configs"]))] = value

    return apply


def _replace_entry(value: Any) -> Apply:
    def apply(doc: dict[str, Any], where: Where) -> None:
        doc["mig-configs"][where[0]][where[1]] = value

    return apply


_DELETE = object()
STRICT_FILTER = "mig-parted ignores a device-filter that does not parse (`NewDeviceIDFromString`'s error is dropped):"
MUTATIONS = [
    Mutation("valid as generated", lambda doc, where: None),
    Mutation("version v2", _top("version", "v2")),
    Mutation("version V1", _top("version", "V1")),
    Mutation("version a number", _top("version", 1)),
    Mutation("version null", _top("version", None)),
    Mutation("no version", _top("version", _DELETE)),
    Mutation("unknown top-level field", _top("kind", "MigConfig")),
    Mutation("mig-configs empty", _top("mig-configs", {})),
    Mutation("mig-configs null", _top("mig-configs", None)),
    Mutation("mig-configs a list", _top("mig-configs", [])),
    # mig-parted accepts a file without `mig-configs` (spec_test "Only version field"), the controller does not:
    # either way mig-manager fails, as nothing can be selected from it.
    Mutation("no mig-configs", _top("mig-configs", _DELETE)),
    Mutation("a config with no entries", _first_list([])),
    Mutation("a config null", _first_list(None)),
    Mutation("a config a map", _first_list({"devices": "all", "mig-enabled": False})),
    Mutation("an entry null", _replace_entry(None)),
    Mutation("an entry a string", _replace_entry("all")),
    Mutation("an entry a list", _replace_entry([])),
    Mutation("unknown entry field", _field("colour", "red")),
    Mutation("entry field in snake case", _field("mig_enabled", False)),
    Mutation("no devices", _field("devices", _DELETE)),
    Mutation("devices a word", _field("devices", "some")),
    Mutation("devices ALL", _field("devices", "ALL")),
    Mutation("devices a number", _field("devices", 3)),
    Mutation("devices a map", _field("devices", {})),
    Mutation("devices null", _field("devices", None)),
    Mutation("devices with a string", _field("devices", [0, "x"])),
    Mutation("devices with a bool", _field("devices", [True])),
    Mutation("devices with a fraction", _field("devices", [0.5])),
    Mutation("devices with an unknown index", _field("devices", [0, 99])),
    Mutation("devices with a negative index", _field("devices", [-1])),
    Mutation("devices empty", _field("devices", [])),
    Mutation(
        "devices with an integral float",
        _field("devices", [1.0]),
        "controller-stricter",
        "sigs.k8s.io/yaml re-encodes YAML as JSON, where 1.0 is written 1: a valid Go int",
    ),
    Mutation(
        "devices with a null",
        _field("devices", [None, 1]),
        "controller-stricter",
        "Go's encoding/json leaves an int at 0 for a JSON null: the list is [0, 1]",
    ),
    Mutation("no mig-enabled", _field("mig-enabled", _DELETE)),
    Mutation("mig-enabled a string", _field("mig-enabled", "true")),
    Mutation("mig-enabled a number", _field("mig-enabled", 1)),
    Mutation(
        "mig-enabled null",
        _field("mig-enabled", None, mig_devices=None),
        "controller-stricter",
        "Go's encoding/json leaves a bool false for a JSON null: MIG disabled",
    ),
    Mutation("enabled without mig-devices", _field("mig-devices", _DELETE, mig_enabled=True)),
    Mutation("enabled with null mig-devices", _devices_map(None)),
    Mutation("enabled with empty mig-devices", _devices_map({})),
    Mutation("disabled with mig-devices", _field("mig-devices", {"1g.5gb": 1}, mig_enabled=False)),
    Mutation("disabled with empty mig-devices", _field("mig-devices", {}, mig_enabled=False)),
    Mutation("a negative count", _devices_map({"1g.5gb": -1})),
    Mutation("only zero counts", _devices_map({"1g.5gb": 0, "2g.10gb": 0})),
    Mutation("a zero count beside others", _devices_map({"1g.5gb": 0, "2g.10gb": 1})),
    Mutation("a fractional count", _devices_map({"1g.5gb": 1.5})),
    Mutation("a boolean count", _devices_map({"1g.5gb": True})),
    Mutation("a string count", _devices_map({"1g.5gb": "1"})),
    Mutation("mig-devices a list", _devices_map(["1g.5gb"])),
    Mutation("a profile unknown to every GPU", _devices_map({"9g.99gb": 1})),
    Mutation("a malformed profile", _devices_map({"1x.5gb": 1})),
    Mutation("a profile with spaces", _devices_map({" 1g.5gb": 1})),
    Mutation("a profile with both + and -", _devices_map({"1g.5gb+me-x": 1})),
    Mutation("a profile with an empty attribute", _devices_map({"1g.5gb+": 1})),
    Mutation("an empty profile", _devices_map({"": 1})),
    Mutation(
        "an integral float count",
        _devices_map({"1g.5gb": 2.0}),
        "controller-stricter",
        "sigs.k8s.io/yaml re-encodes YAML as JSON, where 2.0 is written 2: a valid Go int",
    ),
    Mutation(
        "a null count",
        _devices_map({"1g.5gb": None, "2g.10gb": 1}),
        "controller-stricter",
        "Go's encoding/json leaves an int at 0 for a JSON null: a zero count",
    ),
    Mutation(
        "more compute than GPU slices",
        _devices_map({"4c.2g.10gb": 1}),
        "controller-stricter",
        "go-nvlib's profile grammar does not compare C with G (solver.profiles does)",
    ),
    Mutation(
        "a zero-slice profile",
        _devices_map({"0g.5gb": 1}),
        "controller-stricter",
        "go-nvlib parses each number with strconv.Atoi: 0 is a number",
    ),
    Mutation(
        "a profile with a leading zero",
        _devices_map({"01g.5gb": 1}),
        "controller-stricter",
        "go-nvlib parses each number with strconv.Atoi: 01 is 1",
    ),
    Mutation("device-filter a number", _field("device-filter", 12)),
    Mutation("device-filter with a number", _field("device-filter", [1])),
    Mutation("device-filter a map", _field("device-filter", {})),
    Mutation("device-filter empty", _field("device-filter", "")),
    Mutation("device-filter null", _field("device-filter", None)),
    Mutation("device-filter an empty list", _field("device-filter", [])),
    Mutation("device-filter lower case", _field("device-filter", "0x20b010de")),
    Mutation("device-filter with a subsystem", _field("device-filter", ["0x20B010DE:0x153210DE", "0x233010DE"])),
    Mutation(
        "device-filter without the vendor",
        _field("device-filter", "0x20B0"),
        "controller-stricter",
        "it parses as device 0x0000 of vendor 0x20B0, which no GPU is: the entry matches nothing",
    ),
    Mutation(
        "device-filter a model name",
        _field("device-filter", "A100"),
        "controller-stricter",
        f"{STRICT_FILTER} the entry matches nothing",
    ),
    Mutation(
        "device-filter with an empty string",
        _field("device-filter", [""]),
        "controller-stricter",
        f'{STRICT_FILTER} unlike a lone "", a listed one matches nothing',
    ),
    Mutation(
        "device-filter in decimal",
        _field("device-filter", str(0x20B010DE)),
        "controller-stricter",
        "strconv.ParseUint(s, 0, 32) reads decimal too: this is 0x20B010DE",
    ),
]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid file as data, in mig-parted's key names."""
    configs: dict[str, list[dict[str, Any]]] = {}
    for name in draw(st.lists(SAFE_NAMES, min_size=1, max_size=3, unique=True)):
        entries = draw(st.lists(controller_entries(), min_size=1, max_size=3))
        configs[name] = [e.model_dump(by_alias=True, exclude_none=True) for e in entries]
    return {"version": "v1", "mig-configs": configs}


def mutated(doc: dict[str, Any], mutation: Mutation, pick: int) -> str:
    doc = copy.deepcopy(doc)
    places = [(name, i) for name, entries in doc["mig-configs"].items() for i in range(len(entries))]
    mutation.apply(doc, places[pick % len(places)])
    return yaml.safe_dump(doc, sort_keys=False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.sampled_from(MUTATIONS), st.integers(0, 99))
def test_random_valid_and_invalid_files_are_accepted_and_rejected_alike(
    doc: dict[str, Any], mutation: Mutation, pick: int
) -> None:
    text = mutated(doc, mutation, pick)
    if mutation.verdict == "same":
        assert_agree(text)
    else:  # see `why`: mig-parted takes it, the controller's parser does not
        assert not accepted_by_controller(text), mutation.label
        assert accepted_by_twin(text), f"{mutation.label}: {mutation.why}"


def test_every_mutation_says_why_when_the_readers_may_differ() -> None:
    assert all(bool(m.why) == (m.verdict != "same") for m in MUTATIONS)


def test_lenient_device_filters_match_as_mig_parted_matches_them() -> None:
    def doc(device_filter: str) -> str:
        return (
            "version: v1\nmig-configs:\n  c:\n    - {devices: all, mig-enabled: false}\n"
            f"    - {{devices: all, mig-enabled: true, mig-devices: {{}}, device-filter: {device_filter}}}\n"
        )

    gpus = [(0, A100), (1, A30)]
    assert twin_outcome(doc(f"'{0x20B010DE}'"), "c", gpus) == {0: {}, 1: None}  # decimal 0x20B010DE
    assert twin_outcome(doc("'0X20b010De'"), "c", gpus) == {0: {}, 1: None}
    for nothing in ("'0x20B0'", "A100", "['']", "'0x20B010DE:junk'", "'0x20B010DE:1:2'"):
        assert twin_outcome(doc(nothing), "c", gpus) == {0: None, 1: None}, nothing
    for everything in ("''", "null", "[]"):
        assert twin_outcome(doc(everything), "c", gpus) == {0: {}, 1: {}}, everything


# --- hand-written text: YAML the two YAML libraries read differently ---------------------------------------

ENTRY = "[{devices: all, mig-enabled: false}]"
BIG = 2**63


def one(entry: str) -> str:
    """A file with one config `c` of one entry, written in flow style."""
    return f"version: v1\nmig-configs:\n  c: [{entry}]\n"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # mig-parted reads YAML with go-yaml v2 (via sigs.k8s.io/yaml), which lets a later key win; the
        # controller's loader refuses duplicates so that a second `migopt-…:` cannot silently replace the first.
        (f"version: v1\nmig-configs:\n  c: {ENTRY}\n  c: {ENTRY}\n", "duplicate keys"),
        (f"version: v1\nmig-configs:\n  c: {ENTRY}\n---\nversion: v2\n", "go-yaml v2 reads the first document"),
        # go-yaml v2 follows YAML 1.1 further than PyYAML: `y`/`n` are booleans, `1e0` a float, `0o1` an int.
        ("version: v1\nmig-configs:\n  c: [{devices: all, mig-enabled: y, mig-devices: {}}]\n", "y is true"),
        ("version: v1\nmig-configs:\n  c: [{devices: [1e0], mig-enabled: false}]\n", "1e0 is 1"),
        ("version: v1\nmig-configs:\n  c: [{devices: [0o1], mig-enabled: n}]\n", "0o1 is 1, n is false"),
    ],
)
def test_yaml_mig_parted_reads_and_the_controller_refuses(text: str, why: str) -> None:
    assert not accepted_by_controller(text)
    assert accepted_by_twin(text), why


@pytest.mark.parametrize(
    "text",
    [
        "",  # an empty document decodes to nothing without error (mig-parted spec_test "Empty")
        "version: v1\n",  # mig-parted spec_test "Only version field"
        "# nothing\n",
        "null\n",  # JSON null: Go's decoder never reaches Spec.UnmarshalJSON
        "~\n",
    ],
)
def test_files_without_configs_pass_mig_parted_but_nothing_can_be_selected(text: str) -> None:
    assert accepted_by_twin(text) and not accepted_by_controller(text)
    assert_agree(text)  # mig-manager fails either way
    with pytest.raises(ReadError, match="selected mig-config not present: all-3g"):
        read(text).select("all-3g")


def test_the_twins_mig_manager_parses_a_file_without_configs_and_fails_at_selection() -> None:
    assert twin_run("version: v1\n", "all-3g") == ("failed", "Error: selected mig-config not present: all-3g")
    outcome, message = twin_run("version: v2\n", "all-3g")
    assert outcome == "failed" and "error parsing config file: unknown version: v2" in message


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("{}", "unknown version"),
        ("version: v1\nmig-configs: {}\n", "at least one entry in 'mig-configs'"),
        ("[]", "cannot unmarshal array"),
        ("version: v1\nmig-configs: [\n", "error converting YAML"),
        (f"version: v1\nmig-configs:\n  c: {ENTRY}\n  ~: {ENTRY}\n", "unsupported map key"),
        (one("{devices: [.nan], mig-enabled: false}"), "unsupported value"),
        (one(f"{{devices: [{BIG}], mig-enabled: false}}"), "type int"),
        (one(f"{{devices: all, mig-enabled: true, mig-devices: {{1g.5gb: {BIG}}}}}"), "type int"),
        (one(f"{{devices: all, mig-enabled: true, mig-devices: {{{BIG}g.5gb: 1}}}}"), "malformed number"),
    ],
)
def test_twin_rejects_what_mig_parted_rejects(text: str, rule: str) -> None:
    with pytest.raises(ReadError, match=rule):
        read(text)


def test_non_string_keys_are_named_as_sigs_yaml_names_them() -> None:
    text = f"version: v1\nmig-configs:\n  123: {ENTRY}\n  true: {ENTRY}\n  1.50: {ENTRY}\n  1e6: {ENTRY}\n"
    assert sorted(read(text).configs) == ["1.5", "123", "1e+06", "true"]


def test_profile_grammar_is_go_nvlibs() -> None:
    assert parse_profile("1g.5gb") == parse_profile("1c.1g.5gb") == parse_profile("01g.05gb")
    assert parse_profile("1g.24gb+gfx,me") == parse_profile("1g.24gb+me,gfx")
    assert parse_profile("1g.24gb-me") != parse_profile("1g.24gb+me")
    for bad in ("", "1g", "1g.5", "g.5gb", "1g.5gb+", "1g.5gb+me,me", "1g.5gb+1x", "1g.5gb+.me", "1g.5gb+m_e",
                "1g.5gb +me", "1g.5gb+me-x", "1c.1g.5gb.x", "١g.5gb", "99999999999999999999g.5gb"):  # fmt: skip
        with pytest.raises(ReadError):
            parse_profile(bad)


def twin_run(text: str, label: str) -> tuple[str, str]:
    """One mig-manager run on a one-GPU twin node: (outcome, message)."""
    node = {"name": "a", "gpus": [{"index": 0, "model": "A100-40GB", "instances": []}]}
    t = Twin.from_snapshot(parse_snapshot({"nodes": [node]}), text, timings=T)
    t.patch_node("a", labels={MIG_CONFIG_LABEL: label})
    t.run_until_idle()
    return t.mig_runs[-1].outcome, t.mig_runs[-1].message


def test_the_twins_mig_manager_goes_by_what_mig_parted_accepts() -> None:
    refused = CONFIG + "  ~:\n    - devices: all\n      mig-enabled: false\n"  # a null key (the controller takes it)
    outcome, message = twin_run(refused, "all-3g")
    assert outcome == "failed" and "error parsing config file" in message and "unsupported map key" in message
    taken = CONFIG + "  yes-please:\n    - {devices: [0o0], mig-enabled: y, mig-devices: {7g.40gb: 1.0}}\n"
    assert not accepted_by_controller(taken)  # YAML 1.1 as go-yaml v2 reads it: the controller refuses it
    assert twin_run(taken, "yes-please")[0] == "success"


# --- findings: the controller accepts or writes what mig-parted reads otherwise -----------------------------


@pytest.mark.parametrize("name", ["y", "N", "1e3", "1.5e3", "1e-3", "0o17"])
def test_config_names_go_yaml_would_resolve_are_quoted(name: str) -> None:
    """Found by this differential test: such names used to be written plain and read back renamed."""
    text = render_config(MigPartedConfig(mig_configs={name: [MigConfigEntry(devices="all", mig_enabled=False)]}))
    assert set(read(text).configs) == {name}


@pytest.mark.parametrize(
    "text",
    [
        one(f"{{devices: [{BIG}], mig-enabled: false}}"),
        one(f"{{devices: all, mig-enabled: true, mig-devices: {{1g.5gb: {BIG}}}}}"),
        one(f"{{devices: all, mig-enabled: true, mig-devices: {{{BIG}g.5gb: 1}}}}"),
        f"version: v1\nmig-configs:\n  c: {ENTRY}\n  ~: {ENTRY}\n",
    ],
)
def test_controller_rejects_what_go_cannot_decode(text: str) -> None:
    """Found by this differential test: numbers beyond int64 and a null config name used to be accepted."""
    assert not accepted_by_controller(text)
