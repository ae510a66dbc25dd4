"""The peer policies by name: what `migopt simulate --policies` accepts besides `static:<config>` and the planners.

A peer attaches to a fresh twin whose GPUs hold the scenario's initial config and from then on acts as its system
does; the engine reads back the figures only the peer knows (`PeerRun`). `fresh_gpus` says whether the system
starts by destroying every free instance (HAMi's and the DRA driver's plugins do at start-up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from simulations.peers import dra, hami, nos
from simulations.peers.knobs import PeerKnobs
from simulations.twin.cluster import Twin


class PeerRun(Protocol):
    """A peer attached to a twin."""

    @property
    def plans(self) -> int:
        """Planning passes (nos's batches planned; 0 for per-pod allocators, which plan nothing ahead)."""
        ...

    @property
    def reconfigurations(self) -> int:
        """Node layouts changed as a whole (nos's agent applies that changed a GPU; per-pod allocators: 0)."""
        ...


Attach = Callable[[Twin, PeerKnobs, int], PeerRun]


@dataclass(frozen=True)
class Peer:
    name: str
    summary: str
    attach: Attach


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            name="nos",
            summary="nebuly nos: batched greedy repartitioning of free devices, device-plugin restart",
            attach=lambda twin, knobs, seed: nos.attach(twin, knobs.nos),
        ),
        Peer(
            name="hami",
            summary="HAMi v2.10 dynamic MIG: an instance per pod, binpack node, spread GPU",
            attach=lambda twin, knobs, seed: hami.attach(twin, knobs.hami),
        ),
        Peer(
            name="dra",
            summary="NVIDIA DRA driver DynamicMIG: an instance per claim, first fit",
            attach=lambda twin, knobs, seed: dra.attach(twin, knobs.dra, seed),
        ),
    )
}


def peer_names() -> list[str]:
    return list(PEERS)
