"""Audit trail: one record for every PHI access and security event.

Records are DICOM PS3.15 A.5 audit messages (RFC 3881 derived XML), kept locally in a
hash chain (``audit_log``) and forwarded over syslog TLS when a repository is
configured. Adapters build events with :mod:`openvna.security.audit.events` and hand
them to :meth:`AuditTrail.record`, which never blocks on I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from openvna.security.principal import Principal


class AuditEventId(StrEnum):
    """DICOM audit message event IDs (PS3.15 A.5.3, CID 403 'DICOM Audit Event ID')."""

    APPLICATION_ACTIVITY = "110100"
    AUDIT_LOG_USED = "110101"
    BEGIN_TRANSFERRING = "110102"
    INSTANCES_ACCESSED = "110103"
    INSTANCES_TRANSFERRED = "110104"
    STUDY_DELETED = "110105"
    EXPORT = "110106"
    IMPORT = "110107"
    NETWORK_ENTRY = "110108"
    ORDER_RECORD = "110109"
    PATIENT_RECORD = "110110"
    PROCEDURE_RECORD = "110111"
    QUERY = "110112"
    SECURITY_ALERT = "110113"
    USER_AUTHENTICATION = "110114"


class Outcome:
    """EventOutcomeIndicator (RFC 3881)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True)
class Code:
    """A coded value (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class StudyRef:
    """A study an event touched (ParticipantObjectIdentification, role code 3, type 2)."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    sop_classes: tuple[tuple[str, int], ...] = ()  # (SOP Class UID, number of instances)


@dataclass(frozen=True)
class AuditEvent:
    """One audit message before it is rendered to XML.

    ``requestor`` is the principal that caused the event; ``source`` and
    ``destination`` name the other active participants (an AE title or URL with its
    address) where the event moved data.
    """

    event_id: AuditEventId
    action: str  # EventActionCode: C R U D E
    outcome: int = Outcome.SUCCESS
    type_code: Code | None = None  # EventTypeCode (e.g. 110122 Login)
    requestor: Principal | None = None
    address: str = ""  # network address of the requestor
    source: str = ""  # e.g. "AE:CT01@10.0.0.5" or the archive itself
    destination: str = ""
    studies: tuple[StudyRef, ...] = ()
    patient_ids: tuple[str, ...] = ()
    query: str = ""  # the query as received (QIDO query string, C-FIND identifier)
    query_sop_class: str = ""
    description: str = ""  # EventOutcomeDescription, free text
    recorded_at: float = field(default_factory=time.time)


class AuditTrail(Protocol):
    """Where adapters send events; implementations must not block the caller on I/O."""

    def record(self, event: AuditEvent) -> None: ...

    def flush(self) -> None:
        """Wait until every event recorded so far is in the local chain."""
        ...

    def close(self) -> None: ...


class NullAuditTrail:
    """Audit switched off (``security.audit.enabled = false``)."""

    def record(self, event: AuditEvent) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
