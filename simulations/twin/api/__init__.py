"""A facade of the Kubernetes REST API over the digital twin (not a kube-apiserver).

`TwinApiServer(twin)` serves the twin's nodes and pods, evictions, the owned mig-parted ConfigMap and a plain
store for ConfigMaps, Leases, Events, Namespaces and PodDisruptionBudgets, with resourceVersions, selectors
and watch, so the `kubernetes` client, `kubectl` and the real controller can work against a simulated cluster.
"""

from kubefacade.faults import FaultRequest, FaultRule, Faults
from kubefacade.kubeconfig import write_kubeconfig
from simulations.twin.api.bridge import ConfigMapRef
from simulations.twin.api.server import TwinApiServer

__all__ = ["ConfigMapRef", "FaultRequest", "FaultRule", "Faults", "TwinApiServer", "write_kubeconfig"]
