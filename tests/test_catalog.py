import logging

import pytest

from solver.catalog import load_catalog
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
        "GH200-144GB",
        "B200",
        "GB200",
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


def test_every_model_has_me_variants_and_a_whole_gpu_profile() -> None:
    for model in CATALOG.models:
        assert any(p.name.endswith("+me") for p in model.profiles), model.key
        whole = [p for p in model.profiles if p.memory_slices == model.memory_slices]
        assert len(whole) == 1 and whole[0].starts == (0,), model.key


def test_unverified_facts_are_flagged() -> None:
    assert CATALOG.model("A100-40GB").unverified == ()
    assert "profiles.starts" in CATALOG.model("H200").unverified
    assert "profiles.starts" in CATALOG.model("B200").unverified
    assert "profiles.id" in CATALOG.model("GB200").unverified


def test_driver_name_drift_maps_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = CATALOG.model("A100-80GB")
    with caplog.at_level(logging.WARNING):
        assert model.profile("3g.39gb").name == "3g.40gb"
        assert model.profile("7g.79gb").name == "7g.80gb"
    assert "driver-name-drift" in caplog.text


def test_unknown_and_malformed_profiles() -> None:
    model = CATALOG.model("A100-40GB")
    with pytest.raises(MigoptError, match=r"unknown MIG profile '9g\.1gb' for A100-40GB"):
        model.profile("9g.1gb")
    with pytest.raises(MigoptError, match="malformed"):
        model.profile("3g-20gb")
