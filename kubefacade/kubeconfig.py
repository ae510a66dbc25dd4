"""A kubeconfig (one cluster, user and context) that `kubectl --kubeconfig` and `load_kube_config` accept."""

from __future__ import annotations

from pathlib import Path

import yaml


def kubeconfig(url: str, name: str = "migopt-twin") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {"token": "migopt-twin"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path | str, url: str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(kubeconfig(url), sort_keys=False), encoding="utf-8")
    return target
