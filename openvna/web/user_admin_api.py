"""Administration of local users (``/api/users``) and API keys (``/api/apikeys``).

Every endpoint needs the ``users:admin`` permission (the admin role), checked here as
well as by the middleware's route table. Each change is audited as a security alert
(PS3.15 A.5.3.11: user security attributes changed, security configuration). An API
key's token is in the answer of its creation only: it is stored hashed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from openvna.archive.service import Archive
from openvna.config import Role
from openvna.errors import BadRequestError, NotFoundError
from openvna.security import accounts
from openvna.security.apikeys import create_api_key, revoke_api_key
from openvna.security.audit import Code, Outcome
from openvna.security.audit import events as audit_events
from openvna.security.errors import AccessDenied
from openvna.security.permissions import Permission
from openvna.security.principal import Principal
from openvna.web.auth_api import guarded, principal_of
from openvna.web.bodies import parsed_body, validated


class UserCreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)
    roles: list[Role] = Field(min_length=1, max_length=16)
    display_name: str = Field(default="", max_length=255, alias="displayName")
    institutions: list[str] = Field(default_factory=list, max_length=64)
    issuers_of_patient_id: list[str] = Field(
        default_factory=list, max_length=64, alias="issuersOfPatientId"
    )


class UserUpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    roles: list[Role] | None = Field(default=None, min_length=1, max_length=16)
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    display_name: str | None = Field(default=None, max_length=255, alias="displayName")
    institutions: list[str] | None = Field(default=None, max_length=64)
    issuers_of_patient_id: list[str] | None = Field(
        default=None, max_length=64, alias="issuersOfPatientId"
    )


class ApiKeyCreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=128)
    roles: list[Role] = Field(min_length=1, max_length=16)
    scopes: list[Permission] = Field(default_factory=list, max_length=32)
    expires_days: float | None = Field(default=None, gt=0, le=3650, alias="expiresDays")
    owner: str = Field(default="", max_length=128)


def _account_error(error: accounts.AccountError) -> Exception:
    if isinstance(error, accounts.NoSuchAccount):
        return NotFoundError(str(error))
    if isinstance(error, accounts.AccountConflict):
        return AccessDenied(409, str(error))
    return BadRequestError(str(error))


def routes(archive: Archive) -> list[BaseRoute]:
    """Routes relative to ``/api``."""
    security = archive.security
    users = security.authenticator.users
    settings = archive.settings
    limit = settings.security.limits.json_body_bytes

    def admin(request: Request) -> Principal:
        principal = principal_of(request)
        security.authorizer.require(principal, Permission.USER_ADMIN)
        assert principal is not None
        return principal

    def record(request: Request, principal: Principal, code: Code, description: str) -> None:
        security.audit.record(
            audit_events.security_alert(
                principal,
                request.client.host if request.client else "",
                code,
                description=description,
                outcome=Outcome.SUCCESS,
            )
        )

    async def call_accounts(function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await run_in_threadpool(function, *args, **kwargs)
        except accounts.AccountError as error:
            raise _account_error(error) from error

    async def list_users(request: Request) -> Response:
        """Local users with their roles and MFA state (never hashes or secrets)."""
        admin(request)
        found = await run_in_threadpool(users.list_users)
        return JSONResponse([user.as_json() for user in found])

    async def create_user(request: Request) -> Response:
        """Create a local user; for roles that require MFA the answer carries the TOTP
        secret and otpauth URI to hand to the user (shown once)."""
        principal = admin(request)
        body = validated(UserCreateBody, (await parsed_body(request, limit))[0])
        created: accounts.NewUser = await call_accounts(
            accounts.create_user,
            users,
            settings,
            body.username,
            body.password,
            body.roles,
            display_name=body.display_name,
            institutions=body.institutions,
            issuers_of_patient_id=body.issuers_of_patient_id,
        )
        record(
            request,
            principal,
            audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
            f"user {created.user.username!r} created with roles "
            + ",".join(sorted(created.user.roles)),
        )
        answer: dict[str, Any] = created.user.as_json()
        if created.totp_secret is not None:
            answer["totp"] = {"secret": created.totp_secret, "otpauthUri": created.otpauth_uri}
        return JSONResponse(answer, status_code=201, headers={"Cache-Control": "no-store"})

    async def update_user(request: Request) -> Response:
        """Change roles, enable/disable, reset the password or the display name; the
        user's sessions end when roles, password or the enabled state change."""
        principal = admin(request)
        username = request.path_params["username"]
        body = validated(UserUpdateBody, (await parsed_body(request, limit))[0])
        changed = body.model_dump(exclude_none=True)
        if not changed:
            raise BadRequestError("nothing to change")
        updated = await call_accounts(accounts.update_user, users, username, **changed)
        described = ", ".join(sorted(key for key in changed if key != "password"))
        if "password" in changed:
            described = ", ".join(filter(None, [described, "password reset"]))
        record(
            request,
            principal,
            audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
            f"user {username!r} changed: {described}",
        )
        return JSONResponse(updated.as_json())

    async def reset_mfa(request: Request) -> Response:
        """Forget the user's TOTP enrolment; they enrol again at their next login."""
        principal = admin(request)
        username = request.path_params["username"]
        updated = await call_accounts(accounts.reset_mfa, users, username)
        record(
            request,
            principal,
            audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
            f"two-factor enrolment of {username!r} reset",
        )
        return JSONResponse(updated.as_json())

    async def list_keys(request: Request) -> Response:
        """API keys (ids, names, roles, scopes, expiry, revocation, last use)."""
        admin(request)
        keys = await run_in_threadpool(users.list_api_keys)
        return JSONResponse([key.as_json() for key in keys])

    async def create_key(request: Request) -> Response:
        """Create an API key; the token (``ovna_...``) is in this answer only."""
        principal = admin(request)
        body = validated(ApiKeyCreateBody, (await parsed_body(request, limit))[0])
        try:
            issued = await run_in_threadpool(
                lambda: create_api_key(
                    users,
                    body.name,
                    body.roles,
                    scopes=body.scopes,
                    owner=body.owner or principal.subject,
                    expires_days=body.expires_days,
                )
            )
        except ValueError as error:
            raise BadRequestError(str(error)) from error
        record(
            request,
            principal,
            audit_events.SECURITY_CONFIGURATION,
            f"API key {issued.key.key_id} ({issued.key.name!r}) created",
        )
        return JSONResponse(
            {**issued.key.as_json(), "token": issued.token},
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    async def revoke_key(request: Request) -> Response:
        """Revoke an API key at once."""
        principal = admin(request)
        key_id = request.path_params["key_id"]
        if not await run_in_threadpool(revoke_api_key, users, key_id):
            raise NotFoundError(f"no live API key {key_id}")
        record(request, principal, audit_events.SECURITY_CONFIGURATION, f"API key {key_id} revoked")
        return JSONResponse({"revoked": key_id})

    return [
        Route("/users", guarded(list_users), methods=["GET"]),
        Route("/users", guarded(create_user), methods=["POST"]),
        Route("/users/{username}", guarded(update_user), methods=["PATCH"]),
        Route("/users/{username}/mfa-reset", guarded(reset_mfa), methods=["POST"]),
        Route("/apikeys", guarded(list_keys), methods=["GET"]),
        Route("/apikeys", guarded(create_key), methods=["POST"]),
        Route("/apikeys/{key_id}", guarded(revoke_key), methods=["DELETE"]),
    ]
