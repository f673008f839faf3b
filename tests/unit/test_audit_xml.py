"""Audit messages are valid against the DICOM schema (PS3.15 A.5.1) and say what A.5.3
asks: event codes, participants and their roles, studies, patients, queries."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest
from lxml import etree

from openvna.security.audit import (
    REQUESTOR,
    AuditEvent,
    AuditEventId,
    StudyRef,
    dicom_party,
    events,
)
from openvna.security.audit.xml import SCHEMA_PATH, ArchiveIdentity, render
from openvna.security.principal import Principal, PrincipalKind, local_principal

SCHEMA = etree.RelaxNG(etree.parse(str(SCHEMA_PATH)))
IDENTITY = ArchiveIdentity("OPENVNA", "pacs.example.org", "OPENVNA-SRC", "Hospital")
CT = Principal("ae:CT01", PrincipalKind.AE, frozenset(), display_name="CT01", address="10.0.0.7")
ALICE = Principal("user:alice", PrincipalKind.USER, frozenset(), display_name="Dr Alice")
STUDY = StudyRef(
    "1.2.826.0.1.3680043.8.498.1",
    patient_id="PAT-1",
    patient_name="DOE^JANE",
    sop_classes=(("1.2.840.10008.5.1.4.1.1.2", 12), ("1.2.840.10008.5.1.4.1.1.7", 1)),
    accession_number="ACC42",
    description="CT CHEST",
)

EVENT_KINDS: dict[str, Callable[[], AuditEvent]] = {
    "application start": lambda: events.application_activity(True, ALICE),
    "application stop": lambda: events.application_activity(False),
    "audit log used": lambda: events.audit_log_used(ALICE, "10.0.0.9", resource="/api/audit"),
    "begin transferring": lambda: events.begin_transferring(
        CT, "10.0.0.7", [STUDY], source="", destination=dicom_party("MOVESCP", "10.0.0.8")
    ),
    "instances accessed": lambda: events.instances_accessed(ALICE, "10.0.0.9", [STUDY]),
    "instances transferred (stored)": lambda: events.instances_transferred(
        CT, "10.0.0.7", [STUDY], action="C", source=dicom_party("CT01", "10.0.0.7"), destination=""
    ),
    "instances transferred (retrieved)": lambda: events.instances_transferred(
        ALICE, "10.0.0.9", [STUDY], action="R", source="", destination=REQUESTOR
    ),
    "study deleted": lambda: events.study_deleted(ALICE, "10.0.0.9", [STUDY]),
    "export": lambda: events.data_export(
        ALICE, "10.0.0.9", [STUDY], destination=dicom_party("REMOTE", "192.0.2.1")
    ),
    "import": lambda: events.data_import(ALICE, "", [STUDY], source="/media/cdrom"),
    "procedure record": lambda: events.procedure_record(
        ALICE, "10.0.0.9", action="U", resource="/dicom-web/workitems/1.2.3"
    ),
    "query (HTTP)": lambda: events.query(
        ALICE, "10.0.0.9", query_text="/dicom-web/studies?PatientID=PAT-1"
    ),
    "query (C-FIND)": lambda: events.query(
        CT,
        "10.0.0.7",
        query_text="QueryRetrieveLevel=STUDY",
        sop_class="1.2.840.10008.5.1.4.1.2.2.1",
        query_data=b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ",
        transfer_syntax="1.2.840.10008.1.2",
    ),
    "security alert": lambda: events.security_alert(
        None,
        "203.0.113.5",
        events.UNAUTHORIZED_ACCESS,
        description="GET /dicom-web/studies refused (401)",
        resource="/dicom-web/studies",
    ),
    "emergency override": lambda: events.security_alert(
        ALICE,
        "10.0.0.9",
        events.EMERGENCY_OVERRIDE_STARTED,
        description="break-glass",
        studies=[STUDY],
    ),
    "login failed": lambda: events.user_authentication(
        None, "203.0.113.5", success=False, username="mallory"
    ),
    "logout": lambda: events.user_authentication(ALICE, "10.0.0.9", success=True, logout=True),
}


def parse(event: AuditEvent) -> etree._Element:
    return etree.fromstring(render(event, IDENTITY).encode("utf-8"))


def objects(message: etree._Element, type_code: str, role: str) -> list[etree._Element]:
    return message.findall(
        f"ParticipantObjectIdentification[@ParticipantObjectTypeCode='{type_code}']"
        f"[@ParticipantObjectTypeCodeRole='{role}']"
    )


@pytest.mark.parametrize("kind", sorted(EVENT_KINDS))
def test_every_event_kind_is_schema_valid(kind: str) -> None:
    message = parse(EVENT_KINDS[kind]())
    assert SCHEMA.validate(message), SCHEMA.error_log


def test_every_event_id_is_covered() -> None:
    covered = {EVENT_KINDS[kind]().event_id for kind in EVENT_KINDS}
    missing = (
        set(AuditEventId)
        - covered
        - {
            AuditEventId.NETWORK_ENTRY,
            AuditEventId.ORDER_RECORD,
            AuditEventId.PATIENT_RECORD,
        }
    )
    assert not missing
    for event_id in (AuditEventId.NETWORK_ENTRY, AuditEventId.ORDER_RECORD):
        assert SCHEMA.validate(parse(AuditEvent(event_id, "E", requestor=ALICE)))
    patient = AuditEvent(AuditEventId.PATIENT_RECORD, "U", requestor=ALICE, patient_ids=("P9",))
    assert SCHEMA.validate(parse(patient))


def test_schema_rejects_what_a_5_1_forbids() -> None:
    """The schema is a real check: each of these breaks one A.5.1 rule."""
    valid = render(EVENT_KINDS["query (HTTP)"](), IDENTITY)
    broken = [
        valid.replace('EventOutcomeIndicator="0"', 'EventOutcomeIndicator="5"'),
        valid.replace('EventActionCode="E"', 'EventActionCode="X"'),
        valid.replace('UserIsRequestor="true"', 'UserIsRequestor="yes"'),
        valid.replace(' AuditSourceID="OPENVNA-SRC"', ""),
        re.sub(r"<ParticipantObjectQuery>[^<]*</ParticipantObjectQuery>", "", valid),
        valid.replace('NetworkAccessPointTypeCode="2"', 'NetworkAccessPointTypeCode="9"'),
        valid.replace(' originalText="Query"', ""),
        valid.replace("<AuditSourceIdentification", "<Unexpected/><AuditSourceIdentification"),
    ]
    for text in broken:
        assert text != valid
        assert not SCHEMA.validate(etree.fromstring(text.encode("utf-8"))), text


def test_event_identification() -> None:
    event = EVENT_KINDS["login failed"]()
    identification = parse(event).find("EventIdentification")
    assert identification is not None
    assert identification.get("EventActionCode") == "E"
    assert identification.get("EventOutcomeIndicator") == "4"
    assert identification.get("EventDateTime", "").endswith("Z")
    event_id = identification.find("EventID")
    assert event_id is not None
    assert (event_id.get("csd-code"), event_id.get("codeSystemName")) == ("110114", "DCM")
    assert event_id.get("originalText") == "User Authentication"
    type_code = identification.find("EventTypeCode")
    assert type_code is not None and type_code.get("csd-code") == "110122"
    assert identification.findtext("EventOutcomeDescription") == "mallory"
    requestor = parse(event).find("ActiveParticipant[@UserIsRequestor='true']")
    assert requestor is not None and requestor.get("UserID") == "user:mallory"


def test_codes_are_the_standards() -> None:
    """PS3.16 CID 401: no 'unauthorized access' code exists; refusals are an attempted
    Use of Restricted Function; 110135-110137 mean what their names say."""
    assert events.UNAUTHORIZED_ACCESS.value == "110132"
    assert events.UNAUTHORIZED_ACCESS.meaning == "Use of Restricted Function"
    assert events.OBJECT_SECURITY_ATTRIBUTES_CHANGED.value == "110135"
    assert events.SECURITY_ROLES_CHANGED.value == "110136"
    assert events.USER_SECURITY_ATTRIBUTES_CHANGED.value == "110137"
    assert events.EMERGENCY_OVERRIDE_STARTED.value == "110127"
    assert [event.value for event in AuditEventId] == [str(code) for code in range(110100, 110115)]


def test_stored_instances_name_source_destination_study_and_patient() -> None:
    message = parse(EVENT_KINDS["instances transferred (stored)"]())
    [source] = message.xpath("ActiveParticipant[RoleIDCode/@csd-code='110153']")
    [destination] = message.xpath("ActiveParticipant[RoleIDCode/@csd-code='110152']")
    assert source.get("UserID") == "ae:CT01"
    assert source.get("AlternativeUserID") == "AETITLES=CT01"
    assert source.get("UserIsRequestor") == "true"
    assert source.get("NetworkAccessPointID") == "10.0.0.7"
    assert source.get("NetworkAccessPointTypeCode") == "2"
    assert destination.get("UserID") == "OPENVNA"
    assert destination.get("UserIsRequestor") == "false"
    assert len(message.findall("ActiveParticipant")) == 2
    source_id = message.find("AuditSourceIdentification")
    assert source_id is not None
    assert source_id.get("AuditSourceID") == "OPENVNA-SRC"
    assert source_id.get("AuditEnterpriseSiteID") == "Hospital"
    [study] = objects(message, "2", "3")
    assert study.get("ParticipantObjectID") == STUDY.study_uid
    id_type = study.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.get("csd-code") == "110180"
    assert study.findtext("ParticipantObjectName") == "CT CHEST"
    counts = {
        element.get("UID"): element.get("NumberOfInstances")
        for element in study.findall("ParticipantObjectDescription/SOPClass")
    }
    assert counts == {"1.2.840.10008.5.1.4.1.1.2": "12", "1.2.840.10008.5.1.4.1.1.7": "1"}
    assert study.find("ParticipantObjectDescription/Accession").get("Number") == "ACC42"
    [patient] = objects(message, "1", "1")
    assert patient.get("ParticipantObjectID") == "PAT-1"
    assert patient.findtext("ParticipantObjectName") == "DOE^JANE"
    patient_type = patient.find("ParticipantObjectIDTypeCode")
    assert patient_type is not None
    assert (patient_type.get("csd-code"), patient_type.get("codeSystemName")) == ("2", "RFC-3881")


def test_c_move_names_a_third_party_requestor() -> None:
    message = parse(EVENT_KINDS["begin transferring"]())
    roles = {
        element.get("UserID"): [code.get("csd-code") for code in element.findall("RoleIDCode")]
        for element in message.findall("ActiveParticipant")
    }
    assert roles == {"OPENVNA": ["110153"], "ae:MOVESCP": ["110152"], "ae:CT01": []}
    requestors = message.findall("ActiveParticipant[@UserIsRequestor='true']")
    assert [element.get("UserID") for element in requestors] == ["ae:CT01"]


def test_query_carries_the_query_base64() -> None:
    message = parse(EVENT_KINDS["query (C-FIND)"]())
    [query] = objects(message, "2", "3")
    assert query.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    id_type = query.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.get("csd-code") == "110181"
    data = base64.b64decode(query.findtext("ParticipantObjectQuery") or "")
    assert data == b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
    detail = query.find("ParticipantObjectDetail[@type='TransferSyntax']")
    assert detail is not None
    assert base64.b64decode(detail.get("value", "")) == b"1.2.840.10008.1.2"
    http = parse(EVENT_KINDS["query (HTTP)"]())
    [http_query] = objects(http, "2", "3")
    text = base64.b64decode(http_query.findtext("ParticipantObjectQuery") or "")
    assert text == b"/dicom-web/studies?PatientID=PAT-1"


def test_hostile_text_stays_valid_xml_on_one_line() -> None:
    event = events.query(
        local_principal("127.0.0.1"),
        "127.0.0.1",
        query_text="x",
        description='bad\x00 "<Audit>&\nnext line \ud800',
    )
    text = render(event, IDENTITY)
    assert "\n" not in text
    message = etree.fromstring(text.encode("utf-8"))
    assert SCHEMA.validate(message)
    assert "<Audit>&" in (message.findtext("EventIdentification/EventOutcomeDescription") or "")


def test_security_alert_names_the_subject() -> None:
    message = parse(EVENT_KINDS["security alert"]())
    [subject] = message.findall("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "/dicom-web/studies"
    detail = subject.find("ParticipantObjectDetail[@type='Alert Description']")
    assert detail is not None
    assert b"refused (401)" in base64.b64decode(detail.get("value", ""))
    requestor = message.find("ActiveParticipant[@UserIsRequestor='true']")
    assert requestor is not None
    assert requestor.get("UserID") == "anonymous"
    assert requestor.get("NetworkAccessPointID") == "203.0.113.5"
