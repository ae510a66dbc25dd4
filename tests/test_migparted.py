"""The mig-parted file migopt owns: spec §2.1's rules and wording, round-trips, node entries, names and GC."""

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvidia_protocol.migparted import (
    MigConfigEntry,
    MigPartedConfig,
    config_name,
    empty_config,
    garbage_collect,
    is_label_value,
    node_entry,
    parse_config,
    render_config,
    with_entry,
)
from solver.catalog import load_catalog
from solver.errors import MigoptError

CATALOG = load_catalog()
A100 = CATALOG.model("A100-40GB")
A30 = CATALOG.model("A30")
H100 = CATALOG.model("H100-80GB")

SPEC_EXAMPLE = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  team-split:                      # 4x H100-80GB node
    - devices: [0, 1]              # whole GPUs for training
      mig-enabled: false
    - devices: [2]                 # one GPU as two halves
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
    - devices: [3]                 # one GPU mixed
      mig-enabled: true
      mig-devices: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
  mixed-models:                    # node with A100-40GB and A30 cards
    - device-filter: "0x20B010DE"
      devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
    - device-filter: "0x20B710DE"
      devices: all
      mig-enabled: true
      mig-devices: {"2g.12gb": 2}
"""

OPERATOR_STYLE = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
  all-1g.5gb.me:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb+me": 1
  all-balanced:
    - device-filter: ["0x20B010DE", "0x20B110DE", "0x20F110DE", "0x20F610DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
    - device-filter: "0x20B710DE:0x153210DE"
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.6gb": 2
        "2g.12gb": 1
  odd-but-valid:
    - devices: [0, 3]
      mig-enabled: false
      mig-devices: {}
    - devices: []
      mig-enabled: true
      mig-devices: {"1c.3g.20gb": 2, "1g.5gb": 0, "1g.24gb-me": 1}
      device-filter: ""
"""


def doc(entry: str) -> str:
    """A v1 file with one config `c` holding the given entry (YAML flow mapping)."""
    return f"version: v1\nmig-configs:\n  c:\n    - {entry}\n"


def fails(text: str, message: str) -> str:
    with pytest.raises(MigoptError) as caught:
        parse_config(text)
    text = str(caught.value)
    assert "\n" not in text
    assert message in text, text
    return text


def test_the_spec_example_parses() -> None:
    config = parse_config(SPEC_EXAMPLE)
    assert sorted(config.mig_configs) == ["all-disabled", "mixed-models", "team-split"]
    split = config.mig_configs["team-split"]
    assert split[0] == MigConfigEntry(devices=[0, 1], mig_enabled=False)
    assert split[2].mig_devices == {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
    assert config.mig_configs["mixed-models"][1].device_filter == "0x20B710DE"
    assert config.mig_configs["all-disabled"] == empty_config().mig_configs["all-disabled"]


def test_operator_style_and_edge_cases_parse() -> None:
    config = parse_config(OPERATOR_STYLE)
    assert config.mig_configs["all-enabled"][0].mig_devices == {}
    assert config.mig_configs["all-balanced"][0].device_filter == [
        "0x20B010DE",
        "0x20B110DE",
        "0x20F110DE",
        "0x20F610DE",
    ]
    odd = config.mig_configs["odd-but-valid"]
    assert odd[0].mig_devices == {} and odd[1].devices == [] and odd[1].device_filter == ""
    assert parse_config(render_config(config)) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: v1\nmig-configs: {c: [{devices: all, mig-enabled: false}]}\nextra: 1\n", "unexpected field: extra"),
        ("version: v1\nmig_configs: {c: [{devices: all, mig-enabled: false}]}\n", "unexpected field: mig_configs"),
        ("version: v2\nmig-configs: {c: [{devices: all, mig-enabled: false}]}\n", "unknown version: v2"),
        ("version: 1\nmig-configs: {c: [{devices: all, mig-enabled: false}]}\n", "unknown version: 1"),
        ("mig-configs: {c: [{devices: all, mig-enabled: false}]}\n", "unable to parse with missing 'version' field"),
        ("", "unable to parse with missing 'version' field"),
        ("version: v1\n", "at least one entry in 'mig-configs' is required"),
        ("version: v1\nmig-configs: {}\n", "at least one entry in 'mig-configs' is required"),
        ("version: v1\nmig-configs:\n  team-a: []\n", "at least one entry in 'team-a' is required"),
        ("version: v1\nmig-configs:\n  team-a:\n", "at least one entry in 'team-a' is required"),
        ("version: v1\nmig-configs: [a]\n", "invalid input for 'mig-configs'"),
        ("version: v1\nmig-configs: {c: {devices: all}}\n", "invalid input for 'c'"),
        ("- 1\n", "expected a map"),
        (doc("{devices: some, mig-enabled: false}"), "invalid string input for 'devices': some"),
        (doc("{devices: 3, mig-enabled: false}"), "invalid input for 'devices': 3"),
        (doc("{devices: [0, x], mig-enabled: false}"), "invalid input for 'devices'"),
        (doc("{devices: [true], mig-enabled: false}"), "invalid input for 'devices'"),
        (doc("{mig-enabled: false}"), "missing required field: devices"),
        (doc("{devices: all}"), "missing required field: mig-enabled"),
        (doc("{devices: all, mig-enabled: maybe}"), "invalid input for 'mig-enabled': maybe"),
        (doc("{devices: all, mig-enabled: 1}"), "invalid input for 'mig-enabled': 1"),
        (doc("{devices: all, mig-enabled: false, colour: red}"), "unexpected field: colour"),
        (doc("{devices: all, mig_enabled: false, mig-enabled: false}"), "unexpected field: mig_enabled"),
        (doc("{devices: all, mig-enabled: true}"), "missing required field 'mig-devices' when 'mig-enabled' is true"),
        (doc("{devices: all, mig-enabled: true, mig-devices: null}"), "missing required field 'mig-devices'"),
        (
            doc("{devices: all, mig-enabled: false, mig-devices: {1g.5gb: 1}}"),
            "MIG devices included when 'mig-enabled' is false",
        ),
        (doc("{devices: all, mig-enabled: true, mig-devices: {1g.5gb: 0}}"), "all counts for all MigProfiles are 0"),
        (
            doc("{devices: all, mig-enabled: true, mig-devices: {1g.5gb: 0, 2g.10gb: 0}}"),
            "all counts for all MigProfiles are 0",
        ),
        (doc("{devices: all, mig-enabled: true, mig-devices: {1x.5gb: 1}}"), "invalid format for '1x.5gb'"),
        (doc("{devices: all, mig-enabled: true, mig-devices: {1g.5gb+me-x: 1}}"), "invalid format for '1g.5gb+me-x'"),
        (doc("{devices: all, mig-enabled: true, mig-devices: {4c.2g.10gb: 1}}"), "invalid format for '4c.2g.10gb'"),
        (doc("{devices: all, mig-enabled: true, mig-devices: {' 1g.5gb': 1}}"), "invalid format for ' 1g.5gb'"),
        (doc("{devices: all, mig-enabled: true, mig-devices: {1g.5gb: -1}}"), "invalid count for '1g.5gb': -1"),
        (doc("{devices: all, mig-enabled: true, mig-devices: {1g.5gb: 1.5}}"), "invalid count for '1g.5gb': 1.5"),
        (doc("{devices: all, mig-enabled: true, mig-devices: {1g.5gb: true}}"), "invalid count for '1g.5gb': true"),
        (doc("{devices: all, mig-enabled: true, mig-devices: [1g.5gb]}"), "invalid input for 'mig-devices'"),
        (doc("{devices: all, mig-enabled: false, device-filter: '0x20B0'}"), "invalid device-filter 0x20B0"),
        (doc("{devices: all, mig-enabled: false, device-filter: 0x20B010DE}"), "invalid input for 'device-filter'"),
        (doc("{devices: all, mig-enabled: false, device-filter: '20B010DE'}"), "invalid device-filter 20B010DE"),
        (doc("{devices: all, mig-enabled: false, device-filter: '0x20B010DG'}"), "invalid device-filter 0x20B010DG"),
        (doc("{devices: all, mig-enabled: false, device-filter: '0x20B010DE:153210DE'}"), "invalid device-filter"),
        (doc("{devices: all, mig-enabled: false, device-filter: ['0x20B010DE', '']}"), "invalid device-filter"),
        (doc("{devices: all, mig-enabled: false, device-filter: [1]}"), "invalid input for 'device-filter'"),
        (doc("{devices: all, mig-enabled: false, device-filter: 12}"), "invalid input for 'device-filter'"),
        (doc("[devices, all]"), "invalid entry"),
    ],
)
def test_each_rule_fails_with_mig_parteds_words_on_one_line(text: str, message: str) -> None:
    fails(text, message)


def test_entry_errors_say_which_entry() -> None:
    text = SPEC_EXAMPLE.replace('mig-devices: {"2g.12gb": 2}', 'mig-devices: {"2g.12gb": -2}')
    assert fails(text, "invalid count").startswith("invalid mig-parted config: mig-configs.mixed-models[1]: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: v1\nmig-configs: [\n", "not valid YAML at line"),
        ("version: v1\n  bad: indent\n", "not valid YAML"),
        ("version: v1\n---\nversion: v1\n", "not valid YAML"),
        (
            "version: v1\nmig-configs:\n  c: [{devices: all, mig-enabled: false}]\n"
            "  c: [{devices: all, mig-enabled: false}]\n",
            "duplicate key c at line 4",
        ),
        ("version: v1\nversion: v1\n", "duplicate key version"),
    ],
)
def test_broken_yaml_is_one_line(text: str, message: str) -> None:
    fails(text, message)


def test_numeric_config_names_become_strings_like_json() -> None:
    config = parse_config("version: v1\nmig-configs:\n  123: [{devices: all, mig-enabled: false}]\n")
    assert list(config.mig_configs) == ["123"]
    assert parse_config(render_config(config)) == config


def test_models_built_in_python_follow_the_same_rules() -> None:
    with pytest.raises(ValueError, match="MIG devices included"):
        MigConfigEntry(devices="all", mig_enabled=False, mig_devices={"1g.5gb": 1})
    with pytest.raises(ValueError, match="unknown version"):
        MigPartedConfig(version="v2", mig_configs={"x": [MigConfigEntry(devices="all", mig_enabled=False)]})  # type: ignore[arg-type]
    assert MigPartedConfig(mig_configs={"x": [MigConfigEntry(devices="all", mig_enabled=False)]}).version == "v1"


def test_render_uses_the_real_key_names_and_sorts_config_names() -> None:
    config = parse_config(SPEC_EXAMPLE)
    text = render_config(config)
    assert text.startswith("version: v1\nmig-configs:\n")
    for key in ("devices:", "mig-enabled:", "mig-devices:", "device-filter:"):
        assert key in text
    assert "mig_" not in text and "device_filter" not in text
    names = re.findall(r"^  (\S+):$", text, flags=re.M)
    assert names == sorted(names) == ["all-disabled", "mixed-models", "team-split"]
    assert text.index("devices: [0, 1]") < text.index("devices: [2]") < text.index("devices: [3]")


def test_render_is_independent_of_map_insertion_order() -> None:
    first = MigConfigEntry(devices=[0], mig_enabled=True, mig_devices={"1g.5gb": 1, "3g.20gb": 1})
    second = MigConfigEntry(devices=[0], mig_enabled=True, mig_devices={"3g.20gb": 1, "1g.5gb": 1})
    assert first == second
    assert render_config(MigPartedConfig(mig_configs={"a": [first]})) == render_config(
        MigPartedConfig(mig_configs={"a": [second]})
    )
    assert config_name([first]) == config_name([second])


# --- round trip over random valid files -------------------------------------------------------------------

PROFILE_NAMES = sorted(
    {p.name for m in CATALOG.models for p in m.profiles} | {"1c.3g.20gb", "1g.24gb-me", "2g.48gb+me.all"}
)
PCI_IDS = sorted({pci for m in CATALOG.models for pci in m.pci_device_ids})
NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,30}", fullmatch=True),
    st.sampled_from(["all-disabled", "all-1g.5gb.me", "123", "yes", "null", "true", "1.5", "~", "a b", "x: y"]),
)
FILTER = st.one_of(
    st.sampled_from(PCI_IDS),
    st.builds(lambda dev, sub: f"{dev}:{sub}", st.sampled_from(PCI_IDS), st.sampled_from(["0x153210DE", "0x0000ffff"])),
)


@st.composite
def entries(draw: st.DrawFn) -> MigConfigEntry:
    devices: Any = draw(st.one_of(st.just("all"), st.lists(st.integers(0, 15), max_size=4)))
    enabled = draw(st.booleans())
    mig_devices: dict[str, int] | None
    if enabled:
        mig_devices = draw(st.dictionaries(st.sampled_from(PROFILE_NAMES), st.integers(0, 7), max_size=4))
        if mig_devices and not any(mig_devices.values()):
            mig_devices[next(iter(mig_devices))] = 1
    else:
        mig_devices = draw(st.sampled_from([None, {}]))
    device_filter = draw(st.one_of(st.none(), st.just(""), FILTER, st.lists(FILTER, max_size=3)))
    return MigConfigEntry(devices=devices, mig_enabled=enabled, mig_devices=mig_devices, device_filter=device_filter)


CONFIGS = st.builds(
    lambda configs: MigPartedConfig(mig_configs=configs),
    st.dictionaries(NAMES, st.lists(entries(), min_size=1, max_size=4), min_size=1, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(CONFIGS)
def test_render_then_parse_gives_back_the_same_config(config: MigPartedConfig) -> None:
    text = render_config(config)
    again = parse_config(text)
    assert again == config
    assert render_config(again) == text


# --- node entries -----------------------------------------------------------------------------------------


def covered(entries: list[MigConfigEntry]) -> list[int]:
    indices: list[int] = []
    for entry in entries:
        assert isinstance(entry.devices, list), "node entries name GPUs by index"
        indices += entry.devices
    return indices


def test_node_entry_covers_every_gpu_once_and_groups_identical_settings() -> None:
    gpus = [
        (3, H100, {"3g.40gb": 2}),
        (0, H100, None),
        (1, H100, {"3g.40gb": 2, "1g.10gb": 0}),
        (2, H100, {}),
        (4, H100, None),
    ]
    result = node_entry(gpus)
    assert sorted(covered(result)) == [0, 1, 2, 3, 4]
    assert len(covered(result)) == 5
    assert result == [
        MigConfigEntry(devices=[0, 4], mig_enabled=False),
        MigConfigEntry(devices=[1, 3], mig_enabled=True, mig_devices={"3g.40gb": 2}),
        MigConfigEntry(devices=[2], mig_enabled=True, mig_devices={}),
    ]


def test_node_entry_drops_zero_counts_and_canonicalises_names() -> None:
    (entry,) = node_entry([(0, CATALOG.model("A100-80GB"), {"3g.39gb": 1, "1g.10gb": 0, "2g.20gb": 1})])
    assert entry.mig_devices == {"3g.40gb": 1, "2g.20gb": 1}
    assert all(count > 0 for count in (entry.mig_devices or {}).values())


def test_node_entry_none_means_mig_disabled_and_empty_means_enabled_without_devices() -> None:
    disabled, enabled = node_entry([(0, A100, None), (1, A100, {"1g.5gb": 0})])
    assert disabled == MigConfigEntry(devices=[0], mig_enabled=False)
    assert disabled.mig_devices is None
    assert enabled == MigConfigEntry(devices=[1], mig_enabled=True, mig_devices={})


def test_node_entry_mixes_models_by_index() -> None:
    result = node_entry([(0, A100, {"1g.5gb": 7}), (1, A30, {"2g.12gb": 2})])
    assert [e.devices for e in result] == [[0], [1]]
    config = with_entry(None, config_name(result), result)
    assert parse_config(render_config(config)) == config


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        (
            [(0, A100, {"4g.20gb": 1, "3g.20gb": 2})],
            "GPU 0 (A100-40GB): mig-devices {4g.20gb=1,3g.20gb=2} is infeasible",
        ),
        ([(0, A100, None), (2, A100, {"1g.5gb": 8})], "GPU 2 (A100-40GB)"),
        ([(1, A100, {"1g.10gb": 4, "1g.5gb": 1})], "GPU 1 (A100-40GB): mig-devices {1g.10gb=4,1g.5gb=1} is infeasible"),
        ([(0, A30, {"1g.10gb": 1})], "GPU 0 (A30"),
        ([(0, A100, {"1g.5gb": -1})], "GPU 0 (A100-40GB)"),
        ([(0, A100, None), (0, A100, None)], "GPU index 0 is listed more than once"),
        ([(-1, A100, None)], "GPU index must be >= 0"),
        ([], "at least one GPU"),
    ],
)
def test_node_entry_rejects_what_cannot_be_applied(
    gpus: list[tuple[int, Any, dict[str, int] | None]], message: str
) -> None:
    with pytest.raises(MigoptError, match=re.escape(message)):
        node_entry(gpus)


def test_a_feasible_map_that_needs_placement_care_is_accepted() -> None:
    (entry,) = node_entry([(0, A100, {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 2})])
    assert entry.mig_devices == {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 2}


# --- names ------------------------------------------------------------------------------------------------


def test_config_name_is_deterministic_content_derived_and_a_label_value() -> None:
    one = node_entry([(0, A100, {"3g.20gb": 2}), (1, A100, None)])
    same = node_entry([(1, A100, None), (0, A100, {"3g.20gb": 2})])
    other = node_entry([(0, A100, {"3g.20gb": 1}), (1, A100, None)])
    assert config_name(one) == config_name(same)
    assert config_name(one) != config_name(other)
    assert re.fullmatch(r"migopt-[0-9a-f]{10}", config_name(one))
    assert is_label_value(config_name(one))


@settings(max_examples=100, deadline=None)
@given(st.lists(entries(), min_size=1, max_size=3), st.lists(entries(), min_size=1, max_size=3))
def test_config_names_differ_exactly_when_content_differs(
    first: list[MigConfigEntry], second: list[MigConfigEntry]
) -> None:
    name = config_name(first)
    assert is_label_value(name) and len(name) <= 63
    assert (name == config_name(second)) == (first == second)


def test_config_name_needs_entries() -> None:
    with pytest.raises(MigoptError):
        config_name([])


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("migopt-0123456789", True),
        ("all-1g.5gb.me", True),
        ("a", True),
        ("", True),
        ("-a", False),
        ("a-", False),
        ("a+b", False),
        ("x" * 63, True),
        ("x" * 64, False),
    ],
)
def test_label_values(text: str, valid: bool) -> None:
    assert is_label_value(text) is valid


# --- writing and garbage collection -----------------------------------------------------------------------


def test_empty_config_is_just_all_disabled() -> None:
    config = empty_config()
    assert config.mig_configs == {"all-disabled": [MigConfigEntry(devices="all", mig_enabled=False)]}
    assert parse_config(render_config(config)) == config


def test_with_entry_adds_and_is_idempotent() -> None:
    node = node_entry([(0, A100, {"7g.40gb": 1})])
    name = config_name(node)
    config = with_entry(None, name, node)
    assert set(config.mig_configs) == {"all-disabled", name}
    assert with_entry(config, name, node_entry([(0, A100, {"7g.40gb": 1})])) == config
    assert render_config(with_entry(config, name, node)) == render_config(config)
    other = node_entry([(0, A100, {"1g.5gb": 7})])
    both = with_entry(config, config_name(other), other)
    assert set(both.mig_configs) == {"all-disabled", name, config_name(other)}
    assert config.mig_configs.keys() == {"all-disabled", name}, "inputs are not modified"


def test_with_entry_refuses_a_name_with_other_content() -> None:
    node = node_entry([(0, A100, {"7g.40gb": 1})])
    config = with_entry(None, config_name(node), node)
    with pytest.raises(MigoptError, match="different content"):
        with_entry(config, config_name(node), node_entry([(0, A100, None)]))
    with pytest.raises(MigoptError, match="different content"):
        with_entry(config, "all-disabled", node)


@pytest.mark.parametrize("name", ["", "bad name", "-x", "y" * 64])
def test_with_entry_refuses_names_that_cannot_be_labels(name: str) -> None:
    with pytest.raises(MigoptError, match="label value"):
        with_entry(None, name, node_entry([(0, A100, None)]))


def test_with_entry_refuses_no_entries() -> None:
    with pytest.raises(MigoptError):
        with_entry(None, "migopt-0000000000", [])


def test_garbage_collect_drops_only_unused_migopt_configs() -> None:
    config = parse_config(OPERATOR_STYLE)
    layouts = [node_entry([(0, A100, {"7g.40gb": 1})]), node_entry([(0, A100, None)]), node_entry([(0, A100, {})])]
    names = [config_name(e) for e in layouts]
    for name, node in zip(names, layouts, strict=True):
        config = with_entry(config, name, node)
    config = with_entry(config, "migopt-pinned", layouts[0])
    cleaned = garbage_collect(config, {names[1], "not-in-file"}, keep={"migopt-pinned"})
    assert set(cleaned.mig_configs) == set(parse_config(OPERATOR_STYLE).mig_configs) | {names[1], "migopt-pinned"}
    assert cleaned.mig_configs[names[1]] == layouts[1]
    assert garbage_collect(cleaned, {names[1]}, keep={"migopt-pinned"}) == cleaned


def test_garbage_collect_never_empties_the_file() -> None:
    node = node_entry([(0, A100, {"7g.40gb": 1})])
    only_ours = MigPartedConfig(mig_configs={config_name(node): node})
    cleaned = garbage_collect(only_ours, set())
    assert cleaned == empty_config()
    assert parse_config(render_config(cleaned)) == cleaned
    assert garbage_collect(only_ours, {config_name(node)}) == only_ours


def test_garbage_collect_keeps_the_standard_names_by_default() -> None:
    config = parse_config(OPERATOR_STYLE)
    assert garbage_collect(config, set()) == config
