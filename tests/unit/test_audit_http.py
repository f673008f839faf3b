"""Which record each HTTP request makes (openvna/security/audit/http.py), and the
formats records leave in: FHIR R4 AuditEvent and RFC 5424/5425 syslog frames."""

from __future__ import annotations

import re

import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from openvna.security.audit import REQUESTOR, AuditEventId, Outcome, StudyRef, events
from openvna.security.audit.fhir import audit_event, export_bundle
from openvna.security.audit.http import classify, outcome_of, study_refs
from openvna.security.audit.store import AuditRecord
from openvna.security.audit.syslog import octet_counted, syslog_message
from openvna.security.audit.xml import ArchiveIdentity, render
from openvna.security.principal import local_principal

STUDY = "1.2.826.0.1.3680043.8.498.7"
ME = local_principal("127.0.0.1")

ROUTES = [
    ("GET", "/dicom-web/studies", AuditEventId.QUERY, "E"),
    ("GET", "/dicom-web/series", AuditEventId.QUERY, "E"),
    ("GET", f"/dicom-web/studies/{STUDY}/series", AuditEventId.QUERY, "E"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/1.2/instances", AuditEventId.QUERY, "E"),
    ("GET", "/api/studies", AuditEventId.QUERY, "E"),
    ("GET", "/api/ai/jobs", AuditEventId.QUERY, "E"),
    ("GET", "/dicom-web/workitems", AuditEventId.QUERY, "E"),
    ("GET", f"/dicom-web/studies/{STUDY}", AuditEventId.INSTANCES_TRANSFERRED, "R"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/1.2", AuditEventId.INSTANCES_TRANSFERRED, "R"),
    (
        "GET",
        f"/dicom-web/studies/{STUDY}/series/1.2/instances/1.3/frames/1,2",
        AuditEventId.INSTANCES_TRANSFERRED,
        "R",
    ),
    ("GET", f"/dicom-web/studies/{STUDY}/thumbnail", AuditEventId.INSTANCES_TRANSFERRED, "R"),
    (
        "GET",
        f"/dicom-web/studies/{STUDY}/series/1.2/instances/1.3/bulkdata/7FE00010",
        AuditEventId.INSTANCES_TRANSFERRED,
        "R",
    ),
    ("GET", f"/dicom-web/studies/{STUDY}/metadata", AuditEventId.INSTANCES_ACCESSED, "R"),
    (
        "GET",
        f"/dicom-web/studies/{STUDY}/series/1.2/instances/1.3/metadata",
        AuditEventId.INSTANCES_ACCESSED,
        "R",
    ),
    ("POST", "/dicom-web/studies", AuditEventId.INSTANCES_TRANSFERRED, "C"),
    ("POST", f"/dicom-web/studies/{STUDY}", AuditEventId.INSTANCES_TRANSFERRED, "C"),
    ("POST", "/dicom-web/workitems", AuditEventId.PROCEDURE_RECORD, "C"),
    ("GET", "/dicom-web/workitems/1.2.3", AuditEventId.PROCEDURE_RECORD, "R"),
    ("PUT", "/dicom-web/workitems/1.2.3/state", AuditEventId.PROCEDURE_RECORD, "U"),
    ("POST", "/dicom-web/workitems/1.2.3/cancelrequest", AuditEventId.PROCEDURE_RECORD, "U"),
    ("GET", "/api/audit/events", AuditEventId.AUDIT_LOG_USED, "R"),
    ("GET", "/wado", AuditEventId.INSTANCES_TRANSFERRED, "R"),
]
SILENT = [
    ("GET", "/api/health"),
    ("GET", "/api/system"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/ai/models"),
    ("GET", "/viewer/index.html"),
    ("GET", "/"),
    ("OPTIONS", "/dicom-web"),
    ("POST", "/dicom-web/workitems/1.2.3/subscribers/AI1"),
    ("DELETE", f"/dicom-web/studies/{STUDY}"),
]


@pytest.mark.parametrize(("method", "path", "event_id", "action"), ROUTES)
def test_each_phi_route_makes_its_record(
    method: str, path: str, event_id: AuditEventId, action: str
) -> None:
    query = {"studyUID": STUDY} if path == "/wado" else {}
    event = classify(ME, method, path, query, 200, "127.0.0.1", {})
    assert event is not None
    assert (event.event_id, event.action, event.outcome) == (event_id, action, Outcome.SUCCESS)
    if event_id is AuditEventId.QUERY:
        assert event.studies == ()  # A.5.3.10: the query is the one participant object
    elif STUDY in path or path == "/wado":
        assert [study.study_uid for study in event.studies] == [STUDY]


@pytest.mark.parametrize(("method", "path"), SILENT)
def test_routes_without_patient_data_make_none(method: str, path: str) -> None:
    assert classify(ME, method, path, {}, 200, "127.0.0.1", {}) is None


def test_handler_studies_win_and_failures_keep_their_severity() -> None:
    stored = study_refs([("1.2.3", "1.2.840.10008.5.1.4.1.1.2")] * 3 + [("1.2.4", "1.2.9")])
    event = classify(
        ME, "POST", "/dicom-web/studies", {}, 202, "127.0.0.1", {"audit_studies": stored}
    )
    assert event is not None
    assert event.studies == (
        StudyRef("1.2.3", sop_classes=(("1.2.840.10008.5.1.4.1.1.2", 3),)),
        StudyRef("1.2.4", sop_classes=(("1.2.9", 1),)),
    )
    assert event.source == REQUESTOR and event.destination == ""
    missing = classify(ME, "GET", f"/dicom-web/studies/{STUDY}", {}, 404, "127.0.0.1", {})
    assert missing is not None and missing.outcome == Outcome.MINOR_FAILURE
    assert missing.description == "HTTP 404"
    broken = classify(ME, "GET", "/dicom-web/studies", {"PatientID": "X"}, 500, "::1", {})
    assert broken is not None and broken.outcome == Outcome.SERIOUS_FAILURE
    assert broken.query == "/dicom-web/studies?PatientID=X"
    assert [outcome_of(code) for code in (200, 302, 401, 429, 503, 0)] == [0, 0, 4, 4, 8, 8]


def _record(event: events.AuditEvent, seq: int = 7) -> AuditRecord:
    message = render(event, ArchiveIdentity("OPENVNA", "pacs", "OPENVNA"))
    return AuditRecord(
        seq,
        event.recorded_at,
        event.event_id.value,
        event.action,
        event.outcome,
        "local",
        "127.0.0.1",
        tuple(study.study_uid for study in event.studies),
        message,
    )


def test_fhir_audit_event_mirrors_the_message() -> None:
    study = StudyRef(STUDY, patient_id="P1", sop_classes=(("1.2.840.10008.5.1.4.1.1.2", 2),))
    event = events.instances_transferred(
        ME, "127.0.0.1", [study], action="R", source="", destination=REQUESTOR
    )
    resource = audit_event(_record(event))
    assert isinstance(resource, FhirAuditEvent)
    assert resource.type.code == "110104"
    assert resource.action == "R" and resource.outcome == "0"
    roles = {agent.who.identifier.value: agent.type.coding[0].code for agent in resource.agent}
    assert roles == {"OPENVNA": "110153", "local": "110152"}
    study_entity, patient_entity = resource.entity or []
    assert study_entity.what.identifier.value == f"urn:oid:{STUDY}"
    assert (study_entity.type.code, study_entity.role.code) == ("2", "3")
    assert patient_entity.what.identifier.value == "P1"
    bundle = export_bundle([_record(event, 1), _record(event, 2)], "OPENVNA")
    assert bundle.type == "collection" and len(bundle.entry or []) == 2
    assert len({entry.fullUrl for entry in bundle.entry or []}) == 2


def test_syslog_frame() -> None:
    failed = events.security_alert(
        None, "10.1.1.1", events.UNAUTHORIZED_ACCESS, description="refused", resource="/x"
    )
    message = syslog_message(_record(failed, 42), hostname="pacs 1", app_name="OPENVNA", procid="9")
    frame = octet_counted(message)
    length, _, rest = frame.partition(b" ")
    assert int(length) == len(rest) == len(message)
    match = re.match(
        rb"<84>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z pacs_1 OPENVNA 9 IHE\+RFC-3881 "
        rb'\[meta sequenceId="42"\] \xef\xbb\xbf<AuditMessage>',
        rest,
    )
    assert match is not None, rest[:120]
    success = syslog_message(
        _record(events.application_activity(True)), hostname="h", app_name="a", procid="1"
    )
    assert success.startswith(b"<85>1 ")
