"""Authentication: turns credentials into a :class:`Principal`.

Credentials accepted over HTTP: a session cookie (local users after password + TOTP),
``Authorization: Bearer <JWT>`` from the configured OIDC provider, ``Authorization:
Bearer <API key>`` or ``X-API-Key``. With ``security.require_auth`` off (possible only
on a loopback-only archive) every caller is the local principal.

Explicit credentials that fail (a bad API key, an expired JWT) are refused with 401. A
session cookie that no longer names a live session counts as no credentials: the
browser is simply logged out, and can still reach the login page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from openvna.config import Settings
from openvna.index.user_repository import UserRepository, UserRow
from openvna.security import totp
from openvna.security.apikeys import looks_like_api_key, verify_api_key
from openvna.security.errors import AccessDenied, AuthenticationRequired
from openvna.security.oidc import OidcVerifier
from openvna.security.passwords import USERNAME, hash_password, needs_rehash, verify_password
from openvna.security.principal import Principal, PrincipalKind, local_principal
from openvna.security.sessions import SESSION_COOKIE as SESSION_COOKIE
from openvna.security.sessions import (
    LiveSession,
    OpenedSession,
    idle_seconds,
    open_session,
    resolve_session,
)
from openvna.security.throttle import LoginThrottle

SESSION_PURGE_INTERVAL = 3600.0
INVALID_LOGIN = "invalid user name, password or one-time code"
"""One message for every failed login, so that the answer does not say which part was
wrong or whether the user exists."""


@dataclass(frozen=True)
class Credentials:
    """What a request carried, extracted by the adapter."""

    authorization: str | None = None  # the Authorization header, as sent
    api_key: str | None = None  # X-API-Key
    session: str | None = None  # session cookie value
    address: str = ""


class TooManyAttempts(AccessDenied):
    """Login throttled (429); ``retry_after`` seconds until the next attempt counts."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "too many login attempts; try again later")
        self.retry_after = retry_after


class InvalidLogin(AuthenticationRequired):
    """Wrong user name, password or one-time code, or a disabled account."""

    def __init__(self, detail: str) -> None:
        super().__init__(INVALID_LOGIN)
        self.detail = detail
        """What really failed: for the audit record, never for the client."""


@dataclass(frozen=True)
class LoginResult:
    """A successful password check. ``mfa_pending``: the user's role requires TOTP but
    none is enrolled; the session may only enrol (``/api/auth/mfa/*``)."""

    user: UserRow
    session: OpenedSession
    mfa_pending: bool


def needs_mfa(settings: Settings, user: UserRow) -> bool:
    """Whether every login of ``user`` needs a TOTP code: their role requires it
    (``security.mfa_required_roles``), or they enrolled of their own accord."""
    required = bool(user.roles & frozenset(settings.security.mfa_required_roles))
    return required or user.mfa_enrolled


def user_principal(settings: Settings, user: UserRow, *, mfa: bool, address: str = "") -> Principal:
    """The principal of a logged-in local user. Without the second factor their role
    requires, the principal has no role at all: it can only finish enrolling."""
    pending = needs_mfa(settings, user) and not mfa
    return Principal(
        subject=f"user:{user.username}",
        kind=PrincipalKind.USER,
        roles=frozenset() if pending else user.roles,
        display_name=user.display_name or user.username,
        address=address,
        institutions=user.institutions,
        issuers_of_patient_id=user.issuers_of_patient_id,
        mfa=mfa,
        extra={"mfa_pending": "true"} if pending else {},
    )


class Authenticator:
    """Verifies credentials; one instance per process, shared by every adapter.

    ``clock`` is injectable so that tests can move time (session expiry, TOTP steps,
    API key expiry) without waiting.
    """

    def __init__(
        self, settings: Settings, engine: Engine, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.users = UserRepository(engine)
        self.throttle = LoginThrottle(
            self.users, settings.security.limits.login_attempts_per_minute, clock
        )
        oidc = settings.security.oidc
        self.oidc = OidcVerifier(oidc, clock) if oidc.issuer else None
        self._purged_at = float("-inf")

    @property
    def required(self) -> bool:
        return self.settings.security.require_auth

    def authenticate(self, credentials: Credentials) -> Principal | None:
        """The principal, or None when the request carried no credentials.

        Raises :class:`~openvna.security.errors.AuthenticationRequired` when credentials
        were presented but are invalid (expired, bad signature, revoked).
        """
        if not self.required:
            return local_principal(credentials.address)
        address = credentials.address
        if credentials.api_key is not None:
            return verify_api_key(
                self.users, credentials.api_key, address=address, now=self.clock()
            )
        if credentials.authorization is not None:
            return self._bearer(credentials.authorization, address)
        if credentials.session:
            live = self.session(credentials.session)
            if live is None:
                return None
            return user_principal(self.settings, live.user, mfa=live.session.mfa, address=address)
        return None

    def session(self, token: str) -> LiveSession | None:
        """The live session behind a cookie value (refreshing its idle timer)."""
        return resolve_session(self.users, self.settings, token, self.clock())

    def _bearer(self, authorization: str, address: str) -> Principal:
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise AuthenticationRequired("unsupported authorization scheme (use Bearer)")
        if looks_like_api_key(value):
            return verify_api_key(self.users, value, address=address, now=self.clock())
        if self.oidc is None:
            raise AuthenticationRequired("bearer tokens are not accepted (no OIDC provider)")
        return self.oidc.verify(value, address)

    # -- login -------------------------------------------------------------------------
    def login(self, username: str, password: str, code: str | None, address: str) -> LoginResult:
        """Check a password (and TOTP code) and open a session.

        Raises
        ------
        TooManyAttempts
            The user name or the address is over ``login_attempts_per_minute``.
        InvalidLogin
            Anything else wrong (one message; the detail is for the audit record).
        """
        admission = self.throttle.admit(username, address)
        if not admission.allowed:
            raise TooManyAttempts(admission.retry_after)
        user = self.users.get_user(username) if USERNAME.match(username) else None
        if not verify_password(user.password_hash if user else None, password) or user is None:
            if user is not None:
                self.users.record_login_result(user.pk, success=False)
            raise InvalidLogin("unknown user" if user is None else "wrong password")
        if user.disabled:
            raise InvalidLogin("account disabled")
        mfa = False
        pending = False
        if needs_mfa(self.settings, user) and user.totp_secret is not None:
            self._check_code(user, code)
            mfa = True
        elif needs_mfa(self.settings, user):
            pending = True  # the role requires TOTP and none was ever enrolled
        self.throttle.refund(admission)
        self.users.record_login_result(user.pk, success=True)
        if needs_rehash(user.password_hash):
            self.users.update_user(user.username, password_hash=hash_password(password))
        session = open_session(
            self.users, self.settings, user, address=address, mfa=mfa, now=self.clock()
        )
        self._purge_sessions()
        return LoginResult(user, session, pending)

    def _purge_sessions(self) -> None:
        """Delete sessions that ended unseen (browser closed), at most once an hour."""
        now = self.clock()
        if now - self._purged_at < SESSION_PURGE_INTERVAL:
            return
        self._purged_at = now
        self.users.delete_stale_sessions(now, now - idle_seconds(self.settings))

    def _check_code(self, user: UserRow, code: str | None) -> None:
        """Accept a fresh code of the user's secret (confirming a first enrolment)."""
        assert user.totp_secret is not None
        if not code:
            self.users.record_login_result(user.pk, success=False)
            raise InvalidLogin("one-time code missing")
        step = totp.matching_step(user.totp_secret, code, self.clock(), user.totp_last_step)
        if step is None or not self.users.claim_totp_step(user.pk, step):
            self.users.record_login_result(user.pk, success=False)
            raise InvalidLogin("wrong or reused one-time code")
        if not user.totp_confirmed:
            self.users.confirm_totp(user.pk, user.totp_secret)

    # -- TOTP enrolment by the user ------------------------------------------------------
    def begin_enrolment(self, principal: Principal) -> tuple[str, str]:
        """A new (unconfirmed) TOTP secret for the principal's own account: (secret,
        provisioning URI). Refused when one is already confirmed: only an administrator
        can reset it (``openvna user mfa-reset``)."""
        user = self._own_user(principal)
        if user.mfa_enrolled:
            raise AccessDenied(409, "two-factor authentication is already enrolled")
        secret = totp.new_secret()
        self.users.set_totp(user.username, secret, confirmed=False)
        return secret, totp.provisioning_uri(secret, user.username)

    def confirm_enrolment(
        self, principal: Principal, code: str, address: str
    ) -> tuple[UserRow, OpenedSession]:
        """Prove the new secret with a code; answers a fresh session that has passed MFA
        (the caller ends the old one)."""
        user = self._own_user(principal)
        if user.totp_secret is None or user.mfa_enrolled:
            raise AccessDenied(409, "no enrolment in progress: POST /api/auth/mfa/enroll first")
        self._check_code(user, code)
        confirmed = self.users.get_user(user.username)
        assert confirmed is not None
        session = open_session(
            self.users, self.settings, confirmed, address=address, mfa=True, now=self.clock()
        )
        return confirmed, session

    def _own_user(self, principal: Principal) -> UserRow:
        if principal.kind is not PrincipalKind.USER:
            raise AccessDenied(400, "only local users enrol in two-factor authentication")
        user = self.users.get_user(principal.subject.removeprefix("user:"))
        if user is None or user.disabled:
            raise AuthenticationRequired()
        return user
