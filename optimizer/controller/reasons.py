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
    }
)
"""Recorded as `type: Warning`; every other reason is `Normal`."""
