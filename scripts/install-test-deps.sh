#!/usr/bin/env bash
# What the test suite needs from the system besides Python packages: a python3 that can make a virtual environment
# and Debian's real Prometheus server (the tests start it on a loopback port; promtool comes with it). Installs what
# is missing with apt when run as root; otherwise says what to install and fails. kubectl is expected on PATH (the
# machine image has it): without it the kubectl and deploy tests fail, so this warns.
set -euo pipefail

packages=()
python3 -c "import ensurepip, venv" 2>/dev/null || packages+=(python3-venv)
command -v prometheus >/dev/null || packages+=(prometheus)
if ((${#packages[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "migopt tests need Debian packages: ${packages[*]} (run this as root, or: sudo apt-get install ${packages[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  # The package starts a system Prometheus on :9090 where systemd runs; the tests start their own.
  (systemctl stop prometheus || service prometheus stop) >/dev/null 2>&1 || true
fi
command -v kubectl >/dev/null || echo "warning: kubectl is not installed: the kubectl and deploy tests will fail" >&2
exit 0
