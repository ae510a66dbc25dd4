"""The owned mig-parted file is put together from each named config's own YAML; it must be the very text the whole
file rendered at once gives, whatever the names and entries (quoted, long, non-ASCII, shared lists), and a config
kept instead of parsing its own text back must be what the parse gives."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nvidia_protocol.migparted import (
    MigConfigEntry,
    MigPartedConfig,
    _render_whole,
    parse_config,
    reads_back,
    render_config,
)
from solver.catalog import load_catalog

CATALOG = load_catalog()
PROFILES = sorted({p.name for m in CATALOG.models for p in m.profiles} | {"1c.3g.20gb", "1g.24gb-me"})
PCI_IDS = sorted({pci for m in CATALOG.models for pci in m.pci_device_ids})
NAMES = st.one_of(
    st.from_regex(r"migopt-[0-9a-f]{10}", fullmatch=True),
    st.sampled_from(["all-disabled", "all-1g.10gb", "123", "yes", "null", "~", "1e3", "a b", "x: y", "- z", "#c"]),
    st.text(min_size=1, max_size=12),  # anything a hostile file may name a config: quotes, breaks, non-ASCII
    st.text(alphabet="ab", min_size=129, max_size=140),  # too long for a simple key
)
FILTERS = st.one_of(st.sampled_from(PCI_IDS), st.sampled_from(PCI_IDS).map(lambda pci: pci + "\n"))


@st.composite
def entries(draw: st.DrawFn) -> MigConfigEntry:
    devices: Any = draw(st.one_of(st.just("all"), st.lists(st.integers(0, 15), max_size=4)))
    enabled = draw(st.booleans())
    mig_devices: dict[str, int] | None = None
    if enabled:
        mig_devices = draw(st.dictionaries(st.sampled_from(PROFILES), st.integers(0, 7), max_size=3))
        if mig_devices and not any(mig_devices.values()):
            mig_devices[next(iter(mig_devices))] = 1
    device_filter = draw(st.one_of(st.none(), st.just(""), FILTERS, st.lists(FILTERS, max_size=2)))
    return MigConfigEntry(devices=devices, mig_enabled=enabled, mig_devices=mig_devices, device_filter=device_filter)


@st.composite
def configs(draw: st.DrawFn) -> MigPartedConfig:
    """A file whose configs may share entries (and so lists) with each other, as code building one may."""
    pool = draw(st.lists(entries(), min_size=1, max_size=5))
    named = draw(
        st.dictionaries(
            NAMES, st.lists(st.sampled_from(range(len(pool))), min_size=1, max_size=3), min_size=1, max_size=5
        )
    )
    return MigPartedConfig(mig_configs={name: [pool[i] for i in picks] for name, picks in named.items()})


@settings(max_examples=300, deadline=None)
@given(st.lists(configs(), min_size=1, max_size=4))
def test_a_file_put_together_from_pieces_is_the_whole_files_text(files: list[MigPartedConfig]) -> None:
    for config in [*files, *files]:  # the second round reads every piece back from what the first one kept
        assert render_config(config) == _render_whole(config)


def test_a_shared_list_is_anchored_as_the_whole_file_would_be() -> None:
    shared = MigConfigEntry(devices=[0, 1], mig_enabled=False)
    config = MigPartedConfig(mig_configs={"a": [shared], "b": [shared]})
    text = render_config(config)
    assert text == _render_whole(config) and "&id" in text
    alone = MigPartedConfig(mig_configs={"a": [shared], "b": [MigConfigEntry(devices=[0, 1], mig_enabled=False)]})
    assert render_config(alone) == _render_whole(alone) and "&id" not in render_config(alone)


@settings(max_examples=300, deadline=None)
@given(configs())
def test_a_config_that_reads_back_is_what_parsing_its_text_gives(config: MigPartedConfig) -> None:
    if not reads_back(config):
        return
    again = parse_config(render_config(config))
    assert again == config
    assert render_config(again) == render_config(config)
    listed = [e for es in config.mig_configs.values() for e in es]
    lists = [v for e in listed for v in (e.devices, e.device_filter) if isinstance(v, list)]
    assert len({id(v) for v in lists}) == len(lists)  # nothing a parsed file could not also hold
