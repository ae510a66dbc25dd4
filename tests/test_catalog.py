import logging

import pytest
from pydantic import ValidationError

from solver.catalog import GpuModel, load_catalog
from solver.errors import MigoptError

CATALOG = load_catalog()

ISSUE_ALIASES = {
    "A100-40GB": "A100-40GB",
    "A100-80GB": "A100-80GB",
    "A30": "A30",
    "H100-80GB": "H100-80GB",
    "H100-94GB": "H100-94GB",
    "H200": "H200",
    "GH200": "H100-96GB",
    "B200": "B200",
    "GB200": "GB200",
    "H200-NVL": "H200-NVL",
    "B300": "B300",
    "GB300": "GB300",
    "RTX-PRO-6000": "RTX-PRO-6000",
    "RTX PRO 6000 Blackwell": "RTX-PRO-6000",
}


def test_covers_the_models_the_product_supports() -> None:
    assert set(CATALOG.keys) == {
        "A100-40GB",
        "A100-80GB",
        "A30",
        "H100-80GB",
        "H100-94GB",
        "H100-96GB",
        "H200",
        "H200-NVL",
        "GH200-144GB",
        "B200",
        "GB200",
        "B300",
        "GB300",
        "RTX-PRO-6000",
    }


@pytest.mark.parametrize(("alias", "key"), sorted(ISSUE_ALIASES.items()))
def test_short_aliases(alias: str, key: str) -> None:
    assert CATALOG.model(alias).key == key


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA-A100-SXM4-40GB", "A100-40GB"),  # GFD product label
        ("NVIDIA-H100-80GB-HBM3", "H100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),  # NVML name
        ("NVIDIA H100 NVL", "H100-94GB"),
        ("0x20B010DE", "A100-40GB"),  # mig-parted device filter
        ("0x20b710de", "A30"),
        ("0x2901", "B200"),
        ("NVIDIA-H200", "H200"),
        ("NVIDIA-H200-NVL", "H200-NVL"),
        ("0x233B10DE", "H200-NVL"),
        ("0x318210DE", "B300"),
        ("0x31C2", "GB300"),
        ("0x2bb510de", "RTX-PRO-6000"),
    ],
)
def test_field_names(name: str, key: str) -> None:
    assert CATALOG.model(name).key == key


def test_every_name_of_every_model_resolves_to_it() -> None:
    for model in CATALOG.models:
        names = [
            model.key,
            model.product,
            *model.aliases,
            *model.gfd_products,
            *model.nvml_names,
            *model.pci_device_ids,
        ]
        for name in names:
            assert CATALOG.model(name) is model, name


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(MigoptError) as err:
        CATALOG.model("V100")
    message = str(err.value)
    assert "V100" in message and "\n" not in message
    assert all(key in message for key in CATALOG.keys)


def test_a100_40gb_matches_the_spec_table() -> None:
    model = CATALOG.model("A100-40GB")
    rows = {p.name: (p.id, p.compute_slices, p.memory_slices, p.max_count, p.starts) for p in model.profiles}
    assert rows == {
        "1g.5gb": (19, 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        "1g.5gb+me": (20, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
        "1g.10gb": (15, 1, 2, 4, (0, 2, 4, 6)),
        "2g.10gb": (14, 2, 2, 3, (0, 2, 4)),
        "3g.20gb": (9, 3, 4, 2, (0, 4)),
        "4g.20gb": (5, 4, 4, 1, (0,)),
        "7g.40gb": (0, 7, 8, 1, (0,)),
    }


def test_a30_is_a_four_slice_gpu() -> None:
    model = CATALOG.model("A30")
    assert (model.compute_slices, model.memory_slices) == (4, 4)
    assert {p.name: p.id for p in model.profiles} == {
        "1g.6gb": 14,
        "1g.6gb+me": 21,
        "2g.12gb": 5,
        "2g.12gb+me": 6,
        "4g.24gb": 0,
    }


def test_every_model_has_me_variants_and_one_plain_whole_gpu_profile() -> None:
    for model in CATALOG.models:
        assert any(p.name.endswith("+me") for p in model.profiles), model.key
        whole = [p for p in model.profiles if p.memory_slices == model.memory_slices]
        assert all(p.starts == (0,) and p.max_count == 1 for p in whole), model.key
        assert len([p for p in whole if "+" not in p.name and "-" not in p.name]) == 1, model.key


def test_the_rtx_pro_6000_is_a_four_slice_gpu_with_graphics_and_media_variants() -> None:
    model = CATALOG.model("RTX-PRO-6000")
    assert (model.compute_slices, model.memory_slices) == (4, 4)
    rows = {p.name: (p.compute_slices, p.memory_slices, p.max_count, p.starts) for p in model.profiles}
    assert rows == {
        "1g.24gb": (1, 1, 4, (0, 1, 2, 3)),
        "1g.24gb+me": (1, 1, 1, (0, 1, 2, 3)),
        "1g.24gb+gfx": (1, 1, 4, (0, 1, 2, 3)),
        "1g.24gb+me.all": (1, 1, 1, (0, 1, 2, 3)),
        "1g.24gb-me": (1, 1, 4, (0, 1, 2, 3)),
        "2g.48gb": (2, 2, 2, (0, 2)),
        "2g.48gb+gfx": (2, 2, 2, (0, 2)),
        "2g.48gb+me.all": (2, 2, 1, (0, 2)),
        "2g.48gb-me": (2, 2, 2, (0, 2)),
        "4g.96gb": (4, 4, 1, (0,)),
        "4g.96gb+gfx": (4, 4, 1, (0,)),
    }


def test_the_h200_boards_share_one_profile_table() -> None:
    sxm, nvl = CATALOG.model("H200"), CATALOG.model("H200-NVL")
    assert sxm.profiles == nvl.profiles and sxm.pci_device_ids != nvl.pci_device_ids


def test_unverified_facts_are_flagged() -> None:
    assert CATALOG.model("A100-40GB").unverified == ()
    assert "profiles.starts" in CATALOG.model("H200").unverified
    assert "profiles.starts" in CATALOG.model("B200").unverified
    assert "profiles.id" in CATALOG.model("GB200").unverified
    for key in ("B300", "GB300", "RTX-PRO-6000"):  # no -lgip output and no NVML name seen for these yet
        assert {"profiles.id", "profiles.starts", "profiles.mib", "nvml_names"} <= set(CATALOG.model(key).unverified)


def test_unverified_must_name_a_fact_of_the_model() -> None:
    a30 = CATALOG.model("A30")
    body = a30.model_dump(exclude={"unverified", "profiles"}) | {"profiles": a30.profiles}
    assert GpuModel(**body, unverified=("nvml_names", "profiles.sm")).unverified == ("nvml_names", "profiles.sm")
    with pytest.raises(ValidationError, match=r"unverified names no fact: placements, profiles\.colour"):
        GpuModel(**body, unverified=("profiles.colour", "placements"))


def test_driver_name_drift_maps_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = CATALOG.model("A100-80GB")
    with caplog.at_level(logging.WARNING):
        assert model.profile("3g.39gb").name == "3g.40gb"
        assert model.profile("7g.79gb").name == "7g.80gb"
    assert "driver-name-drift" in caplog.text


def test_gb200_pre_production_names_are_drift() -> None:
    model = CATALOG.model("GB200")
    drifted = {"1g.24gb": "1g.23gb", "1g.24gb+me": "1g.23gb+me", "3g.95gb": "3g.93gb", "4g.95gb": "4g.93gb",
               "7g.189gb": "7g.186gb"}  # fmt: skip
    assert {name: getattr(model.resolve(name), "name", None) for name in drifted} == drifted


def test_resolve_is_silent_and_none_for_unknown_names(caplog: pytest.LogCaptureFixture) -> None:
    model = CATALOG.model("A100-80GB")
    with caplog.at_level(logging.WARNING):
        assert model.resolve("3g.39gb") is model.profile("3g.40gb")
        assert model.resolve("1g.10gb") is model.profile("1g.10gb")
        assert model.resolve("1g.5gb") is None
    assert "driver-name-drift" not in caplog.text


def test_unknown_and_malformed_profiles() -> None:
    model = CATALOG.model("A100-40GB")
    with pytest.raises(MigoptError, match=r"unknown MIG profile '9g\.1gb' for A100-40GB"):
        model.profile("9g.1gb")
    with pytest.raises(MigoptError, match="malformed"):
        model.profile("3g-20gb")
