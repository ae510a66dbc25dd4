"""`migopt simulate --serve-metrics`: the run's controller metrics stay served after the report, until Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

SCENARIO = """name: small
cluster: {nodes: 2, gpus_per_node: 2, models: [A100-40GB], initial_config: all-3g.20gb}
workload:
  kind: synthetic
  spec: {arrival_rate_per_s: 0.02, duration_mean_s: 600, profile_mix: {1g.5gb: 3, 2g.10gb: 1}, pods: 20}
horizon_s: 1800
policies: [optimal]
"""


def test_simulate_serves_its_metrics_until_interrupted(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    command = [sys.executable, "-m", "migopt", "simulate", str(scenario), "--serve-metrics", "0", "-o", "json"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r":(\d+)/metrics", line)
        assert found, line
        with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert re.search(r"^migopt_plans_total\{[^}]*\} [1-9]", text, re.MULTILINE), text[:2000]
        assert "migopt_pending_pods" in text
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
