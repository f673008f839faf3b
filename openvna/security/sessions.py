"""Web sessions of local users: a random token in a cookie, its SHA-256 in the index.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site
makes the browser send it) and ``Secure`` when the archive speaks TLS; it has no
``Max-Age``, so it ends with the browser. The server ends a session by itself
(automatic logoff): after ``security.session_idle_minutes`` without a request, and
``security.session_max_hours`` after login however busy. Only the token's hash is
stored, so a copy of the index cannot be turned into a login.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from openvna.config import Settings
from openvna.index.user_repository import SessionRow, UserRepository, UserRow

SESSION_COOKIE = "openvna_session"
"""Name of the session cookie."""


@dataclass(frozen=True)
class OpenedSession:
    """A new session: ``token`` goes into the cookie and nowhere else."""

    token: str
    expires_at: float
    mfa: bool


@dataclass(frozen=True)
class LiveSession:
    """A session that is still valid, with its user."""

    session: SessionRow
    user: UserRow
    idle_expires_at: float
    expires_at: float


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def idle_seconds(settings: Settings) -> float:
    return settings.security.session_idle_minutes * 60.0


def max_seconds(settings: Settings) -> float:
    return settings.security.session_max_hours * 3600.0


def touch_interval(settings: Settings) -> float:
    """How stale ``last_seen_at`` may get before a request rewrites it: a tenth of the
    idle timeout, at most 30 s. A viewer's hundreds of requests cost one write."""
    return min(30.0, idle_seconds(settings) / 10)


def open_session(
    repository: UserRepository,
    settings: Settings,
    user: UserRow,
    *,
    address: str,
    mfa: bool,
    now: float | None = None,
) -> OpenedSession:
    """Start a session for ``user`` (a new token every time: no session fixation)."""
    created = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    expires_at = created + max_seconds(settings)
    repository.add_session(
        token_hash(token),
        user.pk,
        created_at=created,
        expires_at=expires_at,
        address=address,
        mfa=mfa,
    )
    return OpenedSession(token, expires_at, mfa)


def resolve_session(
    repository: UserRepository, settings: Settings, token: str, now: float | None = None
) -> LiveSession | None:
    """The live session of a cookie value, or None (unknown, expired, user disabled).

    An expired session is deleted on sight; a live one has its ``last_seen_at``
    refreshed (at most every :func:`touch_interval` seconds).
    """
    stamp = time.time() if now is None else now
    hashed = token_hash(token)
    session = repository.get_session(hashed)
    if session is None:
        return None
    expires_at = min(session.expires_at, session.created_at + max_seconds(settings))
    idle_expires_at = session.last_seen_at + idle_seconds(settings)
    if stamp >= expires_at or stamp >= idle_expires_at:
        repository.delete_session(hashed)
        return None
    user = repository.get_user_by_pk(session.user_pk)
    if user is None or user.disabled:
        repository.delete_session(hashed)
        return None
    if stamp - session.last_seen_at >= touch_interval(settings):
        repository.touch_session(hashed, stamp)
        idle_expires_at = stamp + idle_seconds(settings)
    return LiveSession(session, user, idle_expires_at, expires_at)


def end_session(repository: UserRepository, token: str) -> bool:
    return repository.delete_session(token_hash(token))


def cookie_secure(settings: Settings) -> bool:
    """Secure when this server speaks TLS or sits behind an HTTPS public URL."""
    public_url = settings.http.public_url or ""
    return settings.security.tls.configured or public_url.lower().startswith("https://")


def session_cookie(settings: Settings, token: str) -> str:
    """The ``Set-Cookie`` value that hands a session to the browser."""
    parts = [f"{SESSION_COOKIE}={token}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if cookie_secure(settings):
        parts.append("Secure")
    return "; ".join(parts)


def clearing_cookie(settings: Settings) -> str:
    """The ``Set-Cookie`` value that makes the browser forget the session."""
    parts = [
        f"{SESSION_COOKIE}=",
        "Path=/",
        "Max-Age=0",
        "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if cookie_secure(settings):
        parts.append("Secure")
    return "; ".join(parts)
