"""REST API of study-level access under ``/api/access``: grants and break-the-glass.

Administrators (``users:admin``) list, give and revoke explicit grants: a subject
(``user:alice``, ``apikey:…``, ``oidc:…``, ``ae:CT01``) may then see one study beyond
what its role's rules allow. Any principal holding ``access:break-glass`` may open a
study in an emergency by giving a reason: that is a temporary grant
(``security.break_glass_hours``), recorded in the audit trail as a security alert
"Emergency Override Started" so that it is reviewed after the fact.

The route table (:mod:`openvna.security.routes`) checks the permissions before these
handlers run; they validate the body, call the index and audit.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from openvna.archive.header import is_valid_uid
from openvna.archive.service import Archive
from openvna.errors import BadRequestError, NotFoundError, RequestTooLargeError
from openvna.index import access_repository
from openvna.security.audit import Outcome, StudyRef
from openvna.security.audit import events as audit_events
from openvna.web.access import request_principal

MAX_BODY = 64 * 1024
"""A grant is a few short strings; anything larger is not one."""
_MAX_PK = 2**63 - 1


_Body = TypeVar("_Body", bound=BaseModel)


def _valid_study_uid(value: str) -> str:
    value = value.strip()
    if not is_valid_uid(value):
        raise ValueError("not a valid Study Instance UID (PS3.5 9.1)")
    return value


class GrantRequest(BaseModel):
    """``POST /api/access/grants``: who may see which study, why, until when."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    subject: str = Field(min_length=1, max_length=255)
    study_instance_uid: str = Field(alias="studyInstanceUID")
    reason: str = Field(default="", max_length=4000)
    expires_at: float | None = Field(default=None, alias="expiresAt", gt=0, lt=1e11)
    hours: float | None = Field(default=None, gt=0, le=24 * 366 * 10)

    @field_validator("study_instance_uid")
    @classmethod
    def _study(cls, value: str) -> str:
        return _valid_study_uid(value)

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("a subject is printable text such as user:alice or ae:CT01")
        return value


class BreakGlassRequest(BaseModel):
    """``POST /api/access/break-glass``: the study and why it must be opened now."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    study_instance_uid: str = Field(alias="studyInstanceUID")
    reason: str = Field(max_length=4000)

    @field_validator("study_instance_uid")
    @classmethod
    def _study(cls, value: str) -> str:
        return _valid_study_uid(value)

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("break-the-glass needs a reason")
        return value.strip()


async def _json_body(request: Request) -> Any:
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestTooLargeError(f"the request body is limited to {MAX_BODY} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError as error:
        raise BadRequestError(f"request body is not JSON: {error}") from error


def _parse(model: type[_Body], payload: Any) -> _Body:
    if not isinstance(payload, dict):
        raise BadRequestError("request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise BadRequestError(problems) from error


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def routes(archive: Archive) -> list[BaseRoute]:
    engine = archive.engine
    security = archive.security

    async def list_grants(request: Request) -> Response:
        """Study access grants in force, newest first.

        Filters ``subject`` and ``study``; ``all=true`` includes revoked and expired
        grants; paging with ``limit`` (default 100, at most 1000) and ``offset``.
        """
        params = request.query_params
        try:
            limit = min(max(int(params.get("limit", "100")), 1), 1000)
            offset = max(int(params.get("offset", "0")), 0)
        except ValueError as error:
            raise BadRequestError("limit and offset are integers") from error
        everything = params.get("all", "false").lower()
        if everything not in ("true", "false"):
            raise BadRequestError("all must be true or false")
        grants = await run_in_threadpool(
            lambda: access_repository.list_grants(
                engine,
                subject=params.get("subject") or None,
                study_uid=params.get("study") or None,
                active_only=everything == "false",
                limit=limit,
                offset=min(offset, _MAX_PK),
            )
        )
        return JSONResponse([grant.as_json() for grant in grants])

    async def create_grant(request: Request) -> Response:
        """Let a subject see one study: ``{"subject", "studyInstanceUID", "reason"?,
        "expiresAt"? (epoch seconds) | "hours"?}``."""
        principal = request_principal(request)
        wanted = _parse(GrantRequest, await _json_body(request))
        expires_at = wanted.expires_at
        if wanted.hours is not None:
            if expires_at is not None:
                raise BadRequestError("give expiresAt or hours, not both")
            expires_at = time.time() + wanted.hours * 3600.0
        grant = await run_in_threadpool(
            lambda: access_repository.add_grant(
                engine,
                subject=wanted.subject,
                study_uid=wanted.study_instance_uid,
                reason=wanted.reason,
                granted_by=principal.subject,
                expires_at=expires_at,
            )
        )
        security.audit.record(
            audit_events.security_alert(
                principal,
                _address(request),
                audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
                description=f"study access granted to {grant.subject}",
                outcome=Outcome.SUCCESS,
                studies=[StudyRef(grant.study_instance_uid)],
            )
        )
        return JSONResponse(grant.as_json(), status_code=201)

    async def revoke_grant(request: Request) -> Response:
        """Revoke one grant (it stays listed with ``all=true``)."""
        principal = request_principal(request)
        pk = int(request.path_params["pk"])
        if pk > _MAX_PK:
            raise NotFoundError(f"no grant {pk}")
        grant = await run_in_threadpool(access_repository.revoke_grant, engine, pk)
        if grant is None:
            raise NotFoundError(f"no grant {pk}")
        security.audit.record(
            audit_events.security_alert(
                principal,
                _address(request),
                audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
                description=f"study access of {grant.subject} revoked",
                outcome=Outcome.SUCCESS,
                studies=[StudyRef(grant.study_instance_uid)],
            )
        )
        return JSONResponse(grant.as_json())

    async def break_glass(request: Request) -> Response:
        """Emergency access to one study, with a reason: ``{"studyInstanceUID",
        "reason"}``; a temporary grant, audited as Emergency Override Started."""
        principal = request_principal(request)
        wanted = _parse(BreakGlassRequest, await _json_body(request))
        uid = wanted.study_instance_uid
        if not await run_in_threadpool(access_repository.study_exists, engine, uid):
            raise NotFoundError(f"no study {uid}")
        patient_id = await run_in_threadpool(access_repository.patient_id_of_study, engine, uid)
        grant = await run_in_threadpool(
            lambda: access_repository.break_glass(
                engine,
                subject=principal.subject,
                study_uid=uid,
                reason=wanted.reason,
                hours=archive.settings.security.break_glass_hours,
            )
        )
        security.audit.record(
            audit_events.security_alert(
                principal,
                _address(request),
                audit_events.EMERGENCY_OVERRIDE_STARTED,
                description=wanted.reason,
                outcome=Outcome.SUCCESS,
                studies=[StudyRef(uid, patient_id=patient_id)],
            )
        )
        return JSONResponse(grant.as_json(), status_code=201)

    return [
        Route("/access/grants", list_grants, methods=["GET"]),
        Route("/access/grants", create_grant, methods=["POST"]),
        Route("/access/grants/{pk:int}", revoke_grant, methods=["DELETE"]),
        Route("/access/break-glass", break_glass, methods=["POST"]),
    ]
