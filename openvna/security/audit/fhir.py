"""Export audit records as FHIR R4 AuditEvent resources in a Bundle.

Each resource is made from the stored DICOM message, the record of truth, following
the mapping FHIR R4 gives for DICOM audit messages (AuditEvent "Mappings: DICOM"):
EventID becomes ``type`` (system DCM), EventTypeCode ``subtype``, EventActionCode
``action``, EventDateTime ``recorded``, EventOutcomeIndicator ``outcome``; each
ActiveParticipant an ``agent`` (RoleIDCode as its type, UserID as who, network access
point as network); AuditSourceIdentification the ``source``; each
ParticipantObjectIdentification an ``entity`` (type, role, query, details; studies are
identified ``urn:oid:<Study Instance UID>`` in the ``urn:dicom:uid`` system, as
ImagingStudy does). Resources are validated with ``fhir.resources``' R4B models, which
keep R4's AuditEvent (see :mod:`openvna.ai.results.fhir` for the same choice).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml.ElementTree import fromstring  # type: ignore[import-untyped]
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from openvna.security.audit.store import AuditRecord

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
OBJECT_LIFECYCLE = "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle"
DICOM_UID_SYSTEM = "urn:dicom:uid"
_SYSTEMS = {"DCM": DCM, "RFC-3881": "http://terminology.hl7.org/CodeSystem/v2-0203"}
_UUID_NAMESPACE = uuid.UUID("3c1f0b7e-5d0a-4f7e-9a55-4a0d2f6c7b18")


def audit_event(record: AuditRecord) -> AuditEvent:
    """The FHIR AuditEvent of one stored record (raises pydantic.ValidationError when
    the result is not a valid R4 resource)."""
    message = parse_message(record.message)
    identification = _child(message, "EventIdentification")
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"openvna-audit-{record.seq}",
        "type": _coding(_child(identification, "EventID")),
        "recorded": identification.get("EventDateTime"),
        "outcome": identification.get("EventOutcomeIndicator"),
        "agent": [_agent(element) for element in message.findall("ActiveParticipant")],
        "source": _source(_child(message, "AuditSourceIdentification")),
    }
    action = identification.get("EventActionCode")
    if action:
        resource["action"] = action
    subtypes = [_coding(element) for element in identification.findall("EventTypeCode")]
    if subtypes:
        resource["subtype"] = subtypes
    description = identification.findtext("EventOutcomeDescription")
    if description:
        resource["outcomeDesc"] = description
    entities = [_entity(element) for element in message.findall("ParticipantObjectIdentification")]
    if entities:
        resource["entity"] = entities
    return AuditEvent.model_validate(resource)


def export_bundle(records: Iterable[AuditRecord], source_id: str) -> Bundle:
    """A ``collection`` Bundle of the records' AuditEvents, in chain order."""
    entries = []
    for record in records:
        resource = audit_event(record)
        full_url = uuid.uuid5(_UUID_NAMESPACE, f"{source_id}:{record.seq}")
        entries.append({"fullUrl": f"urn:uuid:{full_url}", "resource": resource})
    return Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "entry": entries})


def parse_message(text: str) -> Element:
    """Parse a stored audit message. Messages are written without a document type
    declaration, so one present means tampering: refused before parsing, which also
    rules out entity expansion and external entities."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("audit message with a document type declaration refused")
    parsed: Element = fromstring(text)  # defusedxml: no entities, no DTD (issue #5 item 7)
    return parsed


def _child(parent: Element, tag: str) -> Element:
    child = parent.find(tag)
    if child is None:
        raise ValueError(f"audit message without {tag}")
    return child


def _coding(element: Element) -> dict[str, str]:
    scheme = element.get("codeSystemName", "")
    coding = {"system": _SYSTEMS.get(scheme, f"urn:openvna:coding-scheme:{scheme}")}
    coding["code"] = element.get("csd-code", "")
    meaning = element.get("originalText")
    if meaning:
        coding["display"] = meaning
    return coding


def _agent(element: Element) -> dict[str, Any]:
    user_id = element.get("UserID", "")
    agent: dict[str, Any] = {
        "who": {"identifier": {"value": user_id}, "display": element.get("UserName") or user_id},
        "requestor": element.get("UserIsRequestor") == "true",
    }
    roles = element.findall("RoleIDCode")
    if roles:
        agent["type"] = {"coding": [_coding(role) for role in roles]}
    if element.get("AlternativeUserID"):
        agent["altId"] = element.get("AlternativeUserID")
    if element.get("UserName"):
        agent["name"] = element.get("UserName")
    address = element.get("NetworkAccessPointID")
    if address:
        agent["network"] = {"address": address}
        kind = element.get("NetworkAccessPointTypeCode")
        if kind:
            agent["network"]["type"] = kind
    return agent


def _source(element: Element) -> dict[str, Any]:
    source_id = element.get("AuditSourceID", "")
    source: dict[str, Any] = {
        "observer": {"identifier": {"value": source_id}, "display": source_id}
    }
    if element.get("AuditEnterpriseSiteID"):
        source["site"] = element.get("AuditEnterpriseSiteID")
    types = [code.get("csd-code", "") for code in element.findall("AuditSourceTypeCode")]
    if types:
        source["type"] = [{"system": SOURCE_TYPE, "code": code} for code in types if code]
    return source


def _entity(element: Element) -> dict[str, Any]:
    object_id = element.get("ParticipantObjectID", "")
    id_type = element.find("ParticipantObjectIDTypeCode")
    identifier: dict[str, Any] = {"value": object_id}
    if id_type is not None and id_type.get("csd-code") == "110180":
        identifier = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{object_id}"}
    elif id_type is not None:
        identifier["type"] = {"coding": [_coding(id_type)]}
    entity: dict[str, Any] = {"what": {"identifier": identifier}}
    if element.get("ParticipantObjectTypeCode"):
        entity["type"] = {"system": ENTITY_TYPE, "code": element.get("ParticipantObjectTypeCode")}
    if element.get("ParticipantObjectTypeCodeRole"):
        entity["role"] = {
            "system": OBJECT_ROLE,
            "code": element.get("ParticipantObjectTypeCodeRole"),
        }
    if element.get("ParticipantObjectDataLifeCycle"):
        entity["lifecycle"] = {
            "system": OBJECT_LIFECYCLE,
            "code": element.get("ParticipantObjectDataLifeCycle"),
        }
    name = element.findtext("ParticipantObjectName")
    if name:
        entity["name"] = name
    query = element.findtext("ParticipantObjectQuery")
    if query:
        entity["query"] = query
    details: list[dict[str, Any]] = [
        {"type": detail.get("type", ""), "valueBase64Binary": detail.get("value", "")}
        for detail in element.findall("ParticipantObjectDetail")
    ]
    for description in element.findall("ParticipantObjectDescription"):
        for accession in description.findall("Accession"):
            details.append({"type": "Accession", "valueString": accession.get("Number", "")})
        for sop_class in description.findall("SOPClass"):
            details.append(
                {
                    "type": f"SOPClass {sop_class.get('UID', '')}",
                    "valueString": f"NumberOfInstances={sop_class.get('NumberOfInstances')}",
                }
            )
    if details:
        entity["detail"] = details
    return entity
