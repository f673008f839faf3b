"""Constructors for the audit events adapters record (PS3.15 A.5.3).

Adapters call these rather than building :class:`AuditEvent` by hand, so each event
kind has one shape everywhere (DIMSE, DICOMweb, REST, CLI).
"""

from __future__ import annotations

from collections.abc import Iterable

from openvna.security.audit import AuditEvent, AuditEventId, Code, Outcome, StudyRef
from openvna.security.principal import Principal

# EventTypeCode values (PS3.16 CID 401 "Audit Event Type Code"), checked against the
# standard: 110135 is "Object Security Attributes Changed" and 110136 "Security Roles
# Changed"; DCM has no "unauthorized access" code, a refused request is an attempted
# "Use of Restricted Function" (110132: "a use of a restricted function has been
# attempted") with a failure outcome.
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
ATTACH = Code("110124", "DCM", "Attach")
DETACH = Code("110125", "DCM", "Detach")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = Code("110127", "DCM", "Emergency Override Started")
NETWORK_CONFIGURATION = Code("110128", "DCM", "Network Configuration")
SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
HARDWARE_CONFIGURATION = Code("110130", "DCM", "Hardware Configuration")
SOFTWARE_CONFIGURATION = Code("110131", "DCM", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
AUDIT_RECORDING_STOPPED = Code("110133", "DCM", "Audit Recording Stopped")
AUDIT_RECORDING_STARTED = Code("110134", "DCM", "Audit Recording Started")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = Code("110135", "DCM", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = Code("110136", "DCM", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "DCM", "User security Attributes Changed")
EMERGENCY_OVERRIDE_STOPPED = Code("110138", "DCM", "Emergency Override Stopped")
UNAUTHORIZED_ACCESS = USE_OF_RESTRICTED_FUNCTION
"""A refused request or association (kept as a name: adapters record refusals with it)."""


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
        claimed_user=username,
    )


def query(
    principal: Principal | None,
    address: str,
    *,
    query_text: str,
    sop_class: str = "",
    success: bool = True,
    description: str = "",
    query_data: bytes = b"",
    transfer_syntax: str = "",
    outcome: int | None = None,
) -> AuditEvent:
    """A query received (A.5.3.10). ``query_data`` is the C-FIND identifier as encoded
    in ``transfer_syntax``; without it the message carries ``query_text`` in UTF-8."""
    return AuditEvent(
        AuditEventId.QUERY,
        "E",
        outcome=_outcome(success) if outcome is None else outcome,
        requestor=principal,
        address=address,
        query=query_text,
        query_sop_class=sop_class,
        description=description,
        query_data=query_data,
        query_transfer_syntax=transfer_syntax,
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
    resource: str = "",
    claimed_user: str = "",
) -> AuditEvent:
    """A security alert (A.5.3.11); ``resource`` is the alert subject (the URI or DICOM
    node concerned)."""
    return AuditEvent(
        AuditEventId.SECURITY_ALERT,
        "E",
        outcome=outcome,
        type_code=type_code,
        requestor=principal,
        address=address,
        studies=tuple(studies),
        description=description,
        resource=resource,
        claimed_user=claimed_user,
    )


def audit_log_used(
    principal: Principal | None,
    address: str,
    description: str = "",
    *,
    resource: str = "",
    success: bool = True,
) -> AuditEvent:
    """The audit trail was read (A.5.3.2); ``resource`` is the URI it was read through."""
    return AuditEvent(
        AuditEventId.AUDIT_LOG_USED,
        "R",
        outcome=_outcome(success),
        requestor=principal,
        address=address,
        description=description,
        resource=resource,
    )


def procedure_record(
    principal: Principal | None,
    address: str,
    *,
    action: str,
    resource: str,
    studies: Iterable[StudyRef] = (),
    success: bool = True,
    description: str = "",
) -> AuditEvent:
    """A procedure record (a UPS workitem) created, read, updated or deleted (A.5.3.15);
    ``resource`` names the workitem (its URI)."""
    return AuditEvent(
        AuditEventId.PROCEDURE_RECORD,
        action,
        outcome=_outcome(success),
        requestor=principal,
        address=address,
        studies=tuple(studies),
        description=description,
        resource=resource,
    )
