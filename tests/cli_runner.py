"""Run the real `migopt` entry point in-process, the way the console script does."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from migopt.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> CliResult:
    """Call `main()` with these arguments; return the exit code and what it printed."""
    saved = sys.argv
    sys.argv = ["migopt", *args]
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def run_cli_process(*args: str) -> CliResult:
    """Run `python -m migopt` as a separate process: what a user's shell sees, tracebacks included."""
    done = subprocess.run([sys.executable, "-m", "migopt", *args], capture_output=True, text=True, timeout=60)
    return CliResult(done.returncode, done.stdout, done.stderr)
