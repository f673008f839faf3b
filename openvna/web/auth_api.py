"""Authentication endpoints under ``/api/auth``: login, logout, who am I, the one-time
setup of the first administrator, and TOTP enrolment.

Thin like every adapter: bodies are validated by pydantic models, the checks live in
:class:`~openvna.security.authn.Authenticator`, and every login, failed login, logout
and throttled attempt is audited here (DICOM 110114 User Authentication, 110113
Security Alert). Login takes JSON (API clients, scripts) or a form post from the login
page (``/login``), which is answered with a redirect or the page again.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from openvna.archive.service import Archive
from openvna.config import Role
from openvna.errors import BadRequestError
from openvna.security import totp
from openvna.security.audit import Outcome
from openvna.security.audit import events as audit_events
from openvna.security.authn import (
    INVALID_LOGIN,
    SESSION_COOKIE,
    InvalidLogin,
    TooManyAttempts,
    user_principal,
)
from openvna.security.errors import AccessDenied, AuthenticationRequired
from openvna.security.passwords import (
    WeakPasswordError,
    check_password_policy,
    check_username,
    hash_password,
)
from openvna.security.principal import Principal, PrincipalKind
from openvna.security.sessions import OpenedSession, clearing_cookie, end_session, session_cookie
from openvna.security.startup import consume_bootstrap_secret
from openvna.web import login as login_pages
from openvna.web.bodies import parsed_body, validated
from openvna.web.errors import error_body

MFA_ENROLL_PATH = "/api/auth/mfa/enroll"


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)
    totp: str | None = Field(default=None, max_length=16)


class SetupBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    secret: str = Field(min_length=1, max_length=256)
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)
    display_name: str = Field(
        default="", max_length=255, alias="displayName", pattern=r"^[^\x00-\x1f\x7f]*$"
    )


class CodeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    totp: str = Field(min_length=1, max_length=16)


def iso(timestamp: float) -> str:
    """An instant as ISO 8601 UTC (``2026-01-31T12:00:00Z``)."""
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def denied_response(denied: AccessDenied) -> Response:
    """An :class:`AccessDenied` as the JSON error every endpoint answers."""
    headers = {}
    if denied.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="openvna"'
    if isinstance(denied, TooManyAttempts):
        headers["Retry-After"] = str(denied.retry_after)
    return JSONResponse(
        error_body(denied.status, denied.reason), status_code=denied.status, headers=headers
    )


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` answering an :class:`AccessDenied` it raises as its JSON error."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except AccessDenied as denied:
            return denied_response(denied)

    return run


def session_answer(
    archive: Archive, user_json: dict[str, Any], session: OpenedSession, status: int = 200
) -> JSONResponse:
    body = {**user_json, "expiresAt": iso(session.expires_at)}
    response = JSONResponse(body, status_code=status)
    response.headers["Set-Cookie"] = session_cookie(archive.settings, session.token)
    response.headers["Cache-Control"] = "no-store"
    return response


def routes(archive: Archive) -> list[BaseRoute]:
    """Routes relative to ``/api``."""
    authenticator = archive.security.authenticator
    audit = archive.security.audit
    settings = archive.settings
    limit = settings.security.limits.json_body_bytes

    def address_of(request: Request) -> str:
        return request.client.host if request.client else ""

    def user_json(principal: Principal, pending: bool = False) -> dict[str, Any]:
        return {
            "user": principal.subject.removeprefix("user:"),
            "displayName": principal.display_name,
            "roles": sorted(role.value for role in principal.roles),
            "mfa": principal.mfa,
            "mfaPending": pending,
        }

    async def login(request: Request) -> Response:
        """Log in with user name, password and (when enrolled) a TOTP code.

        Answers the session cookie and ``{user, roles, expiresAt}``; 401 for wrong
        credentials, 429 past ``security.limits.login_attempts_per_minute``, 403 with
        ``mfaSetup`` when the role requires a second factor that is not enrolled yet.
        """
        data, form = await parsed_body(request, limit)
        next_url = login_pages.safe_next(str(data.get("next") or "/"))
        address = address_of(request)
        try:
            body = validated(LoginBody, data)
        except BadRequestError:
            if form:
                return login_pages.login_page(
                    next_url, error="enter a user name and password", status=400
                )
            raise
        try:
            result = await run_in_threadpool(
                authenticator.login, body.username, body.password, body.totp, address
            )
        except TooManyAttempts as throttled:
            audit.record(
                audit_events.security_alert(
                    None,
                    address,
                    audit_events.UNAUTHORIZED_ACCESS,
                    description=f"login attempts for {body.username!r} throttled",
                    claimed_user=body.username,
                )
            )
            if form:
                page = login_pages.login_page(
                    next_url, error=throttled.reason, username=body.username, status=429
                )
                page.headers["Retry-After"] = str(throttled.retry_after)
                return page
            return denied_response(throttled)
        except InvalidLogin as invalid:
            audit.record(
                audit_events.user_authentication(
                    None,
                    address,
                    success=False,
                    username=body.username,
                    description=f"login failed for {body.username!r}: {invalid.detail}",
                )
            )
            if form:
                return login_pages.login_page(
                    next_url, error=invalid.reason, username=body.username, status=401
                )
            return denied_response(invalid)
        principal = user_principal(settings, result.user, mfa=result.session.mfa, address=address)
        audit.record(
            audit_events.user_authentication(
                principal,
                address,
                success=True,
                username=result.user.username,
                description=f"login of {result.user.username!r}"
                + (" (two-factor enrolment pending)" if result.mfa_pending else ""),
            )
        )
        if result.mfa_pending:
            return await pending_answer(request, principal, result.session, next_url, form)
        if form:
            response: Response = RedirectResponse(next_url, status_code=303)
            response.headers["Set-Cookie"] = session_cookie(settings, result.session.token)
            return response
        return session_answer(archive, user_json(principal), result.session)

    async def pending_answer(
        request: Request,
        principal: Principal,
        session: OpenedSession,
        next_url: str,
        form: bool,
    ) -> Response:
        """403: the password was right, the second factor must be enrolled first. The
        cookie of a session that can only enrol comes with it."""
        if form:
            secret, uri = await run_in_threadpool(authenticator.begin_enrolment, principal)
            page = login_pages.enrolment_page(next_url, secret, uri)
            page.headers["Set-Cookie"] = session_cookie(settings, session.token)
            return page
        response = JSONResponse(
            {
                **error_body(403, "two-factor authentication must be set up for this role"),
                "mfaSetup": MFA_ENROLL_PATH,
                "mfaConfirm": "/api/auth/mfa/confirm",
                "loginPage": login_pages.login_url(next_url),
            },
            status_code=403,
        )
        response.headers["Set-Cookie"] = session_cookie(settings, session.token)
        return response

    async def logout(request: Request) -> Response:
        """End the session of the cookie (if any) and clear the cookie."""
        token = request.cookies.get(SESSION_COOKIE)
        principal = principal_of(request)
        ended = False
        if token:
            ended = await run_in_threadpool(end_session, authenticator.users, token)
        if ended:
            audit.record(
                audit_events.user_authentication(
                    principal,
                    address_of(request),
                    success=True,
                    logout=True,
                    username=principal.subject if principal else "",
                )
            )
        response = JSONResponse({"loggedOut": ended})
        response.headers["Set-Cookie"] = clearing_cookie(settings)
        return response

    async def me(request: Request) -> Response:
        """Who the request is authenticated as: subject, roles, permissions, session."""
        principal = principal_of(request)
        if principal is None:
            return denied_response(AuthenticationRequired())
        body: dict[str, Any] = {
            **user_json(principal, "mfa_pending" in principal.extra),
            "subject": principal.subject,
            "kind": principal.kind.value,
            "permissions": sorted(p.value for p in principal.permissions),
            "authRequired": authenticator.required,
        }
        token = request.cookies.get(SESSION_COOKIE)
        if principal.kind is PrincipalKind.USER and token:
            live = await run_in_threadpool(authenticator.session, token)
            if live is not None:
                body["expiresAt"] = iso(live.expires_at)
                body["idleExpiresAt"] = iso(live.idle_expires_at)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def setup(request: Request) -> Response:
        """Create the first administrator with the one-time secret from the server log.

        Works once; answers the TOTP secret to enrol (the first login confirms it).
        """
        data, _ = await parsed_body(request, limit)
        body = validated(SetupBody, data)
        address = address_of(request)
        try:
            created = await run_in_threadpool(create_first_admin, body, address)
        except AccessDenied as denied:
            audit.record(
                audit_events.security_alert(
                    None,
                    address,
                    audit_events.UNAUTHORIZED_ACCESS,
                    description=f"first-administrator setup refused: {denied.reason}",
                )
            )
            return denied_response(denied)
        return JSONResponse(created, status_code=201, headers={"Cache-Control": "no-store"})

    def create_first_admin(body: SetupBody, address: str) -> dict[str, Any]:
        try:
            check_username(body.username)
            check_password_policy(body.password)
        except (WeakPasswordError, ValueError) as error:
            raise BadRequestError(str(error)) from error
        admission = authenticator.throttle.admit("(setup)", address)
        if not admission.allowed:
            raise TooManyAttempts(admission.retry_after)
        users = authenticator.users
        if users.has_active_admin():
            raise AccessDenied(409, "an administrator exists already; log in instead")
        if users.get_user(body.username) is not None:
            raise AccessDenied(409, f"user {body.username!r} exists already")
        if not consume_bootstrap_secret(users, body.secret):
            raise AccessDenied(403, "invalid or already used setup secret")
        authenticator.throttle.refund(admission)
        secret = totp.new_secret()
        try:
            user = users.add_user(
                body.username,
                hash_password(body.password),
                [Role.ADMIN],
                display_name=body.display_name,
                totp_secret=secret,
            )
        except ValueError as error:  # created in between by someone else
            raise AccessDenied(409, str(error)) from error
        audit.record(
            audit_events.security_alert(
                user_principal(settings, user, mfa=False, address=address),
                address,
                audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
                description=f"first administrator {user.username!r} created with the "
                "one-time setup secret",
                outcome=Outcome.SUCCESS,
            )
        )
        return {
            **user.as_json(),
            "totp": {"secret": secret, "otpauthUri": totp.provisioning_uri(secret, user.username)},
        }

    async def mfa_enroll(request: Request) -> Response:
        """Start TOTP enrolment for the logged-in user: a new secret and otpauth URI."""
        principal = principal_of(request)
        if principal is None:
            return denied_response(AuthenticationRequired())
        secret, uri = await run_in_threadpool(authenticator.begin_enrolment, principal)
        return JSONResponse(
            {"secret": secret, "otpauthUri": uri}, headers={"Cache-Control": "no-store"}
        )

    async def enrolment_again(principal: Principal, next_url: str) -> Response:
        """The enrolment page once more after a wrong first code (same secret)."""
        username = principal.subject.removeprefix("user:")
        user = await run_in_threadpool(authenticator.users.get_user, username)
        if user is None or user.totp_secret is None or user.mfa_enrolled:
            return login_pages.login_page(next_url, error=INVALID_LOGIN, status=401)
        uri = totp.provisioning_uri(user.totp_secret, user.username)
        return login_pages.enrolment_page(
            next_url, user.totp_secret, uri, error="wrong code: try again", status=401
        )

    async def mfa_confirm(request: Request) -> Response:
        """Confirm enrolment with a first code; the session is renewed with MFA passed."""
        principal = principal_of(request)
        data, form = await parsed_body(request, limit)
        next_url = login_pages.safe_next(str(data.get("next") or "/"))
        if principal is None:
            if form:
                return RedirectResponse(login_pages.login_url(next_url), status_code=303)
            return denied_response(AuthenticationRequired())
        body = validated(CodeBody, data)
        address = address_of(request)
        try:
            user, session = await run_in_threadpool(
                authenticator.confirm_enrolment, principal, body.totp, address
            )
        except InvalidLogin as invalid:
            audit.record(
                audit_events.user_authentication(
                    principal, address, success=False, description=invalid.detail
                )
            )
            if form:
                return await enrolment_again(principal, next_url)
            return denied_response(invalid)
        old_token = request.cookies.get(SESSION_COOKIE)
        if old_token:
            await run_in_threadpool(end_session, authenticator.users, old_token)
        confirmed = user_principal(settings, user, mfa=True, address=address)
        audit.record(
            audit_events.security_alert(
                confirmed,
                address,
                audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
                description=f"{user.username!r} enrolled a TOTP authenticator",
                outcome=Outcome.SUCCESS,
            )
        )
        if form:
            response: Response = RedirectResponse(next_url, status_code=303)
            response.headers["Set-Cookie"] = session_cookie(settings, session.token)
            return response
        return session_answer(archive, user_json(confirmed), session)

    return [
        Route("/auth/login", guarded(login), methods=["POST"]),
        Route("/auth/logout", guarded(logout), methods=["POST"]),
        Route("/auth/me", guarded(me), methods=["GET"]),
        Route("/auth/setup", guarded(setup), methods=["POST"]),
        Route("/auth/mfa/enroll", guarded(mfa_enroll), methods=["POST"]),
        Route("/auth/mfa/confirm", guarded(mfa_confirm), methods=["POST"]),
    ]
