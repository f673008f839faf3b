"""Index access for authentication: users, API keys, web sessions and login throttling.

Every statement that reads or writes ``users``, ``api_keys`` and ``sessions`` is here
(ARCHITECTURE.md property 3). State that several server processes must share (the TOTP
step last used, the one-time bootstrap secret, login attempt counters) changes with
conditional statements, so that two processes racing cannot both win.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Row, and_, delete, insert, or_, select, update

from openvna.config import Role
from openvna.index.schema import api_keys, archive_state, sessions, users
from openvna.security.permissions import Permission

THROTTLE_PREFIX = "login-throttle:"
"""archive_state rows holding recent login attempts of one user name or address."""


def _roles(text: str) -> frozenset[Role]:
    """Roles stored in a row; names this version does not know are left out, not fatal."""
    known = {role.value for role in Role}
    return frozenset(Role(part) for part in _split(text) if part in known)


def _permissions(text: str) -> frozenset[Permission]:
    known = {permission.value for permission in Permission}
    return frozenset(Permission(part) for part in _split(text) if part in known)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _join(values: Iterable[str]) -> str:
    return ",".join(sorted({str(value) for value in values}))


@dataclass(frozen=True)
class UserRow:
    pk: int
    username: str
    display_name: str
    password_hash: str
    roles: frozenset[Role]
    totp_secret: str | None
    totp_confirmed: bool
    totp_last_step: int | None
    institutions: tuple[str, ...]
    issuers_of_patient_id: tuple[str, ...]
    disabled: bool
    created_at: float
    updated_at: float

    @property
    def mfa_enrolled(self) -> bool:
        """A TOTP secret is confirmed: every login of this user needs a code."""
        return self.totp_secret is not None and self.totp_confirmed

    def as_json(self) -> dict[str, Any]:
        """What the user API shows: never the password hash or the TOTP secret."""
        return {
            "username": self.username,
            "displayName": self.display_name,
            "roles": sorted(role.value for role in self.roles),
            "mfaEnrolled": self.mfa_enrolled,
            "institutions": list(self.institutions),
            "issuersOfPatientId": list(self.issuers_of_patient_id),
            "disabled": self.disabled,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


def _user(row: Row[Any]) -> UserRow:
    return UserRow(
        pk=int(row.pk),
        username=str(row.username),
        display_name=str(row.display_name or ""),
        password_hash=str(row.password_hash),
        roles=_roles(str(row.roles)),
        totp_secret=row.totp_secret,
        totp_confirmed=bool(row.totp_confirmed),
        totp_last_step=None if row.totp_last_step is None else int(row.totp_last_step),
        institutions=_split(str(row.institutions or "")),
        issuers_of_patient_id=_split(str(row.issuers_of_patient_id or "")),
        disabled=bool(row.disabled),
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
    )


@dataclass(frozen=True)
class ApiKeyRow:
    pk: int
    key_id: str
    secret_hash: str
    name: str
    roles: frozenset[Role]
    scopes: frozenset[Permission] | None  # None: no narrowing
    owner: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "name": self.name,
            "roles": sorted(role.value for role in self.roles),
            "scopes": None if self.scopes is None else sorted(p.value for p in self.scopes),
            "owner": self.owner,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
            "revokedAt": self.revoked_at,
            "lastUsedAt": self.last_used_at,
        }


def _api_key(row: Row[Any]) -> ApiKeyRow:
    scopes = str(row.scopes or "")
    return ApiKeyRow(
        pk=int(row.pk),
        key_id=str(row.key_id),
        secret_hash=str(row.secret_hash),
        name=str(row.name),
        roles=_roles(str(row.roles)),
        scopes=_permissions(scopes) if scopes.strip() else None,
        owner=str(row.owner or ""),
        created_at=float(row.created_at),
        expires_at=None if row.expires_at is None else float(row.expires_at),
        revoked_at=None if row.revoked_at is None else float(row.revoked_at),
        last_used_at=None if row.last_used_at is None else float(row.last_used_at),
    )


@dataclass(frozen=True)
class SessionRow:
    pk: int
    token_hash: str
    user_pk: int
    created_at: float
    last_seen_at: float
    expires_at: float
    address: str
    mfa: bool


def _session(row: Row[Any]) -> SessionRow:
    return SessionRow(
        pk=int(row.pk),
        token_hash=str(row.token_hash),
        user_pk=int(row.user_pk),
        created_at=float(row.created_at),
        last_seen_at=float(row.last_seen_at),
        expires_at=float(row.expires_at),
        address=str(row.address or ""),
        mfa=bool(row.mfa),
    )


class UserRepository:
    """Users, API keys and sessions in the index."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- users ---------------------------------------------------------------------------
    def add_user(
        self,
        username: str,
        password_hash: str,
        roles: Iterable[Role],
        *,
        display_name: str = "",
        totp_secret: str | None = None,
        institutions: Iterable[str] = (),
        issuers_of_patient_id: Iterable[str] = (),
        now: float | None = None,
    ) -> UserRow:
        """Insert a user; raises :class:`ValueError` when the name is taken."""
        stamp = time.time() if now is None else now
        with self.engine.begin() as connection:
            taken = connection.execute(
                select(users.c.pk).where(users.c.username == username)
            ).first()
            if taken is not None:
                raise ValueError(f"user {username!r} already exists")
            connection.execute(
                insert(users).values(
                    username=username,
                    display_name=display_name,
                    password_hash=password_hash,
                    roles=_join(roles),
                    totp_secret=totp_secret,
                    totp_confirmed=False,
                    totp_last_step=None,
                    institutions=_join(institutions),
                    issuers_of_patient_id=_join(issuers_of_patient_id),
                    disabled=False,
                    failed_logins=0,
                    created_at=stamp,
                    updated_at=stamp,
                )
            )
        found = self.get_user(username)
        assert found is not None
        return found

    def get_user(self, username: str) -> UserRow | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.username == username)).first()
        return None if row is None else _user(row)

    def get_user_by_pk(self, pk: int) -> UserRow | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.pk == pk)).first()
        return None if row is None else _user(row)

    def list_users(self) -> list[UserRow]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(users).order_by(users.c.username)).all()
        return [_user(row) for row in rows]

    def update_user(
        self,
        username: str,
        *,
        password_hash: str | None = None,
        roles: Iterable[Role] | None = None,
        display_name: str | None = None,
        disabled: bool | None = None,
        institutions: Iterable[str] | None = None,
        issuers_of_patient_id: Iterable[str] | None = None,
        now: float | None = None,
    ) -> bool:
        """Change the given fields; False when there is no such user."""
        values: dict[str, Any] = {"updated_at": time.time() if now is None else now}
        if password_hash is not None:
            values["password_hash"] = password_hash
        if roles is not None:
            values["roles"] = _join(roles)
        if display_name is not None:
            values["display_name"] = display_name
        if disabled is not None:
            values["disabled"] = disabled
        if institutions is not None:
            values["institutions"] = _join(institutions)
        if issuers_of_patient_id is not None:
            values["issuers_of_patient_id"] = _join(issuers_of_patient_id)
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(users).where(users.c.username == username).values(**values)
            ).rowcount
        return bool(changed)

    def set_totp(self, username: str, secret: str | None, *, confirmed: bool = False) -> bool:
        """Store a new TOTP secret (or none: MFA reset); the replay marker starts over."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(users)
                .where(users.c.username == username)
                .values(
                    totp_secret=secret,
                    totp_confirmed=confirmed and secret is not None,
                    totp_last_step=None,
                    updated_at=time.time(),
                )
            ).rowcount
        return bool(changed)

    def confirm_totp(self, user_pk: int, secret: str) -> bool:
        """Mark the enrolment confirmed, if the secret is still the one that was proven."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(users)
                .where(users.c.pk == user_pk, users.c.totp_secret == secret)
                .values(totp_confirmed=True, updated_at=time.time())
            ).rowcount
        return bool(changed)

    def claim_totp_step(self, user_pk: int, step: int) -> bool:
        """Record that the code of time step ``step`` was used; False if it, or a later
        one, already was (replay protection, RFC 6238 section 5.2). One conditional
        UPDATE, so two processes cannot both accept the same code."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(users)
                .where(
                    users.c.pk == user_pk,
                    or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step),
                )
                .values(totp_last_step=step)
            ).rowcount
        return bool(changed)

    def record_login_result(self, user_pk: int, *, success: bool) -> None:
        """Count consecutive failed logins (shown to administrators); success resets it."""
        values: dict[str, Any] = (
            {"failed_logins": 0} if success else {"failed_logins": users.c.failed_logins + 1}
        )
        with self.engine.begin() as connection:
            connection.execute(update(users).where(users.c.pk == user_pk).values(**values))

    def has_active_admin(self) -> bool:
        """Whether an enabled user holds the admin role (else the bootstrap applies)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(users.c.roles).where(users.c.disabled.is_(False))
            ).all()
        return any(Role.ADMIN in _roles(str(row.roles)) for row in rows)

    # -- API keys ------------------------------------------------------------------------
    def add_api_key(
        self,
        key_id: str,
        secret_hash: str,
        name: str,
        roles: Iterable[Role],
        *,
        scopes: Iterable[Permission] = (),
        owner: str = "",
        created_at: float,
        expires_at: float | None,
    ) -> ApiKeyRow:
        with self.engine.begin() as connection:
            connection.execute(
                insert(api_keys).values(
                    key_id=key_id,
                    secret_hash=secret_hash,
                    name=name,
                    roles=_join(roles),
                    scopes=_join(scopes),
                    owner=owner,
                    created_at=created_at,
                    expires_at=expires_at,
                )
            )
        found = self.get_api_key(key_id)
        assert found is not None
        return found

    def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        return None if row is None else _api_key(row)

    def list_api_keys(self) -> list[ApiKeyRow]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [_api_key(row) for row in rows]

    def revoke_api_key(self, key_id: str, now: float) -> bool:
        """Revoke a key not yet revoked; False when there is none such."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
        return bool(changed)

    def touch_api_key(self, key_id: str, now: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(api_keys).where(api_keys.c.key_id == key_id).values(last_used_at=now)
            )

    # -- sessions ------------------------------------------------------------------------
    def add_session(
        self,
        token_hash: str,
        user_pk: int,
        *,
        created_at: float,
        expires_at: float,
        address: str,
        mfa: bool,
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(sessions).values(
                    token_hash=token_hash,
                    user_pk=user_pk,
                    created_at=created_at,
                    last_seen_at=created_at,
                    expires_at=expires_at,
                    address=address[:64],
                    mfa=mfa,
                )
            )

    def get_session(self, token_hash: str) -> SessionRow | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(sessions).where(sessions.c.token_hash == token_hash)
            ).first()
        return None if row is None else _session(row)

    def touch_session(self, token_hash: str, last_seen_at: float) -> None:
        """Set when the session was last used (what the idle timeout counts from)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(sessions)
                .where(sessions.c.token_hash == token_hash)
                .values(last_seen_at=last_seen_at)
            )

    def delete_session(self, token_hash: str) -> bool:
        with self.engine.begin() as connection:
            deleted = connection.execute(
                delete(sessions).where(sessions.c.token_hash == token_hash)
            ).rowcount
        return bool(deleted)

    def delete_user_sessions(self, user_pk: int) -> int:
        """End every session of a user (password, roles or MFA changed; disabled)."""
        with self.engine.begin() as connection:
            return int(
                connection.execute(delete(sessions).where(sessions.c.user_pk == user_pk)).rowcount
            )

    def delete_stale_sessions(self, now: float, idle_cutoff: float) -> int:
        """Remove sessions past their absolute expiry or unused since ``idle_cutoff``."""
        with self.engine.begin() as connection:
            return int(
                connection.execute(
                    delete(sessions).where(
                        or_(sessions.c.expires_at <= now, sessions.c.last_seen_at < idle_cutoff)
                    )
                ).rowcount
            )

    # -- one-time secrets in archive_state -----------------------------------------------
    def put_secret_hash(self, name: str, secret_hash: str) -> None:
        """Store (or replace) the hash of a one-time secret under ``name``."""
        with self.engine.begin() as connection:
            connection.execute(delete(archive_state).where(archive_state.c.name == name))
            connection.execute(insert(archive_state).values(name=name, value=secret_hash))

    def get_secret_hash(self, name: str) -> str | None:
        with self.engine.connect() as connection:
            value = connection.execute(
                select(archive_state.c.value).where(archive_state.c.name == name)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def consume_secret_hash(self, name: str, secret_hash: str) -> bool:
        """Delete the secret if it is still ``secret_hash``: True for exactly one caller."""
        with self.engine.begin() as connection:
            deleted = connection.execute(
                delete(archive_state).where(
                    and_(archive_state.c.name == name, archive_state.c.value == secret_hash)
                )
            ).rowcount
        return bool(deleted)

    def drop_secret_hash(self, name: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(archive_state).where(archive_state.c.name == name))

    # -- login throttling ----------------------------------------------------------------
    def recent_attempts(self, keys: Sequence[str]) -> dict[str, list[float]]:
        """Times of recent login attempts per throttle key (``THROTTLE_PREFIX`` + key)."""
        names = [THROTTLE_PREFIX + key for key in keys]
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(archive_state.c.name, archive_state.c.value).where(
                    archive_state.c.name.in_(names)
                )
            ).all()
        found = {str(row.name)[len(THROTTLE_PREFIX) :]: _times(str(row.value)) for row in rows}
        return {key: found.get(key, []) for key in keys}

    def store_attempts(self, attempts: dict[str, list[float]]) -> None:
        """Replace the attempt times of each key (an empty list removes its row)."""
        with self.engine.begin() as connection:
            for key, times in attempts.items():
                name = THROTTLE_PREFIX + key
                connection.execute(delete(archive_state).where(archive_state.c.name == name))
                if times:
                    connection.execute(
                        insert(archive_state).values(name=name, value=json.dumps(times))
                    )

    def purge_attempts(self, older_than: float) -> int:
        """Remove throttle rows whose newest attempt is older than ``older_than``."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(archive_state.c.name, archive_state.c.value).where(
                    archive_state.c.name.startswith(THROTTLE_PREFIX)
                )
            ).all()
        stale = [
            str(row.name) for row in rows if max(_times(str(row.value)), default=0) < older_than
        ]
        if stale:
            with self.engine.begin() as connection:
                connection.execute(delete(archive_state).where(archive_state.c.name.in_(stale)))
        return len(stale)


def _times(value: str) -> list[float]:
    try:
        parsed = json.loads(value)
    except ValueError:
        return []
    if not isinstance(parsed, list):
        return []
    return [float(item) for item in parsed if isinstance(item, int | float)]
