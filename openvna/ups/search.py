"""Matching keys of the UPS-RS Search transaction (PS3.18 11.9, 8.3.4; PS3.4 CC.2.8).

Values are classified by the shared query model (:func:`openvna.archive.query.
build_condition`), so single value, wildcard, range, UID list and the DT range on
Scheduled Procedure Step Start DateTime behave as in QIDO-RS and C-FIND. Keys may name
attributes inside sequences (``ScheduledStationNameCodeSequence.CodeValue=AI``,
``InputInformationSequence.SeriesInstanceUID=1.2.3``); all keys within one sequence must
match in the same item (PS3.4 C.2.2.2.6, sequence matching).

The common keys narrow the candidates in SQL first (``ups_workitems`` columns); the rest
are matched on the stored DICOM JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from openvna.archive.query import (
    Condition,
    MatchKind,
    build_condition,
    resolve_attribute,
    value_matches,
)
from openvna.errors import QueryError
from openvna.ups.states import invalid_request
from openvna.ups.workitem import study_of

Json = dict[str, Any]

_CONTROL = {"includefield", "fuzzymatching", "limit", "offset"}
_IGNORED = {"_", "charset", "accept"}
STUDY_KEY = "0020000D"
COLUMNS = {
    "00741000": "state",
    "00741200": "priority",
    "00741202": "worklist_label",
    "00100020": "patient_id",
    "00080018": "sop_instance_uid",
    STUDY_KEY: "study_instance_uid",
}
"""Top-level keys answered by ``ups_workitems`` columns. StudyInstanceUID is the
workitem's study wherever it is recorded (top level, Referenced Request Sequence or Input
Information Sequence), so it is matched on the column only."""


@dataclass(frozen=True)
class KeyMatch:
    """One matching key: its path of tags (sequences first) and the condition on the last
    (None: universal matching, the attribute is only returned)."""

    path: tuple[str, ...]
    condition: Condition | None


@dataclass(frozen=True)
class WorkitemQuery:
    keys: tuple[KeyMatch, ...] = ()
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Column name -> accepted values (exact), from single-value and UID-list keys."""
    limit: int = 100
    offset: int = 0
    requested_limit: int | None = None

    def matches(self, dataset: Json) -> bool:
        return _all_match(dataset, [k for k in self.keys if k.path != (STUDY_KEY,)])


def parse_key(name: str, value: str) -> KeyMatch:
    """``Keyword[.Keyword...]`` or ``ggggeeee[.ggggeeee...]`` with its value."""
    try:
        tags = [resolve_attribute(part.strip()) for part in name.split(".")]
        condition = build_condition(tags[-1], value)
    except QueryError as error:
        raise invalid_request(f"invalid matching key {name}={value}: {error}") from error
    return KeyMatch(tuple(f"{tag:08X}" for tag in tags), condition)


def parse_search(parameters: Iterable[tuple[str, str]], max_results: int) -> WorkitemQuery:
    """Translate Search query parameters; raises :class:`UpsError` (HTTP 400)."""
    keys: list[KeyMatch] = []
    limit: int | None = None
    offset = 0
    for name, value in parameters:
        lowered = name.lower()
        if not name or lowered in _IGNORED:
            continue
        if lowered in _CONTROL:
            if lowered == "includefield":
                for field_name in value.split(","):
                    if field_name.strip() and field_name.strip().lower() != "all":
                        parse_key(field_name.strip(), "")  # validates the attribute name
            elif lowered in ("limit", "offset"):
                number = _non_negative(name, value)
                if lowered == "limit":
                    limit = number
                else:
                    offset = number
            continue
        keys.append(parse_key(name, value))
    return WorkitemQuery(
        keys=tuple(keys),
        columns=column_filters(keys),
        limit=max_results if limit is None else min(limit, max_results),
        offset=offset,
        requested_limit=limit,
    )


def parse_filter(text: str) -> tuple[KeyMatch, ...]:
    """The ``filter`` of a Filtered Worklist Subscription: ``attr=value,attr=value``
    (PS3.18 11.10.1.2)."""
    keys = []
    for pair in text.split(","):
        if not pair.strip():
            continue
        name, separator, value = pair.partition("=")
        if not separator:
            raise invalid_request(f"filter entry {pair!r} is not attribute=value")
        keys.append(parse_key(name.strip(), value.strip()))
    if not keys:
        raise invalid_request("a Filtered Worklist Subscription needs a filter")
    return tuple(keys)


def column_filters(keys: Iterable[KeyMatch]) -> dict[str, tuple[str, ...]]:
    columns: dict[str, tuple[str, ...]] = {}
    for key in keys:
        condition = key.condition
        if len(key.path) != 1 or condition is None or key.path[0] not in COLUMNS:
            continue
        if condition.kind in (MatchKind.SINGLE, MatchKind.LIST):
            columns[COLUMNS[key.path[0]]] = condition.values
    return columns


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise invalid_request(f"{name} must be a non-negative integer, not {value!r}")
    return number


def _all_match(dataset: Json, keys: list[KeyMatch]) -> bool:
    """Every key matches; keys under one sequence must match in one item."""
    by_sequence: dict[str, list[KeyMatch]] = {}
    for key in keys:
        if len(key.path) == 1:
            if key.condition is not None and not _leaf_matches(dataset, key.path[0], key.condition):
                return False
        else:
            by_sequence.setdefault(key.path[0], []).append(key)
    for sequence_tag, nested in by_sequence.items():
        inner = [KeyMatch(k.path[1:], k.condition) for k in nested]
        if all(k.condition is None for k in inner):
            continue
        element = dataset.get(sequence_tag)
        sequence_items = element.get("Value", []) if isinstance(element, dict) else []
        if not any(isinstance(item, dict) and _all_match(item, inner) for item in sequence_items):
            return False
    return True


def _leaf_matches(dataset: Json, tag: str, condition: Condition) -> bool:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return False
    for raw in element.get("Value") or []:
        if isinstance(raw, dict):
            if "Alphabetic" not in raw:
                continue
            raw = raw["Alphabetic"]
        if raw is not None and value_matches(condition, str(raw)):
            return True
    return False


def matches_filter(dataset: Json, keys: tuple[KeyMatch, ...]) -> bool:
    """Whether a workitem falls under a Filtered Worklist Subscription's filter."""
    query = WorkitemQuery(keys=keys)
    if not query.matches(dataset):
        return False
    study = [k for k in keys if k.path == (STUDY_KEY,) and k.condition is not None]
    if study:
        found = study_of(dataset)
        return any(value_matches(k.condition, found) for k in study if k.condition is not None)
    return True
