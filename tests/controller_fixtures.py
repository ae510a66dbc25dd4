"""The controller as the composition root wires it: the reconcile loop with the mig-manager label protocol."""

from __future__ import annotations

from collections.abc import Callable

from optimizer.actuators.mig_manager import MigManagerActuator
from optimizer.controller.observer import ControllerObserver
from optimizer.controller.port import ClusterPort
from optimizer.controller.reconcile import Controller, ControllerSettings


def mig_controller(
    port: ClusterPort,
    settings: ControllerSettings | None = None,
    *,
    observer: ControllerObserver | None = None,
    may_act: Callable[[], bool] = lambda: True,
) -> Controller:
    settings = settings or ControllerSettings()
    actuator = MigManagerActuator(settings.actuation)
    return Controller(port, settings, actuator=actuator, observer=observer, may_act=may_act)
