"""Render an :class:`AuditEvent` as a DICOM audit message (PS3.15 A.5.1 schema).

Every message has the event (EventID with its CID 400 meaning, action, UTC time,
outcome, EventTypeCode and description), the active participants, the archive as audit
source, and the participant objects of A.5.3: studies (type 2, role 3, ID type 110180
Study Instance UID, with SOP classes and instance counts), their patients (type 1,
role 1, ID type 2 "Patient Number"), the query (type 2, role 3 "Report" as A.5.3.10
requires, ID type 110181 SOP Class UID, the query itself base64 encoded), the audit
log, an alert subject, a workitem.

Participants follow A.5.3 per event kind: where data moves, the sender carries role
110153 (Source Role ID) and the receiver 110152 (Destination Role ID); the archive is
always one participant, named by its AE title (``AETITLES=`` alternative user ID) on
its host; the requestor is the principal with its network address. The schema makes a
participant object carry a ParticipantObjectName or a ParticipantObjectQuery, so a
study is named by its Study Description (its UID when it has none).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

from openvna.config import Settings
from openvna.security.audit import (
    REQUESTOR,
    AuditEvent,
    AuditEventId,
    Code,
    StudyRef,
)
from openvna.security.principal import Principal, PrincipalKind

SCHEMA_PATH = Path(__file__).parent / "schema" / "dicom-audit.rng"
"""RELAX NG (XML syntax) form of the A.5.1 schema, for validators (lxml in the tests)."""

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
"""Study Root Query/Retrieve Information Model - FIND: the model QIDO-RS queries."""
UTF8 = "UTF-8"

_SOURCE_ROLE = Code("110153", "DCM", "Source Role ID")
_DESTINATION_ROLE = Code("110152", "DCM", "Destination Role ID")
_APPLICATION_ROLE = Code("110150", "DCM", "Application")
_LAUNCHER_ROLE = Code("110151", "DCM", "Application Launcher")
_SOURCE_MEDIA_ROLE = Code("110155", "DCM", "Source Media")
_STUDY_UID_TYPE = Code("110180", "DCM", "Study Instance UID")
_SOP_CLASS_TYPE = Code("110181", "DCM", "SOP Class UID")
_NODE_ID_TYPE = Code("110182", "DCM", "Node ID")
_PATIENT_NUMBER_TYPE = Code("2", "RFC-3881", "Patient Number")
_URI_TYPE = Code("12", "RFC-3881", "URI")
_APPLICATION_SERVER = "4"  # AuditSourceTypeCode: application server process (A.5.1.2.1)

# Characters XML 1.0 cannot carry at all (control characters, lone surrogates).
_LINE_BREAKS = re.compile(r"[\r\n\t]+")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class ArchiveIdentity:
    """The archive as it appears in its own messages (participant and audit source)."""

    ae_title: str
    host: str
    source_id: str
    enterprise_site_id: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveIdentity:
        audit = settings.security.audit
        return cls(
            ae_title=settings.dimse.ae_title,
            host=socket.gethostname(),
            source_id=audit.source_id,
            enterprise_site_id=audit.enterprise_site_id,
        )

    @property
    def audit_log_uri(self) -> str:
        return f"urn:openvna:audit-log:{self.source_id}"


@dataclass(frozen=True)
class _Party:
    user_id: str
    alternative_user_id: str = ""
    user_name: str = ""
    address: str = ""
    is_requestor: bool = False


def clean(text: str) -> str:
    """``text`` on one line (so each message is one line of a log or an export) and
    without the characters XML 1.0 cannot hold (they become U+FFFD)."""
    return _NOT_XML.sub("\ufffd", _LINE_BREAKS.sub(" ", text))


def event_datetime(timestamp: float) -> str:
    """EventDateTime in UTC (A.5.2.5), xsd:dateTime with microseconds."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def requestor_user_id(event: AuditEvent) -> str:
    """Who the message names as requestor (the ``user_id`` column of the chain)."""
    if event.requestor is not None:
        return event.requestor.user_id
    if event.claimed_user:
        return f"user:{event.claimed_user}"
    return "anonymous"


def render(event: AuditEvent, identity: ArchiveIdentity) -> str:
    """The audit message of ``event`` as an XML string (no declaration, one line)."""
    message = ElementTree.Element("AuditMessage")
    _event_identification(message, event)
    for party, roles in _participants(event, identity):
        _active_participant(message, party, roles)
    source = _sub(message, "AuditSourceIdentification")
    if identity.enterprise_site_id:
        source.set("AuditEnterpriseSiteID", clean(identity.enterprise_site_id))
    source.set("AuditSourceID", clean(identity.source_id))
    _sub(source, "AuditSourceTypeCode").set("csd-code", _APPLICATION_SERVER)
    _participant_objects(message, event, identity)
    return ElementTree.tostring(message, encoding="unicode")


# -- event ----------------------------------------------------------------------------


def _event_identification(message: ElementTree.Element, event: AuditEvent) -> None:
    identification = _sub(message, "EventIdentification")
    identification.set("EventActionCode", event.action)
    identification.set("EventDateTime", event_datetime(event.recorded_at))
    identification.set("EventOutcomeIndicator", str(event.outcome))
    _code(identification, "EventID", Code(event.event_id.value, "DCM", event.event_id.meaning))
    if event.type_code is not None:
        _code(identification, "EventTypeCode", event.type_code)
    if event.description:
        _sub(identification, "EventOutcomeDescription").text = clean(event.description)


# -- active participants ----------------------------------------------------------------


_Roles = tuple[Code, ...]


def _participants(event: AuditEvent, identity: ArchiveIdentity) -> list[tuple[_Party, _Roles]]:
    """(participant, role codes) in the order A.5.3 lists them for this event kind."""
    requestor = _requestor(event)
    parties: list[tuple[_Party, _Roles]]
    archive = _Party(
        user_id=identity.ae_title,
        alternative_user_id=f"AETITLES={identity.ae_title}",
        user_name="OpenVNA",
        address=identity.host,
    )
    kind = event.event_id
    if kind is AuditEventId.APPLICATION_ACTIVITY:
        parties = [(archive, (_APPLICATION_ROLE,))]
        if event.requestor is not None:
            parties.append((requestor, (_LAUNCHER_ROLE,)))
        return parties
    if kind is AuditEventId.QUERY:
        return [(requestor, (_SOURCE_ROLE,)), (archive, (_DESTINATION_ROLE,))]
    if kind in (AuditEventId.INSTANCES_TRANSFERRED, AuditEventId.BEGIN_TRANSFERRING):
        return _transfer_parties(event, requestor, archive)
    if kind is AuditEventId.IMPORT:
        # the importing process is the requestor when one is known, else the archive
        importer = requestor if event.requestor is not None else archive
        parties = [(importer, (_DESTINATION_ROLE,))]
        if event.source:
            source = _named_party(event.source, requestor)
            role = _SOURCE_ROLE if event.source.startswith("AE:") else _SOURCE_MEDIA_ROLE
            parties.append((source, (role,)))
        if not any(party.is_requestor for party, _ in parties):
            parties.append((requestor, ()))
        return parties
    if kind is AuditEventId.EXPORT:
        parties = [(archive, (_SOURCE_ROLE,))]
        if event.destination:
            parties.append((_named_party(event.destination, requestor), (_DESTINATION_ROLE,)))
        parties.append((requestor, ()))
        return parties
    # Instances accessed, study deleted, procedure/patient/order records, audit log used,
    # user authentication (the user, then the authenticating system), security alerts
    # (the performing user, then the reporting system): requestor and archive.
    return [(requestor, ()), (archive, ())]


def _transfer_parties(
    event: AuditEvent, requestor: _Party, archive: _Party
) -> list[tuple[_Party, _Roles]]:
    source = _named_party(event.source, requestor) if event.source else archive
    destination = _named_party(event.destination, requestor) if event.destination else archive
    parties: list[tuple[_Party, _Roles]] = [
        (source, (_SOURCE_ROLE,)),
        (destination, (_DESTINATION_ROLE,)),
    ]
    if not (source.is_requestor or destination.is_requestor):
        parties.append((requestor, ()))  # a third party asked (C-MOVE to another AE)
    return parties


def _requestor(event: AuditEvent) -> _Party:
    principal = event.requestor
    address = event.address or (principal.address if principal is not None else "")
    if principal is None:
        return _Party(requestor_user_id(event), address=address, is_requestor=True)
    return _Party(
        user_id=principal.user_id,
        alternative_user_id=_alternative_user_id(principal),
        user_name=principal.display_name,
        address=address,
        is_requestor=True,
    )


def _alternative_user_id(principal: Principal) -> str:
    if principal.kind is PrincipalKind.AE:
        return f"AETITLES={principal.subject.removeprefix('ae:')}"
    return ""


def _named_party(name: str, requestor: _Party) -> _Party:
    """The participant a ``source``/``destination`` value names (see AuditEvent)."""
    if name == REQUESTOR:
        return requestor
    if name.startswith("AE:"):
        ae_title, _, address = name[3:].rpartition("@")
        if not ae_title:
            ae_title, address = address, ""
        if requestor.alternative_user_id == f"AETITLES={ae_title}":
            return _Party(
                requestor.user_id,
                requestor.alternative_user_id,
                requestor.user_name,
                address or requestor.address,
                is_requestor=True,
            )
        return _Party(f"ae:{ae_title}", f"AETITLES={ae_title}", address=address)
    return _Party(name)


def _active_participant(message: ElementTree.Element, party: _Party, roles: Iterable[Code]) -> None:
    element = _sub(message, "ActiveParticipant")
    element.set("UserID", clean(party.user_id))
    if party.alternative_user_id:
        element.set("AlternativeUserID", clean(party.alternative_user_id))
    if party.user_name:
        element.set("UserName", clean(party.user_name))
    element.set("UserIsRequestor", "true" if party.is_requestor else "false")
    if party.address:
        element.set("NetworkAccessPointID", clean(party.address))
        element.set("NetworkAccessPointTypeCode", _address_type(party.address))
    for role in roles:
        _code(element, "RoleIDCode", role)


def _address_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return "5" if "://" in address else "1"
    return "2"


# -- participant objects ------------------------------------------------------------------


def _participant_objects(
    message: ElementTree.Element, event: AuditEvent, identity: ArchiveIdentity
) -> None:
    kind = event.event_id
    if kind is AuditEventId.QUERY:
        _query_object(message, event)
    if kind is AuditEventId.AUDIT_LOG_USED:
        _object(
            message,
            event.resource or identity.audit_log_uri,
            _URI_TYPE,
            type_code="2",
            role="13",
            name="Security Audit Log",
        )
    if kind is AuditEventId.SECURITY_ALERT and event.resource:
        alert = _object(
            message,
            event.resource,
            _URI_TYPE
            if event.resource.startswith("/") or "://" in event.resource
            else _NODE_ID_TYPE,
            type_code="2",
            name=event.resource,
        )
        if event.description:
            _detail(alert, "Alert Description", event.description.encode("utf-8"))
    if kind is AuditEventId.PROCEDURE_RECORD and event.resource:
        _object(message, event.resource, _URI_TYPE, type_code="2", role="20", name="UPS")
    for study in event.studies:
        _study_object(message, study)
    seen: set[str] = set()
    for study in event.studies:
        if study.patient_id and study.patient_id not in seen:
            seen.add(study.patient_id)
            _patient_object(message, study.patient_id, study.patient_name)
    for patient_id in event.patient_ids:
        if patient_id not in seen:
            seen.add(patient_id)
            _patient_object(message, patient_id, "")


def _query_object(message: ElementTree.Element, event: AuditEvent) -> None:
    """SOP Queried and the Query (A.5.3.10): the identifier as received, base64."""
    sop_class = event.query_sop_class or STUDY_ROOT_FIND
    data = event.query_data or event.query.encode("utf-8")
    element = _sub(message, "ParticipantObjectIdentification")
    element.set("ParticipantObjectID", sop_class)
    element.set("ParticipantObjectTypeCode", "2")
    element.set("ParticipantObjectTypeCodeRole", "3")
    _code(element, "ParticipantObjectIDTypeCode", _SOP_CLASS_TYPE)
    _sub(element, "ParticipantObjectQuery").text = base64.b64encode(data).decode("ascii")
    if event.query_data:
        syntax = event.query_transfer_syntax or "1.2.840.10008.1.2"
        _detail(element, "TransferSyntax", syntax.encode("ascii"))
    else:
        _detail(element, "QueryEncoding", UTF8.encode("ascii"))


def _study_object(message: ElementTree.Element, study: StudyRef) -> None:
    element = _object(
        message,
        study.study_uid,
        _STUDY_UID_TYPE,
        type_code="2",
        role="3",
        name=study.description or study.study_uid,
    )
    if study.accession_number or study.sop_classes:
        description = _sub(element, "ParticipantObjectDescription")
        if study.accession_number:
            _sub(description, "Accession").set("Number", clean(study.accession_number))
        for sop_class_uid, count in study.sop_classes:
            sop_class = _sub(description, "SOPClass")
            sop_class.set("UID", clean(sop_class_uid))
            sop_class.set("NumberOfInstances", str(count))


def _patient_object(message: ElementTree.Element, patient_id: str, patient_name: str) -> None:
    _object(
        message,
        patient_id,
        _PATIENT_NUMBER_TYPE,
        type_code="1",
        role="1",
        name=patient_name,
    )


def _object(
    message: ElementTree.Element,
    object_id: str,
    id_type: Code,
    *,
    type_code: str,
    name: str,
    role: str = "",
) -> ElementTree.Element:
    element = _sub(message, "ParticipantObjectIdentification")
    element.set("ParticipantObjectID", clean(object_id))
    element.set("ParticipantObjectTypeCode", type_code)
    if role:
        element.set("ParticipantObjectTypeCodeRole", role)
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    _sub(element, "ParticipantObjectName").text = clean(name)
    return element


def _detail(element: ElementTree.Element, kind: str, value: bytes) -> None:
    detail = _sub(element, "ParticipantObjectDetail")
    detail.set("type", kind)
    detail.set("value", base64.b64encode(value).decode("ascii"))


# -- helpers ------------------------------------------------------------------------------


def _sub(parent: ElementTree.Element, tag: str) -> ElementTree.Element:
    return ElementTree.SubElement(parent, tag)


def _code(parent: ElementTree.Element, tag: str, code: Code) -> None:
    element = _sub(parent, tag)
    element.set("csd-code", clean(code.value))
    element.set("codeSystemName", clean(code.scheme))
    element.set("originalText", clean(code.meaning))
