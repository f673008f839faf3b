"""Credentials at rest and in hand: Argon2id password hashes, RFC 6238 TOTP codes with
their window and replay protection, API keys (format, hashing, expiry, revocation)."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select

from openvna.config import Role
from openvna.index.database import create_index_engine, upgrade_schema
from openvna.index.schema import api_keys
from openvna.index.user_repository import UserRepository
from openvna.security import totp
from openvna.security.apikeys import create_api_key, revoke_api_key, verify_api_key
from openvna.security.errors import AuthenticationRequired
from openvna.security.passwords import (
    WeakPasswordError,
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from openvna.security.permissions import Permission
from openvna.security.principal import PrincipalKind

# -- passwords ------------------------------------------------------------------------


def test_password_hash_is_salted_argon2id_and_verifies() -> None:
    first = hash_password("correct horse battery")
    second = hash_password("correct horse battery")
    assert first.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert first != second  # a fresh salt each time
    assert "correct horse" not in first
    assert verify_password(first, "correct horse battery")
    assert verify_password(second, "correct horse battery")
    assert not verify_password(first, "correct horse batterz")
    assert not verify_password(first, "")


def test_missing_or_malformed_hash_never_verifies() -> None:
    assert not verify_password(None, "openvna: a password nobody has")  # the dummy's own
    assert not verify_password(None, "anything at all")
    assert not verify_password("$argon2id$garbage", "anything at all")
    assert not verify_password("plain text", "plain text")


def test_hash_with_old_parameters_needs_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("a long password")
    assert verify_password(weak, "a long password")  # still accepted...
    assert needs_rehash(weak)  # ...and replaced at the next login
    assert not needs_rehash(hash_password("a long password"))
    assert needs_rehash("not a hash")


def test_password_policy() -> None:
    with pytest.raises(WeakPasswordError):
        check_password_policy("short")
    with pytest.raises(WeakPasswordError):
        check_password_policy("x" * 1025)
    check_password_policy("twelve chars")


# -- TOTP -------------------------------------------------------------------------------

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
"""The SHA-1 key of RFC 6238 Appendix B."""


@pytest.mark.parametrize(
    ("unix_time", "eight_digits"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_codes_match_rfc_6238_test_vectors(unix_time: int, eight_digits: str) -> None:
    # six digits are the last six of the RFC's eight (same truncation, modulo 10^6)
    assert totp.code_at(RFC_SECRET, totp.current_step(unix_time)) == eight_digits[-6:]


def test_code_accepted_one_step_either_side_only() -> None:
    secret = totp.new_secret()
    now = 1_700_000_015.0
    step = totp.current_step(now)
    for offset in (-1, 0, 1):
        code = totp.code_at(secret, step + offset)
        assert totp.matching_step(secret, code, now, None) == step + offset
    for offset in (-3, -2, 2, 3):
        code = totp.code_at(secret, step + offset)
        if code in {totp.code_at(secret, step + o) for o in (-1, 0, 1)}:
            continue  # a one-in-a-million collision of codes: nothing to test
        assert totp.matching_step(secret, code, now, None) is None
    assert totp.matching_step(totp.new_secret(), totp.code_at(secret, step), now, None) is None


def test_a_used_code_and_older_ones_are_refused() -> None:
    secret = totp.new_secret()
    now = 1_700_000_015.0
    step = totp.current_step(now)
    assert totp.matching_step(secret, totp.code_at(secret, step), now, step) is None  # replay
    assert totp.matching_step(secret, totp.code_at(secret, step - 1), now, step) is None
    assert totp.matching_step(secret, totp.code_at(secret, step + 1), now, step) == step + 1


def test_code_format() -> None:
    secret = totp.new_secret()
    now = 1_700_000_015.0
    code = totp.code_at(secret, totp.current_step(now))
    spaced = f"{code[:3]} {code[3:]}"
    assert totp.matching_step(secret, spaced, now, None) == totp.current_step(now)
    for bad in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        assert totp.normalise(bad) is None
    assert len(base64.b32decode(secret)) == 20  # 160 bits


def test_provisioning_uri_names_issuer_and_account() -> None:
    uri = totp.provisioning_uri(RFC_SECRET, "alice")
    assert uri.startswith("otpauth://totp/OpenVNA:alice?")
    assert f"secret={RFC_SECRET}" in uri
    assert "issuer=OpenVNA" in uri


# -- API keys ---------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


TOKEN = re.compile(r"^ovna_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


def test_api_key_format_and_what_is_stored(engine: Engine) -> None:
    users = UserRepository(engine)
    issued = create_api_key(users, "router", [Role.AI_SERVICE], owner="ops")
    assert TOKEN.match(issued.token), issued.token
    key_id, secret = issued.token.removeprefix("ovna_").split("_", 1)
    assert key_id == issued.key.key_id
    with engine.connect() as connection:
        row = connection.execute(select(api_keys)).one()
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in " ".join(str(value) for value in row)  # only the hash is kept
    principal = verify_api_key(users, issued.token, address="10.0.0.9")
    assert principal.subject == f"apikey:{key_id}"
    assert principal.kind is PrincipalKind.API_KEY
    assert principal.roles == frozenset({Role.AI_SERVICE})
    assert principal.scopes is None
    assert principal.address == "10.0.0.9"


def test_api_key_wrong_secret_or_garbage_is_refused(engine: Engine) -> None:
    users = UserRepository(engine)
    issued = create_api_key(users, "router", [Role.AI_SERVICE])
    tampered = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    unknown = "ovna_000000000000_" + issued.token.split("_", 2)[2]
    for token in (tampered, unknown, "ovna_", "ovna_zz_zz", issued.token + "x", ""):
        with pytest.raises(AuthenticationRequired):
            verify_api_key(users, token)


def test_api_key_scopes_narrow_the_roles(engine: Engine) -> None:
    users = UserRepository(engine)
    issued = create_api_key(users, "viewer", [Role.ADMIN], scopes=[Permission.QUERY])
    principal = verify_api_key(users, issued.token)
    assert principal.permissions == frozenset({Permission.QUERY})
    assert not principal.can(Permission.USER_ADMIN)


def test_api_key_expires_and_revocation_is_immediate(engine: Engine) -> None:
    users = UserRepository(engine)
    now = time.time()
    issued = create_api_key(users, "batch", [Role.RESEARCHER], expires_days=1, now=now)
    verify_api_key(users, issued.token, now=now + 86399)
    with pytest.raises(AuthenticationRequired):
        verify_api_key(users, issued.token, now=now + 86400)
    other = create_api_key(users, "router", [Role.AI_SERVICE])
    verify_api_key(users, other.token)
    assert revoke_api_key(users, other.key.key_id)
    assert not revoke_api_key(users, other.key.key_id)  # already revoked
    with pytest.raises(AuthenticationRequired):
        verify_api_key(users, other.token)
    with pytest.raises(ValueError):
        create_api_key(users, "bad", [Role.ADMIN], expires_days=0)
    with pytest.raises(ValueError):
        create_api_key(users, "bad", [])


def test_api_key_last_use_written_at_most_once_a_minute(engine: Engine) -> None:
    users = UserRepository(engine)
    now = 1_800_000_000.0
    issued = create_api_key(users, "router", [Role.AI_SERVICE], now=now)
    verify_api_key(users, issued.token, now=now + 1)
    assert users.get_api_key(issued.key.key_id).last_used_at == now + 1  # type: ignore[union-attr]
    verify_api_key(users, issued.token, now=now + 59)
    assert users.get_api_key(issued.key.key_id).last_used_at == now + 1  # type: ignore[union-attr]
    verify_api_key(users, issued.token, now=now + 61.5)
    assert users.get_api_key(issued.key.key_id).last_used_at == now + 61.5  # type: ignore[union-attr]
