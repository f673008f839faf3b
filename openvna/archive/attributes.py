"""The attributes the index keeps per query level, shared by ingest and the query engine.

Each :class:`IndexedAttribute` names a DICOM keyword, its tag and VR, the index column
that holds it, and the level it belongs to (PS3.4 C.6.1.1 and C.6.2.1; PS3.18 Table
10.6.1-5). Ingest fills the columns from the DICOM JSON header; C-FIND and QIDO-RS
match on them; anything else asked for is answered from a stored header.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    """Query/Retrieve levels (PS3.4 C.3)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


LEVEL_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


@dataclass(frozen=True)
class IndexedAttribute:
    keyword: str
    tag: int
    vr: str
    level: Level
    column: str
    path: tuple[int, ...] = ()
    """Sequence tags to descend through, for attributes nested in a sequence item."""


def _a(keyword: str, tag: int, vr: str, level: Level, column: str, *path: int) -> IndexedAttribute:
    return IndexedAttribute(keyword, tag, vr, level, column, tuple(path))


_REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275

INDEXED_ATTRIBUTES: tuple[IndexedAttribute, ...] = (
    _a("PatientName", 0x00100010, "PN", Level.PATIENT, "patient_name"),
    _a("PatientID", 0x00100020, "LO", Level.PATIENT, "patient_id"),
    _a("IssuerOfPatientID", 0x00100021, "LO", Level.PATIENT, "issuer_of_patient_id"),
    _a("PatientBirthDate", 0x00100030, "DA", Level.PATIENT, "patient_birth_date"),
    _a("PatientSex", 0x00100040, "CS", Level.PATIENT, "patient_sex"),
    _a("StudyInstanceUID", 0x0020000D, "UI", Level.STUDY, "study_instance_uid"),
    _a("StudyDate", 0x00080020, "DA", Level.STUDY, "study_date"),
    _a("StudyTime", 0x00080030, "TM", Level.STUDY, "study_time"),
    _a("AccessionNumber", 0x00080050, "SH", Level.STUDY, "accession_number"),
    _a("StudyID", 0x00200010, "SH", Level.STUDY, "study_id"),
    _a("StudyDescription", 0x00081030, "LO", Level.STUDY, "study_description"),
    _a("ReferringPhysicianName", 0x00080090, "PN", Level.STUDY, "referring_physician_name"),
    _a("SeriesInstanceUID", 0x0020000E, "UI", Level.SERIES, "series_instance_uid"),
    _a("Modality", 0x00080060, "CS", Level.SERIES, "modality"),
    _a("SeriesNumber", 0x00200011, "IS", Level.SERIES, "series_number"),
    _a("SeriesDescription", 0x0008103E, "LO", Level.SERIES, "series_description"),
    _a("BodyPartExamined", 0x00180015, "CS", Level.SERIES, "body_part_examined"),
    _a("SeriesDate", 0x00080021, "DA", Level.SERIES, "series_date"),
    _a("SeriesTime", 0x00080031, "TM", Level.SERIES, "series_time"),
    _a(
        "PerformedProcedureStepStartDate",
        0x00400244,
        "DA",
        Level.SERIES,
        "performed_procedure_step_start_date",
    ),
    _a(
        "PerformedProcedureStepStartTime",
        0x00400245,
        "TM",
        Level.SERIES,
        "performed_procedure_step_start_time",
    ),
    _a(
        "ScheduledProcedureStepID",
        0x00400009,
        "SH",
        Level.SERIES,
        "scheduled_procedure_step_id",
        _REQUEST_ATTRIBUTES_SEQUENCE,
    ),
    _a(
        "RequestedProcedureID",
        0x00401001,
        "SH",
        Level.SERIES,
        "requested_procedure_id",
        _REQUEST_ATTRIBUTES_SEQUENCE,
    ),
    _a("InstitutionName", 0x00080080, "LO", Level.SERIES, "institution_name"),
    _a("StationName", 0x00081010, "SH", Level.SERIES, "station_name"),
    _a("SOPInstanceUID", 0x00080018, "UI", Level.IMAGE, "sop_instance_uid"),
    _a("SOPClassUID", 0x00080016, "UI", Level.IMAGE, "sop_class_uid"),
    _a("InstanceNumber", 0x00200013, "IS", Level.IMAGE, "instance_number"),
    _a("Rows", 0x00280010, "US", Level.IMAGE, "rows"),
    _a("Columns", 0x00280011, "US", Level.IMAGE, "columns"),
    _a("NumberOfFrames", 0x00280008, "IS", Level.IMAGE, "number_of_frames"),
    _a("BitsAllocated", 0x00280100, "US", Level.IMAGE, "bits_allocated"),
    _a("ContentDate", 0x00080023, "DA", Level.IMAGE, "content_date"),
    _a("ContentTime", 0x00080033, "TM", Level.IMAGE, "content_time"),
)

BY_KEYWORD: dict[str, IndexedAttribute] = {a.keyword: a for a in INDEXED_ATTRIBUTES}
BY_TAG: dict[int, IndexedAttribute] = {a.tag: a for a in INDEXED_ATTRIBUTES if not a.path}

# Attributes computed from the index rather than stored (PS3.4 C.6.1.1.x, C.6.2.1.x).
COMPUTED_ATTRIBUTES: dict[str, tuple[int, str, Level]] = {
    "NumberOfPatientRelatedStudies": (0x00201200, "IS", Level.PATIENT),
    "NumberOfPatientRelatedSeries": (0x00201202, "IS", Level.PATIENT),
    "NumberOfPatientRelatedInstances": (0x00201204, "IS", Level.PATIENT),
    "ModalitiesInStudy": (0x00080061, "CS", Level.STUDY),
    "SOPClassesInStudy": (0x00080062, "UI", Level.STUDY),
    "NumberOfStudyRelatedSeries": (0x00201206, "IS", Level.STUDY),
    "NumberOfStudyRelatedInstances": (0x00201208, "IS", Level.STUDY),
    "NumberOfSeriesRelatedInstances": (0x00201209, "IS", Level.SERIES),
}

UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

INTEGER_COLUMNS = {
    "series_number",
    "instance_number",
    "rows",
    "columns",
    "number_of_frames",
    "bits_allocated",
}


def json_value(header: dict[str, Any], tag: int, path: tuple[int, ...] = ()) -> Any:
    """First value of ``tag`` in a DICOM JSON object, descending first items of ``path``."""
    node: dict[str, Any] | None = header
    for sequence_tag in path:
        if node is None:
            return None
        items = node.get(f"{sequence_tag:08X}", {}).get("Value") or []
        node = items[0] if items and isinstance(items[0], dict) else None
    if node is None:
        return None
    values = node.get(f"{tag:08X}", {}).get("Value")
    if not values:
        return None
    return values[0]


def column_value(attribute: IndexedAttribute, header: dict[str, Any]) -> Any:
    """The index column value for ``attribute`` taken from a DICOM JSON header."""
    value = json_value(header, attribute.tag, attribute.path)
    if attribute.column in INTEGER_COLUMNS:
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None
    if value is None:
        return ""
    if attribute.vr == "PN":
        return str(value.get("Alphabetic", "")) if isinstance(value, dict) else str(value)
    if attribute.vr == "TM":
        return str(value).replace(":", "")
    if attribute.vr == "DA":
        return str(value).replace(".", "")
    return str(value)


def normalize_person_name(name: str) -> str:
    """Upper-case copy used for case-insensitive PN matching (PS3.4 C.2.2.2.1)."""
    return name.upper()
