"""The STOW-RS response: the Store Instances Response Module (PS3.18 Annex I).

Each instance of a request ends as an :class:`InstanceOutcome`: stored (an item of the
ReferencedSOPSequence, with a Warning Reason when the archive corrected something) or
failed (an item of the FailedSOPSequence, with the Failure Reason of PS3.18 I.2.2). From
the outcomes this module makes the HTTP status (PS3.18 10.5.3), the response data set
in DICOM JSON (PS3.18 F.2) or the Native DICOM Model (PS3.19 A.1), and a ``Warning``
header (PS3.18 8.3.5.1) that says in words why instances failed or warned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag
from starlette.requests import Request

from openvna.archive.ingest import IngestResult
from openvna.errors import DuplicateInstanceError, OpenVNAError, StudyMismatchError
from openvna.index.repository import StoreOutcome
from openvna.web.dicomweb.context import DicomWebContext

logger = logging.getLogger(__name__)

# Failure Reason (0008,1197) and Warning Reason (0008,1196) values, PS3.18 I.2.
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
"""PS3.7 C.5: the archive keeps a different instance under this SOP Instance UID."""
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
STUDY_UID_MISMATCH = 0xC409
"""PS3.18 I.2.2 has no code for it and allows others; 0xC409 is what dcm4chee answers."""
COERCION_OF_DATA_ELEMENTS = 0xB000

IDENTITY_TAGS = (
    ("SOPClassUID", "00080016"),
    ("SOPInstanceUID", "00080018"),
    ("StudyInstanceUID", "0020000D"),
    ("SeriesInstanceUID", "0020000E"),
)
"""(keyword, DICOM JSON tag) of the UIDs that name an instance in the response."""


@dataclass(frozen=True)
class InstanceOutcome:
    """What became of one instance of the request (one item of the response)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    failure_reason: int | None = None
    warning_reason: int | None = None
    message: str = ""

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


def stored_outcome(result: IngestResult) -> InstanceOutcome:
    """An instance the archive holds; PS3.18 I.2.1 warning when it corrected the File Meta."""
    warnings = list(result.warnings)
    if result.outcome is StoreOutcome.DUPLICATE_SAME:
        warnings = []  # the same bytes are already stored: nothing was changed
    return InstanceOutcome(
        sop_class_uid=result.sop_class_uid,
        sop_instance_uid=result.sop_instance_uid,
        study_instance_uid=result.study_instance_uid,
        series_instance_uid=result.series_instance_uid,
        warning_reason=COERCION_OF_DATA_ELEMENTS if warnings else None,
        message="; ".join(warnings),
    )


def failed_outcome(error: Exception, identify: Callable[[], dict[str, str]]) -> InstanceOutcome:
    """The Failure Reason (PS3.18 I.2.2) of an instance that was not stored.

    ``identify`` gives what is known of the instance's :data:`IDENTITY_TAGS` by keyword;
    it is called only here, so that a successful store never reads them twice.

    A ``DuplicateInstanceError`` is a failure here, not the warning C-STORE answers: the
    instance sent was not stored (the archive keeps a different one under its UID), and
    a STOW-RS warning would list it as stored with a RetrieveURL that returns other data.
    """
    if isinstance(error, DuplicateInstanceError):
        reason = DUPLICATE_SOP_INSTANCE
    elif isinstance(error, StudyMismatchError):
        reason = STUDY_UID_MISMATCH
    elif isinstance(error, OpenVNAError):
        reason = error.dicom_status
    else:
        logger.exception("STOW-RS instance failed unexpectedly", exc_info=error)
        reason = PROCESSING_FAILURE
    identity = identify()
    return InstanceOutcome(
        sop_class_uid=identity.get("SOPClassUID", ""),
        sop_instance_uid=identity.get("SOPInstanceUID", ""),
        study_instance_uid=identity.get("StudyInstanceUID", ""),
        series_instance_uid=identity.get("SeriesInstanceUID", ""),
        failure_reason=reason,
        message=str(error),
    )


def response_status(outcomes: list[InstanceOutcome]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored, 202 some failed or warned, 409 none stored."""
    stored = [outcome for outcome in outcomes if outcome.stored]
    if not stored:
        return 409
    if len(stored) < len(outcomes) or any(o.warning_reason is not None for o in stored):
        return 202
    return 200


def response_dataset(
    context: DicomWebContext,
    request: Request,
    study_uid: str | None,
    outcomes: list[InstanceOutcome],
) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as DICOM JSON."""
    stored = [outcome for outcome in outcomes if outcome.stored]
    failed = [outcome for outcome in outcomes if not outcome.stored]
    studies = {outcome.study_instance_uid for outcome in stored}
    retrieve_study = study_uid if study_uid is not None and stored else None
    if retrieve_study is None and len(studies) == 1:
        retrieve_study = next(iter(studies))
    body: dict[str, Any] = {"00081190": _url(context, request, retrieve_study)}
    if failed:
        items = []
        for outcome in failed:
            item: dict[str, Any] = {}
            if outcome.sop_class_uid:
                item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
            if outcome.sop_instance_uid:
                item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
            item["00081197"] = {"vr": "US", "Value": [outcome.failure_reason]}
            items.append(item)
        body["00081198"] = {"vr": "SQ", "Value": items}
    if stored:
        items = []
        for outcome in stored:
            url = context.instance_url(
                request,
                outcome.study_instance_uid,
                outcome.series_instance_uid,
                outcome.sop_instance_uid,
            )
            item = {
                "00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [outcome.sop_instance_uid]},
                "00081190": {"vr": "UR", "Value": [url]},
            }
            if outcome.warning_reason is not None:
                item["00081196"] = {"vr": "US", "Value": [outcome.warning_reason]}
            items.append(item)
        body["00081199"] = {"vr": "SQ", "Value": items}
    return body


def _url(context: DicomWebContext, request: Request, study_uid: str | None) -> dict[str, Any]:
    if study_uid is None:
        return {"vr": "UR"}  # Type 2: present, empty when the instances span studies
    return {"vr": "UR", "Value": [context.study_url(request, study_uid)]}


def dicom_json_to_xml(dataset: dict[str, Any]) -> str:
    """The same module in the Native DICOM Model (PS3.19 A.1), for ``application/dicom+xml``."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>']
    lines.append('<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">')
    _xml_attributes(dataset, lines)
    lines.append("</NativeDicomModel>")
    return "\n".join(lines) + "\n"


def _xml_attributes(dataset: dict[str, Any], lines: list[str]) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        keyword = keyword_for_tag(int(tag, 16))
        lines.append(
            f"<DicomAttribute tag={quoteattr(tag)} vr={quoteattr(element['vr'])} "
            f"keyword={quoteattr(keyword)}>"
        )
        for number, value in enumerate(element.get("Value", []), start=1):
            if element["vr"] == "SQ":
                lines.append(f'<Item number="{number}">')
                _xml_attributes(value, lines)
                lines.append("</Item>")
            else:
                lines.append(f'<Value number="{number}">{escape(str(value))}</Value>')
        lines.append("</DicomAttribute>")


def warning_header(outcomes: list[InstanceOutcome]) -> str | None:
    """A ``Warning: 299`` line (PS3.18 8.3.5.1) saying why instances failed or warned."""
    messages = []
    for outcome in outcomes:
        if outcome.message:
            reason = outcome.failure_reason or outcome.warning_reason or 0
            who = outcome.sop_instance_uid or "part"
            messages.append(f"{who}: {reason:04X}H {outcome.message}")
    if not messages:
        return None
    text = "; ".join(messages[:5])
    if len(messages) > 5:
        text += f"; and {len(messages) - 5} more"
    text = text.encode("ascii", "replace").decode("ascii").replace('"', "'")
    text = " ".join(text.split())[:1000]
    return f'299 OpenVNA "{text}"'


__all__ = [
    "COERCION_OF_DATA_ELEMENTS",
    "DUPLICATE_SOP_INSTANCE",
    "IDENTITY_TAGS",
    "PROCESSING_FAILURE",
    "STUDY_UID_MISMATCH",
    "TRANSFER_SYNTAX_NOT_SUPPORTED",
    "InstanceOutcome",
    "dicom_json_to_xml",
    "failed_outcome",
    "response_dataset",
    "response_status",
    "stored_outcome",
    "warning_header",
]
