"""API keys for services: ``ovna_<key_id>_<secret>``, stored hashed, scoped, expiring,
revocable.

The key id (12 hex characters) is public and finds the row; only the SHA-256 of the
secret part (256 random bits, ``secrets.token_urlsafe(32)``) is stored, so a copy of
the index does not hold usable keys. A fast hash is right here, unlike for passwords:
the secret is random and long, so there is nothing to guess. The comparison is
constant-time. ``last_used_at`` is written at most once a minute per key, so a busy
service does not turn every request into an index write.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from openvna.config import Role
from openvna.index.user_repository import ApiKeyRow, UserRepository
from openvna.security.errors import AuthenticationRequired
from openvna.security.permissions import Permission
from openvna.security.principal import Principal, PrincipalKind

PREFIX = "ovna_"
_TOKEN = re.compile(r"^ovna_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
LAST_USED_INTERVAL = 60.0
"""Seconds between two writes of a key's ``last_used_at``."""


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: ``token`` is shown once and never stored."""

    token: str
    key: ApiKeyRow


def looks_like_api_key(value: str) -> bool:
    return value.startswith(PREFIX)


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    match = _TOKEN.match(token.strip())
    return (match.group(1), match.group(2)) if match else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    repository: UserRepository,
    name: str,
    roles: Iterable[Role],
    *,
    scopes: Iterable[Permission] = (),
    owner: str = "",
    expires_days: float | None = None,
    now: float | None = None,
) -> IssuedKey:
    """Create a key with ``roles`` (narrowed to ``scopes`` when given).

    Raises
    ------
    ValueError
        No role, an empty name, or a non-positive lifetime.
    """
    role_set = frozenset(roles)
    if not role_set:
        raise ValueError("an API key needs at least one role")
    name = name.strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise ValueError("an API key needs a name of 1 to 128 printable characters")
    if len(owner) > 128 or not owner.isprintable():
        raise ValueError("the owner is at most 128 printable characters")
    if expires_days is not None and expires_days <= 0:
        raise ValueError("expires_days must be positive")
    created = time.time() if now is None else now
    key_id = secrets.token_hex(6)
    while repository.get_api_key(key_id) is not None:  # 48 bits: a clash is rare
        key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    expires_at = None if expires_days is None else created + expires_days * 86400
    row = repository.add_api_key(
        key_id,
        secret_hash(secret),
        name,
        role_set,
        scopes=frozenset(scopes),
        owner=owner,
        created_at=created,
        expires_at=expires_at,
    )
    return IssuedKey(f"{PREFIX}{key_id}_{secret}", row)


def verify_api_key(
    repository: UserRepository, token: str, *, address: str = "", now: float | None = None
) -> Principal:
    """The principal of a valid key.

    Raises
    ------
    AuthenticationRequired
        Malformed, unknown, wrong secret, expired or revoked (one message for all, so
        that the answer does not tell an attacker which).
    """
    stamp = time.time() if now is None else now
    parsed = parse_token(token)
    invalid = AuthenticationRequired("invalid API key")
    if parsed is None:
        raise invalid
    key_id, secret = parsed
    row = repository.get_api_key(key_id)
    presented = secret_hash(secret)
    stored = row.secret_hash if row is not None else secret_hash("")
    matches = hmac.compare_digest(presented, stored)
    if row is None or not matches:
        raise invalid
    if row.revoked_at is not None or (row.expires_at is not None and stamp >= row.expires_at):
        raise invalid
    if row.last_used_at is None or stamp - row.last_used_at >= LAST_USED_INTERVAL:
        repository.touch_api_key(key_id, stamp)
    return Principal(
        subject=f"apikey:{row.key_id}",
        kind=PrincipalKind.API_KEY,
        roles=row.roles,
        display_name=row.name,
        address=address,
        scopes=row.scopes,
        extra={"owner": row.owner} if row.owner else {},
    )


def revoke_api_key(repository: UserRepository, key_id: str, now: float | None = None) -> bool:
    """Revoke at once: the next request with the key gets 401. False: no such live key."""
    if not _KEY_ID.match(key_id):
        return False
    return repository.revoke_api_key(key_id, time.time() if now is None else now)
