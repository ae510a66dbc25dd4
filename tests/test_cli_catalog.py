import json

import pytest
import yaml

from solver.catalog import load_catalog
from tests.cli_runner import run_cli, run_cli_process


def test_catalog_json_round_trips_through_every_name(capsys: pytest.CaptureFixture[str]) -> None:
    everything = json.loads(run_cli(capsys, "catalog", "-o", "json").out)
    assert [m["key"] for m in everything] == list(load_catalog().keys)
    for entry in everything:
        names = [entry["key"], entry["product"], *entry["aliases"], *entry["gfd_products"], *entry["nvml_names"]]
        for name in [*names, *entry["pci_device_ids"]]:
            result = run_cli(capsys, "catalog", "--gpu", name, "-o", "json")
            assert result.code == 0 and json.loads(result.out) == [entry], name


def test_catalog_yaml_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    [entry] = yaml.safe_load(run_cli(capsys, "catalog", "--gpu", "A30", "-o", "yaml").out)
    assert entry["key"] == "A30" and len(entry["profiles"]) == 5
    table = run_cli(capsys, "catalog", "--gpu", "H200").out
    assert "7g.141gb" in table and "unverified: profiles.starts" in table


def test_geometries_json_is_every_feasible_map(capsys: pytest.CaptureFixture[str]) -> None:
    maps = json.loads(run_cli(capsys, "geometries", "--gpu", "A100-40GB", "-o", "json").out)
    assert len(maps) == 127 and {"7g.40gb": 1} in maps and {"1g.5gb": 7} in maps
    maximal = json.loads(run_cli(capsys, "geometries", "--gpu", "A100-40GB", "--maximal", "-o", "json").out)
    assert {"4g.20gb": 1, "3g.20gb": 1} in maximal and {"3g.20gb": 1} not in maximal


def test_check_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    ok = run_cli(capsys, "geometries", "--gpu", "A100-40GB", "--check", "1g.5gb=2,3g.20gb=1")
    assert ok.code == 0 and "feasible" in ok.out
    bad = run_cli(capsys, "geometries", "--gpu", "A100-40GB", "--check", "3g.20gb=2,1g.5gb=1")
    assert bad.code == 1 and "needs 9 memory slices" in bad.out
    drift = run_cli(capsys, "geometries", "--gpu", "A100-80GB", "--check", "3g.39gb=2", "-o", "json")
    assert drift.code == 0 and json.loads(drift.out)["devices"] == {"3g.39gb": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["catalog", "--gpu", "V100"], "unknown GPU model 'V100'"),
        (["geometries", "--gpu", "A100-40GB", "--check", "9g.1gb=1"], "unknown MIG profile '9g.1gb'"),
        (["geometries", "--gpu", "A100-40GB", "--check", "3g-20gb=1"], "malformed MIG profile '3g-20gb'"),
        (["geometries", "--gpu", "A100-40GB", "--check", "1g.5gb=-1"], "bad --check entry"),
        (["geometries", "--gpu", "A100-40GB", "--check", "1g.5gb"], "bad --check entry"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    result = run_cli(capsys, *args)
    assert result.code == 2
    assert result.err.startswith("error: ") and message in result.err
    assert result.err.count("\n") == 1


def test_no_traceback_in_a_real_process() -> None:
    result = run_cli_process("catalog", "--gpu", "V100")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip().startswith("error: unknown GPU model")


def _has_nvml_driver() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_has_nvml_driver(), reason="this machine has an NVIDIA driver")
def test_from_nvml_without_a_driver_is_one_line_exit_2() -> None:
    result = run_cli_process("catalog", "--from-nvml")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip().startswith("error: NVML unavailable")
