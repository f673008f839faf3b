"""C-FIND/C-MOVE/C-GET Identifiers ↔ the shared query model (PS3.4 C.4.1.1.3).

Every key in the Identifier is a return key; those with a value are also matching keys.
Sequence matching (C.2.2.2.6) is supported for Request Attributes Sequence, whose item
keys map to indexed columns; other sequences are returned whole.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from openvna.archive.attributes import LEVEL_ORDER, UNIQUE_KEY, Level
from openvna.archive.query import Condition, Query, build_condition, check_level
from openvna.errors import QueryError

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

_STUDY_ROOT_LEVELS = (Level.STUDY, Level.SERIES, Level.IMAGE)
_SKIPPED_TAGS = {0x00080005, 0x00080052, 0x00080054, 0x00080056}
_REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
_UNIQUE_TAGS = {
    Level.PATIENT: 0x00100020,
    Level.STUDY: 0x0020000D,
    Level.SERIES: 0x0020000E,
    Level.IMAGE: 0x00080018,
}


def levels_for_model(sop_class_uid: str) -> tuple[Level, ...]:
    if sop_class_uid in (STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET):
        return _STUDY_ROOT_LEVELS
    return LEVEL_ORDER


def element_text(value: Any) -> str:
    """The Identifier value as the string matching works on (multi-values joined by \\)."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(element_text(v) for v in value)
    return str(value)


def identifier_to_query(identifier: Dataset, sop_class_uid: str) -> Query:
    """Translate a C-FIND Identifier into a :class:`Query`."""
    if "QueryRetrieveLevel" not in identifier:
        raise QueryError("the Identifier lacks Query/Retrieve Level (0008,0052)")
    level = check_level(str(identifier.QueryRetrieveLevel), levels_for_model(sop_class_uid))
    conditions: list[Condition] = []
    return_tags: list[int] = []
    for element in identifier:
        tag = int(element.tag)
        if tag in _SKIPPED_TAGS or element.tag.group == 0x0002:
            continue
        return_tags.append(tag)
        if element.VR == "SQ":
            conditions.extend(_sequence_conditions(tag, element.value))
            continue
        condition = build_condition(tag, element_text(element.value))
        if condition is not None:
            conditions.append(condition)
    depth = LEVEL_ORDER.index(level)
    for upper in LEVEL_ORDER[: depth + 1]:
        if upper is Level.PATIENT and sop_class_uid == STUDY_ROOT_FIND and level is not Level.STUDY:
            continue
        tag = _UNIQUE_TAGS[upper]
        if tag not in return_tags:
            return_tags.append(tag)
    return Query(level=level, conditions=tuple(conditions), return_tags=tuple(return_tags))


def _sequence_conditions(tag: int, items: Any) -> list[Condition]:
    if tag != _REQUEST_ATTRIBUTES_SEQUENCE or not items:
        return []
    conditions = []
    for element in items[0]:
        condition = build_condition(int(element.tag), element_text(element.value))
        if condition is not None:
            conditions.append(condition)
    return conditions


def json_to_identifier(result: dict[str, Any], level: Level, retrieve_aet: str) -> Dataset:
    """A matching result (DICOM JSON) as a C-FIND response Identifier."""
    dataset = Dataset.from_json(result)
    dataset.QueryRetrieveLevel = level.value
    dataset.RetrieveAETitle = retrieve_aet
    if _has_non_ascii(result):
        dataset.SpecificCharacterSet = "ISO_IR 192"
    return dataset


def _has_non_ascii(result: dict[str, Any]) -> bool:
    return not json.dumps(result, ensure_ascii=False).isascii()


def retrieve_keys(identifier: Dataset, sop_class_uid: str) -> dict[str, tuple[str, ...]]:
    """Unique keys of a C-MOVE/C-GET Identifier (PS3.4 C.4.2.1.4, C.4.3.1.3)."""
    if "QueryRetrieveLevel" not in identifier:
        raise QueryError("the Identifier lacks Query/Retrieve Level (0008,0052)")
    level = check_level(str(identifier.QueryRetrieveLevel), levels_for_model(sop_class_uid))
    keyword = UNIQUE_KEY[level]
    values = tuple(v for v in element_text(identifier.get(keyword, "")).split("\\") if v)
    if not values:
        raise QueryError(f"a {level} level retrieve needs {keyword}")
    argument = {
        Level.PATIENT: "patient_ids",
        Level.STUDY: "study_uids",
        Level.SERIES: "series_uids",
        Level.IMAGE: "sop_instance_uids",
    }[level]
    keys: dict[str, tuple[str, ...]] = {argument: values}
    return keys
