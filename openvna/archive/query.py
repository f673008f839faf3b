"""The query model shared by C-FIND and QIDO-RS (ARCHITECTURE.md property 2).

An adapter turns its request (a C-FIND Identifier, QIDO-RS query parameters) into a
:class:`Query`: the level, one :class:`Condition` per matching key, and the keys to
return. Matching follows PS3.4 C.2.2.2: universal (empty value), single value,
wildcard (``*`` and ``?``, string VRs only), range (DA, TM, DT), list of UIDs (and, as
QIDO-RS allows, lists of values for other VRs), sequence matching through the items of
Request Attributes Sequence. PN matching is case-insensitive, which C.2.2.2.1 leaves to
the implementation and which every clinical user expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from openvna.archive.attributes import (
    BY_KEYWORD,
    COMPUTED_ATTRIBUTES,
    LEVEL_ORDER,
    IndexedAttribute,
    Level,
)
from openvna.errors import QueryError

if TYPE_CHECKING:
    from openvna.security.authz import StudyAccess

WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
RANGE_VRS = {"DA", "TM", "DT"}
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DATETIME = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")


class MatchKind(StrEnum):
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    LIST = "list"


@dataclass(frozen=True)
class Condition:
    """One matching key with a non-empty value."""

    keyword: str
    tag: int
    vr: str
    kind: MatchKind
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None
    indexed: IndexedAttribute | None = None
    """The index column that answers it; None means match on stored headers."""


@dataclass(frozen=True)
class Query:
    level: Level
    conditions: tuple[Condition, ...]
    return_tags: tuple[int, ...]
    limit: int | None = None
    offset: int = 0
    include_all: bool = False
    fuzzy: bool = False
    access: StudyAccess | None = None
    """Study-level restriction of the principal asking (None: every study). Applied in
    SQL by the index, so results, counts and paging only ever cover visible studies."""

    @property
    def sql_conditions(self) -> tuple[Condition, ...]:
        return tuple(
            c for c in self.conditions if c.indexed is not None or c.keyword in COMPUTED_ATTRIBUTES
        )

    @property
    def header_conditions(self) -> tuple[Condition, ...]:
        return tuple(
            c for c in self.conditions if c.indexed is None and c.keyword not in COMPUTED_ATTRIBUTES
        )


def keyword_and_vr(tag: int) -> tuple[str, str]:
    keyword = keyword_for_tag(tag) or f"{tag:08X}"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = "UN"
    if "or" in vr:
        vr = vr.split(" or ")[0]
    return keyword, vr


def resolve_attribute(name: str) -> int:
    """Tag for a keyword or an 8-hex-digit tag (QIDO-RS ``{attributeID}``)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise QueryError(f"unknown attribute {name!r}")
    return int(tag)


def build_condition(tag: int, raw_value: str, *, list_separator: str = "\\") -> Condition | None:
    """Classify one key's value per PS3.4 C.2.2.2; None for universal matching."""
    keyword, vr = keyword_and_vr(tag)
    indexed = BY_KEYWORD.get(keyword)
    value = raw_value.rstrip("\x00").strip()  # a UI value may end in its NUL padding
    if "\x00" in value:  # in no DICOM value; PostgreSQL text cannot hold it either
        raise QueryError(f"{keyword} value holds a NUL character")
    if value == "" or value == "*":
        return None
    if vr == "TM":
        value = value.replace(":", "")  # ACR-NEMA hh:mm:ss form; stored times have no colons
    if (vr in RANGE_VRS and "-" in value.lstrip("-+")) or (
        vr in RANGE_VRS and value.startswith("-")
    ):
        return _range_condition(keyword, tag, vr, value, indexed)
    if vr in RANGE_VRS:
        _check_temporal(keyword, vr, value)
        return Condition(keyword, tag, vr, MatchKind.SINGLE, (value,), indexed=indexed)
    parts = (
        [part.strip() for part in value.split(list_separator)]
        if list_separator in value
        else [value]
    )
    if vr == "UI":
        return Condition(
            keyword,
            tag,
            vr,
            MatchKind.LIST if len(parts) > 1 else MatchKind.SINGLE,
            tuple(parts),
            indexed=indexed,
        )
    if len(parts) > 1:
        return Condition(keyword, tag, vr, MatchKind.LIST, tuple(parts), indexed=indexed)
    if vr in WILDCARD_VRS and ("*" in value or "?" in value):
        return Condition(keyword, tag, vr, MatchKind.WILDCARD, (value,), indexed=indexed)
    return Condition(keyword, tag, vr, MatchKind.SINGLE, (value,), indexed=indexed)


def _check_temporal(keyword: str, vr: str, value: str) -> None:
    """Reject malformed and impossible dates and times (PS3.5 Table 6.2-1): a month 13
    or a 25th hour is a client error, not a query that silently matches nothing."""
    pattern = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME}[vr]
    text = value.replace(":", "") if vr == "TM" else value
    if not pattern.match(text) or not _plausible(vr, text):
        raise QueryError(f"invalid {vr} value {value!r} for {keyword}")


def _plausible(vr: str, text: str) -> bool:
    if vr == "DA":
        return _valid_date(text)
    if vr == "TM":
        return _valid_time(text)
    date_part = text[:8]
    if len(date_part) == 8 and not _valid_date(date_part):
        return False
    if len(date_part) >= 6 and not 1 <= int(date_part[4:6]) <= 12:
        return False
    time_part = re.split(r"[+-]", text[8:])[0]
    return not time_part or _valid_time(time_part)


def _valid_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _valid_time(text: str) -> bool:
    hours = int(text[0:2])
    minutes = int(text[2:4]) if len(text) >= 4 else 0
    seconds = int(text[4:6]) if len(text) >= 6 else 0
    return hours < 24 and minutes < 60 and seconds < 61  # 60: a leap second


def _range_condition(
    keyword: str, tag: int, vr: str, value: str, indexed: IndexedAttribute | None
) -> Condition:
    if value.count("-") != 1 and vr != "DT":
        raise QueryError(f"invalid range {value!r} for {keyword}")
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    for bound in (low, high):
        if bound:
            _check_temporal(keyword, vr, bound)
    if low and high and low > high:
        raise QueryError(f"range {value!r} for {keyword} has its start after its end")
    return Condition(
        keyword, tag, vr, MatchKind.RANGE, (), low=low or None, high=high or None, indexed=indexed
    )


def upper_bound(vr: str, high: str) -> str:
    """Pad an inclusive upper bound so that more precise stored values still match.

    ``StudyTime`` ``-1200`` must include 12:00:59.5 (PS3.4 C.2.2.2.5): every stored value
    starting with the bound's digits sorts at or below the padded bound.
    """
    full = {"DA": 8, "TM": 13, "DT": 26}.get(vr, len(high))
    return high + "9" * max(0, full - len(high))


def check_level(level: str, model_levels: tuple[Level, ...] = LEVEL_ORDER) -> Level:
    try:
        parsed = Level(level.strip().upper())
    except ValueError as error:
        raise QueryError(f"invalid Query/Retrieve Level {level!r}") from error
    if parsed not in model_levels:
        raise QueryError(f"level {parsed} is not part of this information model")
    return parsed


def matches_header(condition: Condition, header: dict[str, Any]) -> bool:
    """Match a condition against a stored DICOM JSON header (attributes not in columns)."""
    element = header.get(f"{condition.tag:08X}")
    if element is None:
        return False
    raw_values = element.get("Value") or []
    values: list[str] = []
    for raw in raw_values:
        if isinstance(raw, dict):
            if condition.vr == "SQ":
                continue
            values.append(str(raw.get("Alphabetic", "")))
        else:
            values.append(str(raw))
    return any(value_matches(condition, value) for value in values)


def value_matches(condition: Condition, value: str) -> bool:
    """PS3.4 C.2.2.2 matching of one stored value (used on headers and in tests)."""
    fold = condition.vr == "PN"
    candidate = value.upper() if fold else value
    if condition.kind is MatchKind.RANGE:
        stored = value.replace(":", "") if condition.vr == "TM" else value
        if condition.low is not None and stored < condition.low:
            return False
        return not (
            condition.high is not None and stored > upper_bound(condition.vr, condition.high)
        )
    if condition.kind is MatchKind.WILDCARD:
        pattern = condition.values[0].upper() if fold else condition.values[0]
        regex = "".join(
            ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern
        )
        return re.fullmatch(regex, candidate, flags=re.DOTALL) is not None
    targets = [v.upper() if fold else v for v in condition.values]
    if condition.vr == "TM" and condition.kind is MatchKind.SINGLE:
        stored = value.replace(":", "")
        return stored.startswith(condition.values[0].replace(":", ""))
    return candidate in targets
