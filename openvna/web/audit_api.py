"""REST API of the audit trail under ``/api/audit``: the records and the chain check.

Both need ``audit:read`` (the auditor and admin roles): the route table
(:mod:`openvna.security.routes`) checks it before the handler runs and the handler
checks again, so a route-table slip cannot open the log. Reading the log is itself
audited (Audit Log Used, by the security middleware).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from openvna.archive.service import Archive
from openvna.errors import BadRequestError
from openvna.security.audit.store import (
    MAX_LIMIT,
    AuditFilter,
    parse_time,
    query_records,
    resolve_event_id,
)
from openvna.security.audit.verify import verify_archive
from openvna.security.errors import AccessDenied
from openvna.security.permissions import Permission
from openvna.web.access import http_exception, request_principal

_OUTCOMES = {"0", "4", "8", "12"}


def audit_filter(parameters: Mapping[str, str]) -> AuditFilter:
    """The filter of ``GET /api/audit/events`` (raises BadRequestError on bad values)."""
    try:
        since = parse_time(parameters["since"]) if parameters.get("since") else None
        until = parse_time(parameters["until"]) if parameters.get("until") else None
        event_id = resolve_event_id(parameters["event"]) if parameters.get("event") else ""
        limit = _count(parameters.get("limit"), 100, "limit")
        offset = _count(parameters.get("offset"), 0, "offset")
    except ValueError as error:
        raise BadRequestError(str(error)) from error
    if any("\x00" in value or len(value) > 1024 for value in parameters.values()):
        raise BadRequestError("query parameters may not hold NUL or exceed 1024 characters")
    outcome = parameters.get("outcome") or None
    if outcome is not None and outcome not in _OUTCOMES:
        raise BadRequestError("outcome is one of 0, 4, 8, 12 (EventOutcomeIndicator)")
    if limit > MAX_LIMIT:
        raise BadRequestError(f"limit is at most {MAX_LIMIT}")
    return AuditFilter(
        since=since,
        until=until,
        event_id=event_id,
        user_id=parameters.get("user", ""),
        study_uid=parameters.get("study", ""),
        outcome=int(outcome) if outcome is not None else None,
        limit=limit,
        offset=offset,
    )


def _count(text: str | None, default: int, name: str) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 12:
        raise ValueError(f"{name} is a non-negative integer")
    return int(text)


def routes(archive: Archive) -> list[BaseRoute]:
    def require_auditor(request: Request) -> None:
        principal = request_principal(request)
        try:
            archive.security.authorizer.require(principal, Permission.AUDIT_READ)
        except AccessDenied as denied:
            raise http_exception(denied) from denied

    async def audit_events(request: Request) -> Response:
        """Audit records (DICOM PS3.15 A.5 messages) in chain order, filtered.

        Filters: since, until (ISO 8601 date or date-time, UTC unless an offset is
        given), event (DCM code such as 110112 or its name such as Query), user (the
        requestor's user ID, e.g. user:alice or ae:CT01), study (Study Instance UID),
        outcome (0, 4, 8, 12); paging with limit (default 100, at most 1000) and offset.
        Each record has its seq, time, event, action, outcome, user, address, studies
        and the XML message. Needs audit:read.
        """
        require_auditor(request)
        where = audit_filter(request.query_params)
        records = await run_in_threadpool(query_records, archive.engine, where)
        return JSONResponse([record.as_json() for record in records])

    async def audit_verify(request: Request) -> Response:
        """Check the audit hash chain: whether it holds, how many records, and the first
        broken seq with what broke there (edited, deleted, truncated). Needs audit:read.
        """
        require_auditor(request)
        report = await run_in_threadpool(verify_archive, archive.engine, archive.settings.data_dir)
        return JSONResponse(report.as_dict())

    return [
        Route("/audit/events", audit_events, methods=["GET"]),
        Route("/audit/verify", audit_verify, methods=["GET"]),
    ]
