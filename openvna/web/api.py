"""The archive's own REST endpoints under ``/api`` (not DICOMweb): the study list, and
their OpenAPI description (:mod:`openvna.web.openapi`, re-exported here).

DICOMweb is described by PS3.18 and by the capabilities document at
``OPTIONS /dicom-web``; the REST endpoints by ``/api/openapi.json``, generated from the
routes so that an endpoint cannot be added without appearing in it.
"""

from __future__ import annotations

from typing import Any

from openvna.archive.attributes import Level
from openvna.archive.query import Query, build_condition, resolve_attribute
from openvna.errors import QueryError
from openvna.web.openapi import openapi_document

STUDY_LIST_FILTERS = (
    "PatientID",
    "PatientName",
    "StudyDate",
    "AccessionNumber",
    "ModalitiesInStudy",
)
"""Query parameters ``GET /api/studies`` matches on (DICOM matching, as QIDO-RS does)."""


def study_list_query(parameters: dict[str, str], max_results: int) -> Query:
    """The study-level query behind ``GET /api/studies``.

    Raises
    ------
    QueryError
        A filter value is invalid, or ``limit``/``offset`` is not a non-negative integer.
    """
    conditions = []
    for keyword in STUDY_LIST_FILTERS:
        value = parameters.get(keyword)
        if value:
            condition = build_condition(resolve_attribute(keyword), value)
            if condition is not None:
                conditions.append(condition)
    try:
        limit = int(parameters.get("limit", "100"))
        offset = int(parameters.get("offset", "0"))
    except ValueError as error:
        raise QueryError("limit and offset must be integers") from error
    if limit < 0 or offset < 0:
        raise QueryError("limit and offset must not be negative")
    return Query(
        level=Level.STUDY,
        conditions=tuple(conditions),
        return_tags=tuple(_STUDY_SUMMARY_TAGS.values()),
        limit=min(limit, max_results),
        offset=offset,
    )


_STUDY_SUMMARY_TAGS = {
    "studyInstanceUID": 0x0020000D,
    "patientId": 0x00100020,
    "patientName": 0x00100010,
    "studyDate": 0x00080020,
    "studyDescription": 0x00081030,
    "accessionNumber": 0x00080050,
    "modalities": 0x00080061,
    "series": 0x00201206,
    "instances": 0x00201208,
}


def study_summary(result: dict[str, Any]) -> dict[str, Any]:
    """A QIDO-style study result as the flat JSON the REST API answers."""
    summary: dict[str, Any] = {}
    for name, tag in _STUDY_SUMMARY_TAGS.items():
        values = result.get(f"{tag:08X}", {}).get("Value") or []
        if name == "patientName":
            summary[name] = values[0].get("Alphabetic", "") if values else ""
        elif name == "modalities":
            summary[name] = list(values)
        elif name in ("series", "instances"):
            summary[name] = int(values[0]) if values else 0
        else:
            summary[name] = str(values[0]) if values else ""
    return summary


__all__ = ["STUDY_LIST_FILTERS", "openapi_document", "study_list_query", "study_summary"]
