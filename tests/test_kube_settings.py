"""`migopt run`'s settings: flags over environment over the YAML file over defaults; bad ones are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from migopt.settings import load_settings
from solver.errors import MigoptError


def test_flags_beat_environment_beat_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "settings.yaml"
    file.write_text("mode: enforce\ninterval_s: 9\ncontroller: {planner: greedy}\nkube: {mig_config_name: cm}\n")
    monkeypatch.setenv("MIGOPT_INTERVAL_S", "3")
    monkeypatch.setenv("MIGOPT_LEADER__LEASE_NAME", "other")
    settings = load_settings(file, mode="recommend")
    assert settings.mode == "recommend"  # flag
    assert settings.interval_s == 3  # environment over file
    assert settings.leader.lease_name == "other"
    assert settings.controller.planner == "greedy"  # file
    assert settings.kube.mig_config_name == "cm"
    assert settings.kube.mig_config_namespace == "gpu-operator"  # default
    assert load_settings(None).mode == "recommend"


def test_the_shipped_settings_file_loads() -> None:
    settings = load_settings(Path(__file__).parent.parent / "deploy" / "base" / "settings.yaml")
    assert settings.mode == "recommend" and settings.metrics_port == 8080


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("mode: sometimes\n", "settings: mode: "),
        ("controller: {batch_idle_s: -1}\n", "controller.batch_idle_s"),
        ("leader: {lease_duration_s: 1}\n", "leader"),
        ("unknown_key: 1\n", "unknown_key"),
        ("mode: [unclosed\n", "settings"),
    ],
)
def test_a_bad_settings_file_is_one_line(tmp_path: Path, text: str, match: str) -> None:
    file = tmp_path / "settings.yaml"
    file.write_text(text)
    with pytest.raises(MigoptError, match=match) as caught:
        load_settings(file)
    assert "\n" not in str(caught.value)


def test_a_missing_settings_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MigoptError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
