"""Password hashing with Argon2id (RFC 9106), the memory-hard winner of the Password
Hashing Competition, through argon2-cffi.

Hashes are PHC strings (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``) that carry their
own parameters, so raising the cost later needs no migration: :func:`needs_rehash`
tells the login path to store a new hash the next time the password is known.
"""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 12
"""NIST SP 800-63B-4 asks for at least 15 characters when a password is the only factor
and at least 8 with MFA; 12 is required here for every account, MFA or not."""
MAX_PASSWORD_LENGTH = 1024

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
"""User names: letters, digits and ``. _ @ -``; no spaces, no commas, no control
characters (they appear in audit records and in ``user:<name>`` subjects)."""

_HASHER = PasswordHasher()
"""argon2-cffi's defaults are RFC 9106's second recommended option (t=3, m=64 MiB, p=4)."""

_DUMMY_HASH = _HASHER.hash("openvna: a password nobody has")
"""Verified against when the user does not exist, so that the answer takes as long as
for a real user and response times do not reveal which names exist."""


class WeakPasswordError(ValueError):
    """The password does not meet the policy (length)."""


def check_password_policy(password: str) -> None:
    """Raise :class:`WeakPasswordError` unless the password may be set."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def check_username(username: str) -> None:
    if not USERNAME.match(username):
        raise ValueError(
            "a user name is 1 to 128 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )


def hash_password(password: str) -> str:
    """A new Argon2id hash (random salt) of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; ``password_hash`` None burns the same time and
    answers False. A malformed stored hash answers False rather than raising."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and (
            password_hash is not None
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with other parameters than today's."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True
