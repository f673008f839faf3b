"""Workitem data sets as DICOM JSON (PS3.18 F.2) and the UPS IOD rules applied to them.

Workitems are stored and served as DICOM JSON, so UPS-RS round-trips exactly what the
client sent (no lossy conversion) and the same object feeds search matching and event
reports. The rules here are those of PS3.4 Table CC.2.5-3: what N-CREATE must carry and
what the SCP fills in, what N-SET may not touch, and the final state requirements.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom import Dataset

from openvna.ups.states import State, UpsError, UpsStatus, invalid_request

Json = dict[str, Any]

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5.1"
SUBSCRIPTION_UIDS = (GLOBAL_SUBSCRIPTION_UID, FILTERED_GLOBAL_SUBSCRIPTION_UID)
PRIORITIES = ("HIGH", "MEDIUM", "LOW")
INPUT_READINESS_STATES = ("READY", "UNAVAILABLE", "INCOMPLETE")
DEFAULT_WORKLIST_LABEL = "OPENVNA"
LOCAL_SCHEME = "99OPENVNA"
"""Coding scheme of OpenVNA's own codes (PS3.16 8.2: a private scheme starts with 99)."""

SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
SPECIFIC_CHARACTER_SET = "00080005"
TRANSACTION_UID = "00081195"
STATE = "00741000"
PRIORITY = "00741200"
WORKLIST_LABEL = "00741202"
PROCEDURE_STEP_LABEL = "00741204"
START_DATETIME = "00404005"
MODIFICATION_DATETIME = "00404010"
INPUT_READINESS = "00404041"
INPUT_INFORMATION = "00404021"
SCHEDULED_WORKITEM_CODE = "00404018"
SCHEDULED_STATION_NAME = "00404025"
SCHEDULED_HUMAN_PERFORMERS = "00404034"
SCHEDULED_PROCESSING_PARAMETERS = "00741210"
REFERENCED_REQUEST = "0040A370"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
PROGRESS_INFORMATION = "00741002"
PROGRESS = "00741004"
PROGRESS_DESCRIPTION = "00741006"
COMMUNICATIONS_URI = "00741008"
CONTACT_URI = "0074100A"
CONTACT_DISPLAY_NAME = "0074100C"
DISCONTINUATION_REASON_CODE = "0074100E"
CANCELLATION_DATETIME = "00404052"
REASON_FOR_CANCELLATION = "00741238"
REQUESTING_AE = "00741236"
PERFORMED_PROCEDURE = "00741216"
PERFORMED_STATION_NAME = "00404028"
PERFORMED_WORKITEM_CODE = "00404019"
PERFORMED_START = "00404050"
PERFORMED_END = "00404051"
OUTPUT_INFORMATION = "00404033"
TYPE_OF_INSTANCES = "0040E020"
REFERENCED_SOP = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
WADO_RS_RETRIEVAL = "0040E025"
RETRIEVE_URL = "00081190"
CODE_VALUE = "00080100"
LONG_CODE_VALUE = "00080119"
CODING_SCHEME = "00080102"
CODE_MEANING = "00080104"
VALUE_TYPE = "0040A040"
CONCEPT_NAME_CODE = "0040A043"
TEXT_VALUE = "0040A160"

_TYPE2_AT_CREATE: tuple[tuple[str, str], ...] = (
    (PATIENT_NAME, "PN"),
    (PATIENT_ID, "LO"),
    ("00100030", "DA"),  # PatientBirthDate
    ("00100040", "CS"),  # PatientSex
    ("00380010", "LO"),  # AdmissionID
    ("00380014", "SQ"),  # IssuerOfAdmissionIDSequence
    ("00081080", "LO"),  # AdmittingDiagnosesDescription
    ("00081084", "SQ"),  # AdmittingDiagnosesCodeSequence
    (REFERENCED_REQUEST, "SQ"),
    (SCHEDULED_WORKITEM_CODE, "SQ"),
    (INPUT_INFORMATION, "SQ"),
    (SCHEDULED_STATION_NAME, "SQ"),
    ("00404026", "SQ"),  # ScheduledStationClassCodeSequence
    ("00404027", "SQ"),  # ScheduledStationGeographicLocationCodeSequence
    (PROGRESS_INFORMATION, "SQ"),
    (PERFORMED_PROCEDURE, "SQ"),
)
"""Type 2 attributes of N-CREATE (PS3.4 Table CC.2.5-3) added empty when absent, so every
workitem answers the same return keys."""

_SET_BY_SCP_ONLY = {SOP_CLASS_UID, SOP_INSTANCE_UID, STATE, TRANSACTION_UID, MODIFICATION_DATETIME}
"""What N-SET may not change (PS3.4 CC.2.5-3 "Not allowed" for N-SET; state changes go
through Change State, identity never changes)."""

_TAG = re.compile(r"^[0-9A-F]{8}$")


def now_datetime() -> str:
    """Local date and time with UTC offset, as a DICOM DT (PS3.5 Table 6.2-1)."""
    return datetime.now().astimezone().strftime("%Y%m%d%H%M%S.%f%z")


def values(dataset: Json, tag: str) -> list[Any]:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return []
    found = element.get("Value")
    return list(found) if isinstance(found, list) else []


def text(dataset: Json, tag: str) -> str:
    """First value as text ('' when absent or empty; PN: its Alphabetic group)."""
    found = values(dataset, tag)
    if not found or found[0] is None:
        return ""
    first = found[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", ""))
    return str(first)


def items(dataset: Json, tag: str) -> list[Json]:
    return [item for item in values(dataset, tag) if isinstance(item, dict)]


def put(dataset: Json, tag: str, vr: str, *new_values: Any) -> None:
    """Set an element (no values: present and empty, as Type 2 requires)."""
    dataset[tag] = {"vr": vr, "Value": list(new_values)} if new_values else {"vr": vr}


def code(value: str, scheme: str, meaning: str) -> Json:
    """A code sequence item (PS3.3 Table 8.8-1); values past 16 characters go to Long
    Code Value, as SH cannot hold them."""
    item: Json = {}
    if len(value) > 16:
        put(item, LONG_CODE_VALUE, "UC", value)
    else:
        put(item, CODE_VALUE, "SH", value)
    put(item, CODING_SCHEME, "SH", scheme)
    put(item, CODE_MEANING, "LO", meaning[:64])
    return item


def has_code(item: Json) -> bool:
    return bool(
        (text(item, CODE_VALUE) or text(item, LONG_CODE_VALUE)) and text(item, CODING_SCHEME)
    )


def parse_dataset(raw: Any, what: str) -> Json:
    """A DICOM JSON object checked by pydicom (tags, VRs, value shapes).

    PS3.18 allows a one-element array around the object, which several clients send.
    Bulk data is refused: UPS transactions carry no bulk data (PS3.18 11.1.3).
    """
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, dict):
        raise invalid_request(f"{what}: expected one DICOM JSON object")
    for tag, element in raw.items():
        if not isinstance(tag, str) or not _TAG.match(tag.upper()) or not isinstance(element, dict):
            raise invalid_request(f"{what}: {tag!r} is not a DICOM JSON attribute")
        if "BulkDataURI" in element or "InlineBinary" in element:
            raise invalid_request(f"{what}: attribute {tag} carries bulk data")
    normalized = {tag.upper(): element for tag, element in raw.items()}
    try:
        Dataset.from_json(json.dumps(normalized))
    except Exception as error:  # pydicom raises several types for malformed JSON
        raise invalid_request(f"{what}: invalid DICOM JSON: {error}") from error
    return normalized


@dataclass(frozen=True)
class PreparedWorkitem:
    dataset: Json
    modified: bool
    """True when the SCP coerced or filled a Type 1 value (answered with a Warning)."""


def prepare_for_create(payload: Json, uid: str) -> PreparedWorkitem:
    """Check an N-CREATE data set and fill what the SCP owns (PS3.4 CC.2.5.1.1).

    Raises
    ------
    UpsError
        HTTP 400: a state other than SCHEDULED (0xC309), a Transaction UID, progress or
        performed information already present, no Procedure Step Label, a bad priority
        or Input Readiness State, a payload UID that differs from the target UID.
    """
    dataset = copy.deepcopy(payload)
    modified = False
    given_uid = text(dataset, SOP_INSTANCE_UID)
    if given_uid and given_uid != uid:
        raise invalid_request(f"the payload's SOP Instance UID {given_uid} is not {uid}")
    state = text(dataset, STATE)
    if state and state != State.SCHEDULED:
        raise UpsError(
            f"the Procedure Step State of a new UPS must be SCHEDULED, not {state!r}",
            dicom_status=UpsStatus.NOT_SCHEDULED_AT_CREATE,
            http_status=400,
        )
    if values(dataset, TRANSACTION_UID):
        raise invalid_request("a new UPS has no Transaction UID (it is set when claimed)")
    for tag, name in (
        (PROGRESS_INFORMATION, "Procedure Step Progress Information Sequence"),
        (PERFORMED_PROCEDURE, "Unified Procedure Step Performed Procedure Sequence"),
    ):
        if values(dataset, tag):
            raise invalid_request(f"the {name} of a new UPS must be empty")
    if not text(dataset, PROCEDURE_STEP_LABEL):
        raise invalid_request("Procedure Step Label (0074,1204) is required")
    priority = text(dataset, PRIORITY)
    if priority and priority not in PRIORITIES:
        raise invalid_request(
            f"Scheduled Procedure Step Priority {priority!r} is not one of " + ", ".join(PRIORITIES)
        )
    readiness = text(dataset, INPUT_READINESS)
    if readiness and readiness not in INPUT_READINESS_STATES:
        raise invalid_request(
            f"Input Readiness State {readiness!r} is not one of "
            + ", ".join(INPUT_READINESS_STATES)
        )
    if not priority:
        put(dataset, PRIORITY, "CS", "MEDIUM")
        modified = True
    if not readiness:
        put(dataset, INPUT_READINESS, "CS", "READY")
        modified = True
    if not text(dataset, START_DATETIME):
        put(dataset, START_DATETIME, "DT", now_datetime())
        modified = True
    if not text(dataset, WORKLIST_LABEL):
        put(dataset, WORKLIST_LABEL, "LO", DEFAULT_WORKLIST_LABEL)
        modified = True
    if not state:
        modified = True
    put(dataset, STATE, "CS", State.SCHEDULED.value)
    put(dataset, SOP_CLASS_UID, "UI", UPS_PUSH_SOP_CLASS)
    put(dataset, SOP_INSTANCE_UID, "UI", uid)
    put(dataset, MODIFICATION_DATETIME, "DT", now_datetime())
    dataset.pop(TRANSACTION_UID, None)
    for tag, vr in _TYPE2_AT_CREATE:
        dataset.setdefault(tag, {"vr": vr})
    return PreparedWorkitem(dict(sorted(dataset.items())), modified)


def apply_update(dataset: Json, changes: Json) -> tuple[Json, set[str]]:
    """N-SET: replace the attributes in ``changes`` (a sequence is replaced whole).

    Returns the new data set and the tags whose content changed.

    Raises
    ------
    UpsError
        HTTP 400 for an attribute only the SCP sets (identity, state, Transaction UID),
        unless the request repeats the current value, and for bad coded values.
    """
    updated = copy.deepcopy(dataset)
    changed: set[str] = set()
    for tag, element in changes.items():
        if tag in _SET_BY_SCP_ONLY:
            if tag == TRANSACTION_UID or element == dataset.get(tag):
                continue
            raise invalid_request(f"attribute {tag} may not be set by Update Workitem")
        if tag == PRIORITY and text(changes, PRIORITY) not in PRIORITIES:
            raise invalid_request(f"Scheduled Procedure Step Priority must be one of {PRIORITIES}")
        if tag == INPUT_READINESS and text(changes, INPUT_READINESS) not in INPUT_READINESS_STATES:
            raise invalid_request(f"Input Readiness State must be one of {INPUT_READINESS_STATES}")
        if tag == PROCEDURE_STEP_LABEL and not text(changes, PROCEDURE_STEP_LABEL):
            raise invalid_request("Procedure Step Label (0074,1204) may not be emptied")
        if updated.get(tag) != element:
            changed.add(tag)
            updated[tag] = element
    if changed:
        put(updated, MODIFICATION_DATETIME, "DT", now_datetime())
    return dict(sorted(updated.items())), changed


def completion_problems(dataset: Json) -> tuple[str, ...]:
    """What a UPS lacks for COMPLETED (PS3.4 CC.2.5.1.3, Table CC.2.5-3 "P" column): one
    item of Unified Procedure Step Performed Procedure Sequence with start and end date
    time, a Performed Station Name Code and a Performed Workitem Code, and an Output
    Information Sequence (which may be empty)."""
    performed = items(dataset, PERFORMED_PROCEDURE)
    if not performed:
        return ("Unified Procedure Step Performed Procedure Sequence (0074,1216) is empty",)
    item = performed[0]
    problems = []
    for tag, name in (
        (PERFORMED_START, "Performed Procedure Step Start DateTime (0040,4050)"),
        (PERFORMED_END, "Performed Procedure Step End DateTime (0040,4051)"),
    ):
        if not text(item, tag):
            problems.append(f"{name} is missing")
    for tag, name in (
        (PERFORMED_STATION_NAME, "Performed Station Name Code Sequence (0040,4028)"),
        (PERFORMED_WORKITEM_CODE, "Performed Workitem Code Sequence (0040,4019)"),
    ):
        if not any(has_code(code_item) for code_item in items(item, tag)):
            problems.append(f"{name} has no code")
    if OUTPUT_INFORMATION not in item:
        problems.append("Output Information Sequence (0040,4033) is absent")
    return tuple(problems)


def record_cancellation(
    dataset: Json,
    *,
    reason: str = "",
    reason_codes: list[Json] | None = None,
    contact_uri: str = "",
    contact_name: str = "",
) -> None:
    """Fill the CANCELED final state requirements (PS3.4 CC.2.5.1.3): the progress item's
    Procedure Step Cancellation DateTime, the reason, and who to contact."""
    progress = items(dataset, PROGRESS_INFORMATION)
    item = progress[0] if progress else {}
    put(item, CANCELLATION_DATETIME, "DT", now_datetime())
    if reason:
        put(item, REASON_FOR_CANCELLATION, "LT", reason[:10240])
    if reason_codes:
        put(item, DISCONTINUATION_REASON_CODE, "SQ", *reason_codes)
    if contact_uri or contact_name:
        contact: Json = {}
        if contact_uri:
            put(contact, CONTACT_URI, "UR", contact_uri)
        if contact_name:
            put(contact, CONTACT_DISPLAY_NAME, "LO", contact_name)
        put(item, COMMUNICATIONS_URI, "SQ", contact)
    put(dataset, PROGRESS_INFORMATION, "SQ", item, *progress[1:])


def set_state(dataset: Json, state: State) -> None:
    put(dataset, STATE, "CS", state.value)
    put(dataset, MODIFICATION_DATETIME, "DT", now_datetime())


def public_view(dataset: Json) -> Json:
    """The workitem as served: never the Transaction UID, the owner's lock (PS3.18 11.5.2)."""
    return {tag: element for tag, element in dataset.items() if tag != TRANSACTION_UID}


def study_of(dataset: Json) -> str:
    """The workitem's study: top level, else the Referenced Request, else the inputs."""
    found = text(dataset, STUDY_UID)
    if found:
        return found
    for sequence in (REFERENCED_REQUEST, INPUT_INFORMATION):
        for item in items(dataset, sequence):
            if text(item, STUDY_UID):
                return text(item, STUDY_UID)
    return ""


def index_columns(dataset: Json) -> dict[str, Any]:
    """The ``ups_workitems`` columns that search narrows on, from the data set."""
    return {
        "state": text(dataset, STATE),
        "priority": text(dataset, PRIORITY) or "MEDIUM",
        "scheduled_start": text(dataset, START_DATETIME)[:26],
        "worklist_label": text(dataset, WORKLIST_LABEL)[:64],
        "patient_id": text(dataset, PATIENT_ID)[:64],
        "study_instance_uid": study_of(dataset)[:64],
    }


def instance_references(
    references: Iterable[tuple[str, str]], study_uid: str, series_uid: str, retrieve_url: str = ""
) -> Json:
    """One Input/Output Information item (PS3.3 Table 10-3b "Referenced Instances and
    Access Macro"): the instances of one series, and where to fetch them."""
    item: Json = {}
    put(item, TYPE_OF_INSTANCES, "CS", "DICOM")
    put(item, STUDY_UID, "UI", study_uid)
    put(item, SERIES_UID, "UI", series_uid)
    referenced = []
    for sop_class_uid, sop_instance_uid in references:
        reference: Json = {}
        put(reference, REFERENCED_SOP_CLASS, "UI", sop_class_uid)
        put(reference, REFERENCED_SOP_INSTANCE, "UI", sop_instance_uid)
        referenced.append(reference)
    put(item, REFERENCED_SOP, "SQ", *referenced)
    if retrieve_url:
        retrieval: Json = {}
        put(retrieval, RETRIEVE_URL, "UR", retrieve_url)
        put(item, WADO_RS_RETRIEVAL, "SQ", retrieval)
    return item


def text_parameter(concept: Json, value: str) -> Json:
    """A TEXT content item for Scheduled Processing Parameters (PS3.3 Table 10-2)."""
    item: Json = {}
    put(item, VALUE_TYPE, "CS", "TEXT")
    put(item, CONCEPT_NAME_CODE, "SQ", concept)
    put(item, TEXT_VALUE, "UT", value)
    return item
