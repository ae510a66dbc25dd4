"""The reasons of the Kubernetes Events the controller records: one enum for the code that records them, the
metrics exporter that counts them, the event writer that types them, and the dashboard that queries them."""

from __future__ import annotations

from enum import StrEnum


class EventReason(StrEnum):
    PLANNED = "MigPlanned"
    UNPLACED = "MigUnplaced"
    INVALID_REQUEST = "MigInvalidRequest"
    EVICTED = "MigEvicted"
    EVICTION_BLOCKED = "MigEvictionBlocked"
    RECONFIGURATION_STARTED = "MigReconfigurationStarted"
    RECONFIGURATION_PHASE = "MigReconfigurationPhase"
    RECONFIGURATION_RETRY = "MigReconfigurationRetry"
    RECONFIGURED = "MigReconfigured"
    RECONFIGURATION_FAILED = "MigReconfigurationFailed"
    RECONFIGURATION_ABANDONED = "MigReconfigurationAbandoned"
    REPORT_REJECTED = "MigReportRejected"  # a node agent report failed verification (the adapter records it)
    ANNOTATIONS_IGNORED = "MigAnnotationsIgnored"
    NODE_QUARANTINED = "MigNodeQuarantined"
    NODE_SUSPECT = "MigNodeSuspect"
    OPERANDS_LEFT_PAUSED = "MigOperandsLeftPaused"  # a finished mig-manager run left deploy labels paused
    RUN_TIMED_OUT = "MigRunTimedOut"  # `pending` outlived mig-manager's waits: the run ended without a state
    OPERANDS_RESTORED = "MigOperandsRestored"  # migopt restored the deploy labels on a node it changed
    RUN_RETRIGGERED = "MigRunRetriggered"  # migopt removed and set the config label again after a timed-out run


WARNING_REASONS = frozenset(
    {
        EventReason.UNPLACED,
        EventReason.EVICTION_BLOCKED,
        EventReason.RECONFIGURATION_FAILED,
        EventReason.RECONFIGURATION_ABANDONED,
        EventReason.INVALID_REQUEST,
        EventReason.REPORT_REJECTED,
        EventReason.ANNOTATIONS_IGNORED,
        EventReason.NODE_QUARANTINED,
        EventReason.NODE_SUSPECT,
        EventReason.OPERANDS_LEFT_PAUSED,
        EventReason.RUN_TIMED_OUT,
    }
)
"""Recorded as `type: Warning`; every other reason is `Normal`."""
