"""A model output as a FHIR R4 DiagnosticReport with one Observation per result.

The bundle (type ``collection``) is what an EHR integration posts or stores next to the
DICOM objects: the report names the study (``imagingStudy`` by its Study Instance UID,
``urn:oid`` under the ``urn:dicom:uid`` system, as ImagingStudy.identifier does) and the
patient by Patient ID; every Observation names the algorithm as its ``device`` and the
DICOM result instances (SR, SEG, ...) it was derived from.

Resources are validated with ``fhir.resources``' R4B models: R4B keeps R4's
DiagnosticReport, Observation and Bundle structures (R5, the package default, renamed
``imagingStudy`` to ``study``). An invalid resource raises ``pydantic.ValidationError``
here rather than at the receiving server.

Coding systems follow PS3.16 Table 8-1 and FHIR's terminology registry; a scheme with
no registered URI becomes ``urn:oid:`` when it is an OID, else a URN under
:data:`LOCAL_CODE_SYSTEM`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from pydicom.dataset import Dataset

from openvna.ai.inputs import Volume
from openvna.ai.outputs import Code, Finding, Measurement, ModelOutput
from openvna.ai.results.codes import NO_UNITS, PRIORITY_SCORE, PROBABILITY
from openvna.ai.results.identity import AlgorithmIdentity

ReportStatus = Literal["preliminary", "final"]

CODE_SYSTEMS: Final[dict[str, str]] = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    "LN": "http://loinc.org",
    "RADLEX": "http://www.radlex.org",
    "NCIT": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
}
LOCAL_CODE_SYSTEM: Final = "urn:openvna:coding-scheme:"
"""Prefix of the system of a scheme with no URI (``99OPENVNA`` and other private ones)."""
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
_OID: Final = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_UUID_NAMESPACE: Final = uuid.UUID("8d0f8f4e-2b7c-5d1e-a1c3-5e9b7d3f0a42")

_RADIOLOGY: Final = {
    "coding": [
        {"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"},
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
            "code": "RAD",
            "display": "Radiology",
        },
    ]
}
_IMAGING_STUDY: Final = {
    "coding": [
        {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
    ]
}
_IMAGING_CATEGORY: Final = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }
    ]
}
_AI_METHOD: Final = Code("123110", "DCM", "Artificial Intelligence")


def code_system(scheme: str) -> str:
    """The FHIR ``Coding.system`` URI of a DICOM coding scheme designator."""
    known = CODE_SYSTEMS.get(scheme.upper())
    if known is not None:
        return known
    if _OID.fullmatch(scheme):
        return f"urn:oid:{scheme}"
    return LOCAL_CODE_SYSTEM + scheme


def codeable_concept(code: Code) -> dict[str, Any]:
    return {
        "coding": [
            {"system": code_system(code.scheme), "code": code.value, "display": code.meaning}
        ],
        "text": code.meaning,
    }


def quantity(value: float, unit: Code) -> dict[str, Any]:
    """A valueQuantity; UCUM units carry system and code so receivers can convert."""
    result: dict[str, Any] = {"value": float(value), "unit": unit.meaning}
    if unit.scheme.upper() == "UCUM":
        result["system"] = CODE_SYSTEMS["UCUM"]
        result["code"] = unit.value
    return result


def diagnostic_report(
    output: ModelOutput,
    volume: Volume,
    algorithm: AlgorithmIdentity,
    *,
    result_instance_uids: Sequence[str],
    issued: datetime | None = None,
    status: ReportStatus = "preliminary",
) -> dict[str, Any]:
    """A FHIR R4 ``Bundle`` (collection) of a DiagnosticReport and its Observations.

    ``result_instance_uids`` are the SOP Instance UIDs of the DICOM objects written for
    ``output`` (each Observation's ``derivedFrom``). ``status`` is ``preliminary`` by
    default: an AI result has not been read by a radiologist. ``issued`` defaults to
    now; a naive datetime is taken as local time.

    Raises
    ------
    pydantic.ValidationError
        When a resource does not conform to FHIR R4.
    """
    moment = (issued or datetime.now(UTC)).astimezone()
    header = volume.datasets[0] if volume.datasets else Dataset()
    subject = _subject(header)
    context = _ObservationContext(
        status=status,
        subject=subject,
        device={"display": f"{algorithm.label} ({algorithm.manufacturer})"},
        derived_from=[_dicom_reference(uid) for uid in result_instance_uids],
        issued=moment.isoformat(),
        effective=_effective(header),
    )
    observations = [
        *(context.finding(finding, output) for finding in output.findings),
        *(context.measurement(measurement, output) for measurement in output.measurements),
    ]
    if output.priority is not None:
        observations.append(context.priority(output.priority))
    seed = algorithm.job_uid or str(uuid.uuid4())
    entries = [
        {"fullUrl": _urn(seed, "observation", index), "resource": observation}
        for index, observation in enumerate(observations, start=1)
    ]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": status,
        "category": [_RADIOLOGY],
        "code": _IMAGING_STUDY,
        "subject": subject,
        "issued": moment.isoformat(),
        "imagingStudy": [
            {
                "type": "ImagingStudy",
                "identifier": {
                    "system": DICOM_UID_SYSTEM,
                    "value": f"urn:oid:{volume.study_instance_uid}",
                },
            }
        ],
        "result": [{"reference": entry["fullUrl"]} for entry in entries],
    }
    if context.effective:
        report["effectiveDateTime"] = context.effective
    if algorithm.job_uid and _OID.fullmatch(algorithm.job_uid):
        report["identifier"] = [
            {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{algorithm.job_uid}"}
        ]
    if output.summary:
        report["conclusion"] = output.summary
    DiagnosticReport.model_validate(report)
    for observation in observations:
        Observation.model_validate(observation)
    bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": moment.isoformat(),
            "entry": [{"fullUrl": _urn(seed, "report"), "resource": report}, *entries],
        }
    )
    dumped: dict[str, Any] = bundle.model_dump(mode="json")
    return dumped


class _ObservationContext:
    """What every Observation of one report shares."""

    def __init__(
        self,
        *,
        status: ReportStatus,
        subject: dict[str, Any],
        device: dict[str, Any],
        derived_from: list[dict[str, Any]],
        issued: str,
        effective: str | None,
    ) -> None:
        self.status = status
        self.subject = subject
        self.device = device
        self.derived_from = derived_from
        self.issued = issued
        self.effective = effective

    def _base(self, code: Code, site: Code | None, notes: list[str]) -> dict[str, Any]:
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "status": self.status,
            "category": [_IMAGING_CATEGORY],
            "code": codeable_concept(code),
            "subject": self.subject,
            "issued": self.issued,
            "method": codeable_concept(_AI_METHOD),
            "device": self.device,
        }
        if self.effective:
            observation["effectiveDateTime"] = self.effective
        if site is not None:
            observation["bodySite"] = codeable_concept(site)
        if self.derived_from:
            observation["derivedFrom"] = self.derived_from
        texts = [note for note in notes if note]
        if texts:
            observation["note"] = [{"text": text} for text in texts]
        return observation

    def finding(self, finding: Finding, output: ModelOutput) -> dict[str, Any]:
        observation = self._base(
            finding.finding,
            finding.finding_site,
            [_segment_note(output, finding.segment_number), finding.description],
        )
        observation["valueBoolean"] = bool(finding.present)
        if finding.probability is not None:
            observation["component"] = [
                {
                    "code": codeable_concept(PROBABILITY),
                    "valueQuantity": quantity(finding.probability, NO_UNITS),
                }
            ]
        return observation

    def measurement(self, measurement: Measurement, output: ModelOutput) -> dict[str, Any]:
        observation = self._base(
            measurement.name,
            measurement.finding_site,
            [_segment_note(output, measurement.segment_number), measurement.description],
        )
        observation["valueQuantity"] = quantity(measurement.value, measurement.unit)
        return observation

    def priority(self, score: float) -> dict[str, Any]:
        observation = self._base(PRIORITY_SCORE, None, [])
        observation["valueQuantity"] = quantity(score, NO_UNITS)
        return observation


def _subject(header: Dataset) -> dict[str, Any]:
    """The patient, by identifier: the archive has no Patient resource to point at."""
    identifier: dict[str, Any] = {"value": str(header.get("PatientID", "")) or "UNKNOWN"}
    issuer = str(header.get("IssuerOfPatientID", "") or "")
    if issuer:
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def _effective(header: Dataset) -> str | None:
    """The study date as a FHIR date (a time would need a zone DICOM rarely gives)."""
    value = str(header.get("StudyDate", "") or header.get("SeriesDate", "") or "")
    if not re.fullmatch(r"\d{8}", value):
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def _dicom_reference(sop_instance_uid: str) -> dict[str, Any]:
    return {"identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sop_instance_uid}"}}


def _segment_note(output: ModelOutput, number: int | None) -> str:
    if number is None:
        return ""
    return f"Region: segment {number} ({output.segments[number - 1].label})"


def _urn(seed: str, *parts: object) -> str:
    name = "/".join(str(part) for part in (seed, *parts))
    return f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, name)}"
