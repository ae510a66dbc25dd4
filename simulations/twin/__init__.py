"""A digital twin of a Kubernetes GPU cluster running the NVIDIA GPU Operator, on a simulated clock.

`Twin.from_snapshot(snapshot, mig_config_text)` builds one; it implements the controller's `ClusterPort`.
"""

from simulations.twin.clock import SimClock
from simulations.twin.cluster import Twin
from simulations.twin.mig_manager import MigManagerTimings
from simulations.twin.state import EvictionRecord, MigRun, PodPhase, TwinPod

__all__ = ["EvictionRecord", "MigManagerTimings", "MigRun", "PodPhase", "SimClock", "Twin", "TwinPod"]
