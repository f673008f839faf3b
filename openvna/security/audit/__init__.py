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

    @property
    def meaning(self) -> str:
        """The code meaning of CID 400, written as ``originalText`` in every message."""
        return _EVENT_MEANINGS[self]


_EVENT_MEANINGS = {
    AuditEventId.APPLICATION_ACTIVITY: "Application Activity",
    AuditEventId.AUDIT_LOG_USED: "Audit Log Used",
    AuditEventId.BEGIN_TRANSFERRING: "Begin Transferring DICOM Instances",
    AuditEventId.INSTANCES_ACCESSED: "DICOM Instances Accessed",
    AuditEventId.INSTANCES_TRANSFERRED: "DICOM Instances Transferred",
    AuditEventId.STUDY_DELETED: "DICOM Study Deleted",
    AuditEventId.EXPORT: "Export",
    AuditEventId.IMPORT: "Import",
    AuditEventId.NETWORK_ENTRY: "Network Entry",
    AuditEventId.ORDER_RECORD: "Order Record",
    AuditEventId.PATIENT_RECORD: "Patient Record",
    AuditEventId.PROCEDURE_RECORD: "Procedure Record",
    AuditEventId.QUERY: "Query",
    AuditEventId.SECURITY_ALERT: "Security Alert",
    AuditEventId.USER_AUTHENTICATION: "User Authentication",
}


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
    accession_number: str = ""
    description: str = ""  # Study Description: the ParticipantObjectName of the study


@dataclass(frozen=True)
class AuditEvent:
    """One audit message before it is rendered to XML.

    ``requestor`` is the principal that caused the event; ``source`` and
    ``destination`` name the other active participants where the event moved data:
    ``""`` is the archive itself, :data:`REQUESTOR` the requestor, ``"AE:<title>@<host>"``
    a DICOM application entity, anything else (a URL, a path) is named as given.
    ``recorded_at`` is when the event happened (EventDateTime), not when it was written.
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
    query_data: bytes = b""  # the query as encoded on the wire (C-FIND identifier)
    query_transfer_syntax: str = ""  # transfer syntax of ``query_data``
    resource: str = ""  # what the event concerns (a URI; the subject of a security alert)
    claimed_user: str = ""  # the user name given when no principal was authenticated


REQUESTOR = "@requestor"
"""``source`` / ``destination`` value naming the requestor as that participant."""


def dicom_party(ae_title: str, address: str) -> str:
    """The ``source`` / ``destination`` form of a DICOM application entity."""
    return f"AE:{ae_title.strip()}@{address}"


class AuditTrail(Protocol):
    """Where adapters send events; implementations must not block the caller on I/O."""

    def record(self, event: AuditEvent) -> None: ...

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event recorded so far is in the local chain (at most
        ``timeout`` seconds when given)."""
        ...

    def close(self) -> None: ...


class NullAuditTrail:
    """Audit switched off (``security.audit.enabled = false``)."""

    def record(self, event: AuditEvent) -> None:
        return None

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None
