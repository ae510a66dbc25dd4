"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kubelet_stub import serve_kubelet


@pytest.fixture
def kubelet() -> Iterator[str]:
    """A kubelet pod-resources stand-in's socket path (tests/kubelet_stub.py)."""
    with serve_kubelet() as path:
        yield path
