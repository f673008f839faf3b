"""Executes a :class:`~openvna.archive.query.Query` against the index.

Conditions on indexed attributes become SQL; conditions on anything else are matched
against the stored header of a representative instance (the first of the entity), as
are return keys that no column holds. Results come back as DICOM JSON objects (PS3.18
F.2), the form QIDO-RS sends as is and C-FIND turns into Identifiers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Select, and_, exists, false, func, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from openvna.archive.attributes import (
    BY_KEYWORD,
    BY_TAG,
    COMPUTED_ATTRIBUTES,
    INTEGER_COLUMNS,
    Level,
)
from openvna.archive.query import Condition, MatchKind, Query, matches_header, upper_bound
from openvna.index.access_repository import (
    patient_visible_clause,
    study_visible_clause,
    visible_patient_studies,
)
from openvna.index.schema import instances, patients, series, studies

if TYPE_CHECKING:
    from openvna.security.authz import StudyAccess

_LEVEL_TABLE = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}
_NORMALIZED_PN = {
    "patient_name": patients.c.patient_name_norm,
    "referring_physician_name": studies.c.referring_physician_name_norm,
}
_REQUEST_ATTRIBUTES = 0x00400275
_LEVEL_DEPTH = {
    level: depth
    for depth, level in enumerate((Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE))
}
_VISIBLE_PATIENT_STUDIES = "visible_patient_studies"
"""Label of Number of Patient Related Studies counted over visible studies only."""


def _column(condition: Condition) -> ColumnElement[Any]:
    assert condition.indexed is not None
    table = _LEVEL_TABLE[condition.indexed.level]
    if condition.indexed.vr == "PN":
        return _NORMALIZED_PN[condition.indexed.column]
    return table.c[condition.indexed.column]


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def condition_clause(
    condition: Condition, patient_studies: ColumnElement[Any] = patients.c.number_of_studies
) -> ColumnElement[bool]:
    """SQL for one condition on an indexed (or computed) attribute.

    ``patient_studies`` is what Number of Patient Related Studies matches against: the
    column, or the count of the studies a restricted principal may see.
    """
    if condition.keyword == "ModalitiesInStudy":
        modalities = [v.upper() for v in condition.values]
        if condition.kind is MatchKind.WILDCARD:
            match: ColumnElement[bool] = series.c.modality.like(
                _like_pattern(condition.values[0]), escape="\\"
            )
        else:
            match = series.c.modality.in_(modalities)
        return exists().where(series.c.study_pk == studies.c.pk, match)
    if condition.keyword in COMPUTED_ATTRIBUTES:
        return _computed_clause(condition, patient_studies)
    column = _column(condition)
    fold = condition.vr == "PN"
    values = [v.upper() for v in condition.values] if fold else list(condition.values)
    if condition.indexed is not None and condition.indexed.column in INTEGER_COLUMNS:
        try:
            numbers = _sql_integers(values)
        except ValueError:
            return column.is_(None) & column.isnot(None)  # matches nothing
        return column.in_(numbers)
    if condition.kind is MatchKind.WILDCARD:
        return column.like(_like_pattern(values[0]), escape="\\")
    if condition.kind is MatchKind.RANGE:
        # An empty value is no date or time, so no range matches it (PS3.4 C.2.2.2.5).
        parts: list[ColumnElement[bool]] = [column != ""]
        if condition.low is not None:
            parts.append(column >= condition.low)
        if condition.high is not None:
            parts.append(column <= upper_bound(condition.vr, condition.high))
        return and_(*parts)
    if condition.vr == "TM":
        return or_(*(column.like(_like_pattern(v) + "%", escape="\\") for v in values))
    if condition.kind is MatchKind.LIST:
        return column.in_(values)
    return column == values[0]


def _computed_clause(
    condition: Condition, patient_studies: ColumnElement[Any] = patients.c.number_of_studies
) -> ColumnElement[bool]:
    column = {
        "NumberOfStudyRelatedSeries": studies.c.number_of_series,
        "NumberOfStudyRelatedInstances": studies.c.number_of_instances,
        "NumberOfSeriesRelatedInstances": series.c.number_of_instances,
        "NumberOfPatientRelatedStudies": patient_studies,
    }.get(condition.keyword)
    if column is None:
        return true()  # not matchable: behave as universal matching
    try:
        return column.in_(_sql_integers(condition.values))
    except ValueError:
        return false()


SQL_INTEGER_MAX = 2**63 - 1
"""Largest integer SQLite and PostgreSQL (BIGINT) take: a value beyond matches no row."""


def _sql_integers(values: Iterable[str]) -> list[int]:
    """The values as integers, leaving out those no 64-bit column can hold (they would
    make the database driver fail rather than match nothing). Raises ValueError."""
    numbers = [int(value) for value in values]
    return [number for number in numbers if -SQL_INTEGER_MAX <= number <= SQL_INTEGER_MAX]


@dataclass(frozen=True)
class SearchRow:
    level: Level
    pk: int
    columns: dict[str, Any]


def _base_select(level: Level) -> Select[Any]:
    if level is Level.PATIENT:
        return select(patients).select_from(patients)
    if level is Level.STUDY:
        return (
            select(studies, patients)
            .select_from(studies)
            .join(patients, studies.c.patient_pk == patients.c.pk)
        )
    if level is Level.SERIES:
        return (
            select(series, studies, patients)
            .select_from(series)
            .join(studies, series.c.study_pk == studies.c.pk)
            .join(patients, studies.c.patient_pk == patients.c.pk)
        )
    return (
        select(instances, series, studies, patients)
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
        .join(patients, studies.c.patient_pk == patients.c.pk)
        .where(instances.c.is_latest.is_(True))
    )


class IndexSearch:
    """Read side of the index: query and retrieval lookups."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def search(self, query: Query) -> Iterator[dict[str, Any]]:
        """Matching entities as DICOM JSON objects holding the requested return keys.

        With ``query.access`` set, only visible studies (and the series, instances and
        patients of visible studies) are matched, in SQL before paging; Number of
        Patient Related Studies then counts visible studies only.
        """
        statement = _base_select(query.level)
        patient_studies: ColumnElement[Any] = patients.c.number_of_studies
        if query.access is not None:
            patient_studies = visible_patient_studies(query.access)
            statement = statement.add_columns(patient_studies.label(_VISIBLE_PATIENT_STUDIES))
            if query.level is Level.PATIENT:
                statement = statement.where(patient_visible_clause(query.access))
            else:
                statement = statement.where(study_visible_clause(query.access))
        for condition in query.sql_conditions:
            if _LEVEL_DEPTH[_condition_level(condition)] > _LEVEL_DEPTH[query.level]:
                continue  # keys below the query level are not matched (PS3.4 C.4.1.1.3.1)
            statement = statement.where(condition_clause(condition, patient_studies))
        table = _LEVEL_TABLE[query.level]
        statement = statement.order_by(table.c.pk)
        header_conditions = query.header_conditions
        needs_header = (
            bool(header_conditions)
            or query.include_all
            or any(
                tag not in BY_TAG and not _is_computed(tag) and tag != _REQUEST_ATTRIBUTES
                for tag in query.return_tags
            )
        )
        paginate_in_sql = not header_conditions
        if paginate_in_sql:
            if query.offset:
                statement = statement.offset(min(query.offset, SQL_INTEGER_MAX))
            if query.limit is not None:
                statement = statement.limit(min(query.limit, SQL_INTEGER_MAX))
        with self.engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
            headers: dict[int, dict[str, Any]] = {}
            if needs_header and rows:
                headers = self._headers(
                    connection,
                    query.level,
                    [int(r["pk"]) for r in _level_rows(rows, query.level)],
                    query.access,
                )
        skipped = 0
        produced = 0
        for row, level_pk in zip(
            rows, (int(r["pk"]) for r in _level_rows(rows, query.level)), strict=True
        ):
            header = headers.get(level_pk, {})
            if header_conditions and not all(matches_header(c, header) for c in header_conditions):
                continue
            if not paginate_in_sql:
                if skipped < query.offset:
                    skipped += 1
                    continue
                if query.limit is not None and produced >= query.limit:
                    return
            produced += 1
            yield _build_result(query, row, header)

    def _headers(
        self, connection: Any, level: Level, pks: list[int], access: StudyAccess | None = None
    ) -> dict[int, dict[str, Any]]:
        """Stored header of the first instance of each entity, keyed by entity pk (for a
        patient, of its first visible study when ``access`` restricts)."""
        result: dict[int, dict[str, Any]] = {}
        for start in range(0, len(pks), 500):
            chunk = pks[start : start + 500]
            if level is Level.IMAGE:
                statement = select(instances.c.pk.label("entity"), instances.c.dicom_json).where(
                    instances.c.pk.in_(chunk)
                )
            else:
                entity = {
                    Level.SERIES: series.c.pk,
                    Level.STUDY: studies.c.pk,
                    Level.PATIENT: patients.c.pk,
                }[level]
                first_select = (
                    select(entity.label("entity"), func.min(instances.c.pk).label("first"))
                    .select_from(instances)
                    .join(series, instances.c.series_pk == series.c.pk)
                    .join(studies, series.c.study_pk == studies.c.pk)
                    .join(patients, studies.c.patient_pk == patients.c.pk)
                    .where(entity.in_(chunk), instances.c.is_latest.is_(True))
                )
                if access is not None and level is Level.PATIENT:
                    first_select = first_select.where(study_visible_clause(access))
                first = first_select.group_by(entity).subquery()
                statement = select(first.c.entity, instances.c.dicom_json).join(
                    first, instances.c.pk == first.c.first
                )
            for row in connection.execute(statement):
                result[int(row.entity)] = json.loads(row.dicom_json)
        return result


def _condition_level(condition: Condition) -> Level:
    if condition.indexed is not None:
        return condition.indexed.level
    return COMPUTED_ATTRIBUTES[condition.keyword][2]


def _is_computed(tag: int) -> bool:
    return any(spec[0] == tag for spec in COMPUTED_ATTRIBUTES.values())


def _level_rows(rows: Any, level: Level) -> Iterator[dict[str, Any]]:
    """The mapping's 'pk' is ambiguous across joined tables; pick the level's own."""
    table = _LEVEL_TABLE[level]
    key = table.c.pk
    for row in rows:
        yield {"pk": row[key]}


def _element(vr: str, values: list[Any]) -> dict[str, Any]:
    cleaned = [v for v in values if v not in (None, "")]
    if not cleaned:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in cleaned]}
    if vr in ("IS", "US", "UL", "SL", "SS"):
        return {"vr": vr, "Value": [int(v) for v in cleaned]}
    return {"vr": vr, "Value": [str(v) for v in cleaned]}


def _build_result(query: Query, row: Any, header: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if query.include_all:
        for key, element in header.items():
            if "BulkDataURI" not in element and "InlineBinary" not in element:
                result[key] = element
    for tag in query.return_tags:
        key = f"{tag:08X}"
        attribute = BY_TAG.get(tag)
        if attribute is not None and _LEVEL_DEPTH[attribute.level] <= _LEVEL_DEPTH[query.level]:
            if attribute.vr == "PN" and key in header:
                result[key] = header[key]
                continue
            table = _LEVEL_TABLE[attribute.level]
            result[key] = _element(attribute.vr, [row[table.c[attribute.column]]])
            continue
        computed = _computed_value(tag, row, query.level)
        if computed is not None:
            result[key] = computed
            continue
        if key in header:
            result[key] = header[key]
    # Nested indexed keys (Request Attributes Sequence items) come from the header, or
    # from their columns when no header was read.
    for attribute in BY_KEYWORD.values():
        if (
            attribute.path
            and f"{attribute.path[0]:08X}" in header
            and attribute.path[0] in query.return_tags
        ):
            result[f"{attribute.path[0]:08X}"] = header[f"{attribute.path[0]:08X}"]
    key = f"{_REQUEST_ATTRIBUTES:08X}"
    if (
        _REQUEST_ATTRIBUTES in query.return_tags
        and key not in result
        and not header
        and _LEVEL_DEPTH[query.level] >= _LEVEL_DEPTH[Level.SERIES]
    ):
        item = {
            f"{attribute.tag:08X}": _element(attribute.vr, [row[series.c[attribute.column]]])
            for attribute in BY_KEYWORD.values()
            if attribute.path == (_REQUEST_ATTRIBUTES,) and row[series.c[attribute.column]]
        }
        if item:
            result[key] = {"vr": "SQ", "Value": [item]}
    return result


def _computed_value(tag: int, row: Any, level: Level) -> dict[str, Any] | None:
    depth = _LEVEL_DEPTH[level]
    has_study = depth >= 1
    if tag == 0x00080061 and has_study:
        value = row[studies.c.modalities_in_study]
        return _element("CS", value.split("\\") if value else [])
    if tag == 0x00080062 and has_study:
        value = row[studies.c.sop_classes_in_study]
        return _element("UI", value.split("\\") if value else [])
    if tag == 0x00201206 and has_study:
        return _element("IS", [row[studies.c.number_of_series]])
    if tag == 0x00201208 and has_study:
        return _element("IS", [row[studies.c.number_of_instances]])
    if tag == 0x00201209 and depth >= 2:
        return _element("IS", [row[series.c.number_of_instances]])
    if tag == 0x00201200:
        if _VISIBLE_PATIENT_STUDIES in row:
            return _element("IS", [row[_VISIBLE_PATIENT_STUDIES]])
        return _element("IS", [row[patients.c.number_of_studies]])
    return None


@dataclass(frozen=True)
class RetrievableInstance:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size_bytes: int
    study_instance_uid: str
    series_instance_uid: str


def retrievable_select(
    *,
    patient_ids: tuple[str, ...] = (),
    study_uids: tuple[str, ...] = (),
    series_uids: tuple[str, ...] = (),
    sop_instance_uids: tuple[str, ...] = (),
    access: StudyAccess | None = None,
) -> Select[Any]:
    statement = (
        select(
            instances.c.sop_class_uid,
            instances.c.sop_instance_uid,
            instances.c.transfer_syntax_uid,
            instances.c.storage_key,
            instances.c.size_bytes,
            studies.c.study_instance_uid,
            series.c.series_instance_uid,
        )
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
        .join(patients, studies.c.patient_pk == patients.c.pk)
        .where(instances.c.is_latest.is_(True))
        .order_by(
            studies.c.pk,
            series.c.series_number,
            series.c.pk,
            instances.c.instance_number,
            instances.c.pk,
        )
    )
    if patient_ids:
        statement = statement.where(patients.c.patient_id.in_(patient_ids))
    if study_uids:
        statement = statement.where(studies.c.study_instance_uid.in_(study_uids))
    if series_uids:
        statement = statement.where(series.c.series_instance_uid.in_(series_uids))
    if sop_instance_uids:
        statement = statement.where(instances.c.sop_instance_uid.in_(sop_instance_uids))
    if access is not None:
        statement = statement.where(study_visible_clause(access))
    return statement


def find_retrievable(
    engine: Engine,
    *,
    patient_ids: tuple[str, ...] = (),
    study_uids: tuple[str, ...] = (),
    series_uids: tuple[str, ...] = (),
    sop_instance_uids: tuple[str, ...] = (),
    access: StudyAccess | None = None,
) -> list[RetrievableInstance]:
    """Instances under the given entities (the unique keys of a C-MOVE/C-GET/WADO request);
    with ``access``, only those of studies the principal may see."""
    if not (patient_ids or study_uids or series_uids or sop_instance_uids):
        return []
    statement = retrievable_select(
        patient_ids=patient_ids,
        study_uids=study_uids,
        series_uids=series_uids,
        sop_instance_uids=sop_instance_uids,
        access=access,
    )
    with engine.connect() as connection:
        return [RetrievableInstance(*row) for row in connection.execute(statement)]
