"""Constructors for the audit events adapters record (PS3.15 A.5.3).

Adapters call these rather than building :class:`AuditEvent` by hand, so each event
kind has one shape everywhere (DIMSE, DICOMweb, REST, CLI).
"""

from __future__ import annotations

from collections.abc import Iterable

from openvna.security.audit import AuditEvent, AuditEventId, Code, Outcome, StudyRef
from openvna.security.principal import Principal

LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = Code("110127", "DCM", "Emergency Override Started")
NETWORK_CONFIGURATION = Code("110128", "DCM", "Network Configuration")
SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
UNAUTHORIZED_ACCESS = Code("110135", "DCM", "Unauthorized Access Attempt")  # hmm see H3
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110136", "DCM", "User security Attributes Changed")


def _outcome(success: bool) -> int:
    return Outcome.SUCCESS if success else Outcome.MINOR_FAILURE


def application_activity(started: bool, principal: Principal | None = None) -> AuditEvent:
    return AuditEvent(
        AuditEventId.APPLICATION_ACTIVITY,
        "E",
        type_code=APPLICATION_START if started else APPLICATION_STOP,
        requestor=principal,
    )


def user_authentication(
    principal: Principal | None,
    address: str,
    *,
    success: bool,
    logout: bool = False,
    username: str = "",
    description: str = "",
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.USER_AUTHENTICATION,
        "E",
        outcome=_outcome(success),
        type_code=LOGOUT if logout else LOGIN,
        requestor=principal,
        address=address,
        description=description or username,
    )


def query(
    principal: Principal | None,
    address: str,
    *,
    query_text: str,
    sop_class: str = "",
    success: bool = True,
    description: str = "",
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.QUERY,
        "E",
        outcome=_outcome(success),
        requestor=principal,
        address=address,
        query=query_text,
        query_sop_class=sop_class,
        description=description,
    )


def instances_accessed(
    principal: Principal | None,
    address: str,
    studies: Iterable[StudyRef],
    *,
    action: str = "R",
    success: bool = True,
    description: str = "",
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.INSTANCES_ACCESSED,
        action,
        outcome=_outcome(success),
        requestor=principal,
        address=address,
        studies=tuple(studies),
        description=description,
    )


def instances_transferred(
    principal: Principal | None,
    address: str,
    studies: Iterable[StudyRef],
    *,
    action: str,
    source: str,
    destination: str,
    success: bool = True,
    description: str = "",
) -> AuditEvent:
    """``action`` C: received and stored; R: sent to ``destination``."""
    return AuditEvent(
        AuditEventId.INSTANCES_TRANSFERRED,
        action,
        outcome=_outcome(success),
        requestor=principal,
        address=address,
        source=source,
        destination=destination,
        studies=tuple(studies),
        description=description,
    )


def begin_transferring(
    principal: Principal | None,
    address: str,
    studies: Iterable[StudyRef],
    *,
    source: str,
    destination: str,
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.BEGIN_TRANSFERRING,
        "E",
        requestor=principal,
        address=address,
        source=source,
        destination=destination,
        studies=tuple(studies),
    )


def data_import(
    principal: Principal | None,
    address: str,
    studies: Iterable[StudyRef],
    *,
    source: str = "",
    success: bool = True,
    description: str = "",
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.IMPORT,
        "C",
        outcome=_outcome(success),
        requestor=principal,
        address=address,
        source=source,
        studies=tuple(studies),
        description=description,
    )


def data_export(
    principal: Principal | None,
    address: str,
    studies: Iterable[StudyRef],
    *,
    destination: str,
    success: bool = True,
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.EXPORT,
        "R",
        outcome=_outcome(success),
        requestor=principal,
        address=address,
        destination=destination,
        studies=tuple(studies),
    )


def study_deleted(
    principal: Principal | None, address: str, studies: Iterable[StudyRef]
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.STUDY_DELETED,
        "D",
        requestor=principal,
        address=address,
        studies=tuple(studies),
    )


def security_alert(
    principal: Principal | None,
    address: str,
    type_code: Code,
    *,
    description: str,
    outcome: int = Outcome.MINOR_FAILURE,
    studies: Iterable[StudyRef] = (),
) -> AuditEvent:
    return AuditEvent(
        AuditEventId.SECURITY_ALERT,
        "E",
        outcome=outcome,
        type_code=type_code,
        requestor=principal,
        address=address,
        studies=tuple(studies),
        description=description,
    )


def audit_log_used(principal: Principal | None, address: str, description: str = "") -> AuditEvent:
    return AuditEvent(
        AuditEventId.AUDIT_LOG_USED,
        "R",
        requestor=principal,
        address=address,
        description=description,
    )
