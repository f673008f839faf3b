"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

The query parameters become the shared :class:`~openvna.archive.query.Query` that C-FIND
also uses (ARCHITECTURE.md property 2), so matching is the same in both protocols:
PS3.4 C.2.2.2 single value, wildcard, range, UID list and sequence matching. Results
are DICOM JSON (PS3.18 F.2) holding the level's default attributes (PS3.18 Table
10.6.3-3 to 10.6.3-5), the matching keys and any ``includefield`` attributes, plus
RetrieveURL (0008,1190) and InstanceAvailability (0008,0056).

A search with no match answers ``200`` with an empty array: CP-2473 aligns QIDO-RS with
RFC 9110 (a 204 carries no content) and with C-FIND's "Success, zero results".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from openvna.archive.attributes import Level
from openvna.archive.query import Condition, Query, build_condition, resolve_attribute
from openvna.errors import BadRequestError, QueryError
from openvna.web.access import study_access
from openvna.web.dicomweb.context import DicomWebContext, resource_url
from openvna.web.dicomweb.media import DICOM_JSON, negotiate, parse_accept

_REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
_RETRIEVE_URL = "00081190"
_INSTANCE_AVAILABILITY = "00080056"
_CONTROL_PARAMETERS = {"includefield", "fuzzymatching", "limit", "offset"}
_IGNORED_PARAMETERS = {"_", "charset"}
"""Cache busters some browsers add, and a charset hint we always satisfy (UTF-8)."""

_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E
_SOP_INSTANCE_UID = 0x00080018

STUDY_DEFAULTS: tuple[int, ...] = (
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080061,  # ModalitiesInStudy
    0x00080090,  # ReferringPhysicianName
    0x00081030,  # StudyDescription
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00100040,  # PatientSex
    _STUDY_UID,
    0x00200010,  # StudyID
    0x00201206,  # NumberOfStudyRelatedSeries
    0x00201208,  # NumberOfStudyRelatedInstances
)
"""PS3.18 Table 10.6.3-3 (and StudyDescription, which every study list shows).

TimezoneOffsetFromUTC is left out of the defaults at every level: the index has no
column for it, and asking for it costs a stored-header read per result (include it with
``includefield=TimezoneOffsetFromUTC``).
"""

SERIES_DEFAULTS: tuple[int, ...] = (
    0x00080060,  # Modality
    0x0008103E,  # SeriesDescription
    _SERIES_UID,
    0x00200011,  # SeriesNumber
    0x00201209,  # NumberOfSeriesRelatedInstances
    0x00400244,  # PerformedProcedureStepStartDate
    0x00400245,  # PerformedProcedureStepStartTime
    _REQUEST_ATTRIBUTES_SEQUENCE,
)
"""PS3.18 Table 10.6.3-4."""

INSTANCE_DEFAULTS: tuple[int, ...] = (
    0x00080016,  # SOPClassUID
    _SOP_INSTANCE_UID,
    0x00200013,  # InstanceNumber
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280008,  # NumberOfFrames
)
"""PS3.18 Table 10.6.3-5."""


@dataclass(frozen=True)
class SearchScope:
    """What the resource path fixes: the level searched and the UIDs above it."""

    level: Level
    study_uid: str | None = None
    series_uid: str | None = None

    def default_tags(self) -> tuple[int, ...]:
        """Default return attributes: the level's own, plus the levels above that the path
        leaves open (PS3.18 10.6.3.3: /series also returns study attributes, and so on).
        The UIDs of the levels above are always returned, so that every result can be
        retrieved."""
        tags: list[int] = []
        if self.level is Level.STUDY or self.study_uid is None:
            tags.extend(STUDY_DEFAULTS)
        if self.level is Level.SERIES or (self.level is Level.IMAGE and self.series_uid is None):
            tags.extend(SERIES_DEFAULTS)
        if self.level is Level.IMAGE:
            tags.extend(INSTANCE_DEFAULTS)
        tags.append(_STUDY_UID)
        if self.level is not Level.STUDY:
            tags.append(_SERIES_UID)
        return tuple(dict.fromkeys(tags))


@dataclass(frozen=True)
class SearchRequest:
    query: Query
    requested_limit: int | None


def parse_search(
    scope: SearchScope, parameters: Iterable[tuple[str, str]], max_results: int
) -> SearchRequest:
    """Translate QIDO-RS query parameters into the shared query model.

    Raises
    ------
    QueryError
        Unknown attribute, invalid value (a malformed date, a bad range), bad
        ``limit``/``offset``/``fuzzymatching`` (HTTP 400).
    """
    conditions: dict[int, Condition] = {}
    return_tags = list(scope.default_tags())
    include_all = False
    fuzzy = False
    limit: int | None = None
    offset = 0
    for name, value in parameters:
        if name in _IGNORED_PARAMETERS or not name:
            continue
        lowered = name.lower()
        if lowered == "includefield":
            for field in (f.strip() for f in value.split(",")):
                if not field:
                    continue
                if field.lower() == "all":
                    include_all = True
                else:
                    return_tags.append(_attribute_tag(field))
        elif lowered == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, not {value!r}")
            fuzzy = value.lower() == "true"
        elif lowered == "limit":
            limit = _non_negative(name, value)
        elif lowered == "offset":
            offset = _non_negative(name, value)
        else:
            tag, condition = _matching_key(name, value)
            if tag not in return_tags:
                return_tags.append(tag)
            if condition is not None:
                conditions[condition.tag] = condition
    for fixed_tag, uid in ((_STUDY_UID, scope.study_uid), (_SERIES_UID, scope.series_uid)):
        if uid is not None:
            fixed = build_condition(fixed_tag, uid)
            if fixed is not None:
                conditions[fixed_tag] = fixed
    effective_limit = max_results if limit is None else min(limit, max_results)
    query = Query(
        level=scope.level,
        conditions=tuple(conditions.values()),
        return_tags=tuple(dict.fromkeys(return_tags)),
        limit=effective_limit + 1,  # one more, to know whether results were cut
        offset=offset,
        include_all=include_all,
        fuzzy=fuzzy,
    )
    return SearchRequest(query, limit)


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
    return number


def _attribute_tag(name: str) -> int:
    """Tag of ``name``: a keyword, 8 hex digits, or a dotted path into a sequence."""
    if "." in name:
        path = [resolve_attribute(part) for part in name.split(".")]
        return path[0]
    return resolve_attribute(name)


def _matching_key(name: str, value: str) -> tuple[int, Condition | None]:
    """(return tag, condition) of one ``{attributeID}={value}`` parameter (PS3.18 8.3.4).

    A dotted ``{sequence}.{attribute}`` is sequence matching (PS3.4 C.2.2.2.6); the index
    matches inside Request Attributes Sequence, whose items every C-FIND client uses.
    """
    if "." in name:
        path = [resolve_attribute(part) for part in name.split(".")]
        if len(path) != 2 or path[0] != _REQUEST_ATTRIBUTES_SEQUENCE:
            raise QueryError(
                f"sequence matching on {name!r} is not supported: only "
                "RequestAttributesSequence.{attribute} is"
            )
        return path[0], build_condition(path[1], value)
    tag = resolve_attribute(name)
    if tag == _REQUEST_ATTRIBUTES_SEQUENCE:
        return tag, None
    condition = build_condition(tag, value)
    if condition is not None and condition.vr == "UI" and "," in value:
        # UID list matching separates the UIDs with commas (PS3.18 8.3.4.1).
        condition = build_condition(tag, value.replace(",", "\\"))
    return tag, condition


def routes(context: DicomWebContext) -> list[BaseRoute]:
    archive = context.archive
    max_results = context.http.qido_max_results

    def run_search(request: Request, search: SearchRequest) -> tuple[list[dict[str, Any]], bool]:
        results = list(archive.search(search.query))
        truncated = search.query.limit is not None and len(results) >= search.query.limit
        if truncated:
            results = results[:-1]
        base = context.base_url(request)
        for result in results:
            _add_retrieve_url(result, search.query.level, base)
            result[_INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        return results, truncated

    async def search(request: Request, scope: SearchScope) -> Response:
        negotiate(parse_accept(request.headers.get("accept")), [DICOM_JSON, "application/json"])
        parameters = request.query_params.multi_items()
        try:
            parsed = parse_search(scope, parameters, max_results)
        except QueryError as error:
            raise BadRequestError(f"invalid QIDO-RS query: {error}") from error
        # Hidden studies are filtered in SQL, before limit/offset: counts, paging and the
        # "more results" warning only ever reflect what this principal may see.
        access = study_access(request, archive)
        if access is not None:
            parsed = SearchRequest(replace(parsed.query, access=access), parsed.requested_limit)
        results, truncated = await run_in_threadpool(run_search, request, parsed)
        headers = {}
        if truncated:
            headers["Warning"] = (
                '299 openvna "There are additional results that can be requested '
                '(use offset and limit)"'
            )
        body = json.dumps(results, ensure_ascii=False, separators=(",", ":"))
        return Response(body, media_type=DICOM_JSON, headers=headers)

    async def all_studies(request: Request) -> Response:
        return await search(request, SearchScope(Level.STUDY))

    async def all_series(request: Request) -> Response:
        return await search(request, SearchScope(Level.SERIES))

    async def all_instances(request: Request) -> Response:
        return await search(request, SearchScope(Level.IMAGE))

    async def study_series(request: Request) -> Response:
        study = request.path_params["study"]
        return await search(request, SearchScope(Level.SERIES, study_uid=study))

    async def study_instances(request: Request) -> Response:
        study = request.path_params["study"]
        return await search(request, SearchScope(Level.IMAGE, study_uid=study))

    async def series_instances(request: Request) -> Response:
        study, series = request.path_params["study"], request.path_params["series"]
        return await search(request, SearchScope(Level.IMAGE, study_uid=study, series_uid=series))

    return [
        Route("/studies", all_studies, methods=["GET"]),
        Route("/series", all_series, methods=["GET"]),
        Route("/instances", all_instances, methods=["GET"]),
        Route("/studies/{study}/series", study_series, methods=["GET"]),
        Route("/studies/{study}/instances", study_instances, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances", series_instances, methods=["GET"]),
    ]


def _first(result: dict[str, Any], tag: int) -> str | None:
    values = result.get(f"{tag:08X}", {}).get("Value")
    return str(values[0]) if values else None


def _add_retrieve_url(result: dict[str, Any], level: Level, base: str) -> None:
    study = _first(result, _STUDY_UID)
    series = _first(result, _SERIES_UID) if level is not Level.STUDY else None
    instance = _first(result, _SOP_INSTANCE_UID) if level is Level.IMAGE else None
    if study is None or (level is not Level.STUDY and series is None):
        return
    if level is Level.IMAGE and instance is None:
        return
    url = resource_url(base, study, series, instance)
    result[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
