"""checkov on every rendered variant of `deploy/`: no failed check, and every finding kept on purpose is a
`checkov.io/skip<N>` annotation with a reason and a row of deploy/README.md's "Hardening checks" table.

checkov pins old versions of packages this project also uses (packaging, networkx, boto3), so it lives in a
virtual environment of its own: `.venv-checkov` at the repository root (gitignored; `MIGOPT_CHECKOV_VENV` moves
it), created on the first run and reused after that. The test skips, saying why, only when that installation is
impossible (no package index). checkov runs with `--skip-download`: it never calls out.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy import VARIANTS

REPO = Path(__file__).resolve().parent.parent
CHECKOV_VERSION = "3.3.30"
VENV = Path(os.environ.get("MIGOPT_CHECKOV_VENV", REPO / ".venv-checkov"))


def _checkov() -> Path:
    """The checkov executable, installing it into its own virtual environment once per machine."""
    executable = VENV / "bin" / "checkov"
    installed = VENV / f".migopt-checkov-{CHECKOV_VERSION}"  # written only after a complete installation
    if installed.exists():
        return executable
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f"{VENV.name}.lock", "w") as lock:  # another test run may be installing it too
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed.exists():
            return executable
        steps = (
            [sys.executable, "-m", "venv", "--clear", str(VENV)],
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", f"checkov=={CHECKOV_VERSION}"],
        )
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
            if done.returncode != 0:
                lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
                pytest.skip(f"checkov {CHECKOV_VERSION} could not be installed into {VENV}: {lines[-1:]}")
        installed.touch()
    return executable


def _results(report: Any) -> dict[str, list[dict[str, Any]]]:
    """checkov's JSON: one report object, or a list of them (one per framework)."""
    reports = report if isinstance(report, list) else [report]
    (kubernetes,) = [r for r in reports if r.get("check_type") == "kubernetes"]
    results: dict[str, list[dict[str, Any]]] = kubernetes["results"]
    return results


def _documented_checks() -> set[str]:
    readme = (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Hardening checks\n") :]
    section = section[: section.index("\n## ", 1)]
    table = [line for line in section.splitlines() if line.startswith("| `CKV")]
    return {check for line in table for check in re.findall(r"`(CKV2?_K8S_\d+)`", line.split("|")[1])}


def test_checkov_finds_nothing_but_the_documented_exceptions(tmp_path: Path) -> None:
    checkov = _checkov()
    for variant, folder in VARIANTS.items():
        done = subprocess.run(
            ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        (tmp_path / f"{variant}.yaml").write_text(done.stdout, encoding="utf-8")
    done = subprocess.run(
        [str(checkov), "--skip-download", "--framework", "kubernetes", "-d", str(tmp_path), "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr
    results = _results(json.loads(done.stdout))
    failed = [f"{r['check_id']} {r['resource']} ({Path(r['file_path']).name})" for r in results["failed_checks"]]
    assert not failed, f"checkov failed checks: {failed}"
    scanned = {Path(r["file_path"]).stem for r in results["passed_checks"]}
    assert scanned == set(VARIANTS), f"checkov passed nothing in {set(VARIANTS) - scanned}"
    skipped = results["skipped_checks"]
    assert all(r["check_result"].get("suppress_comment", "").strip() for r in skipped), "a skip without a reason"
    documented = _documented_checks()
    assert {r["check_id"] for r in skipped} == documented, "deploy/README.md's Hardening checks table is out of date"
