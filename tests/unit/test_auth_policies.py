"""Authentication policies with a movable clock: session idle and absolute expiry, the
login throttle, TOTP at login, secure-by-default start-up checks, cookie attributes,
redirect targets and the same-origin test that guards cookie requests against CSRF."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import Engine
from starlette.datastructures import Headers

from openvna.config import OidcSettings, Role, Settings, load_settings
from openvna.index.database import create_index_engine, upgrade_schema
from openvna.index.user_repository import UserRepository
from openvna.security import totp
from openvna.security.accounts import AccountConflict, create_user, reset_mfa, update_user
from openvna.security.authn import Authenticator, Credentials, InvalidLogin, TooManyAttempts
from openvna.security.errors import AuthenticationRequired
from openvna.security.oidc import OidcVerifier, claim_at, roles_from, url_allowed
from openvna.security.sessions import session_cookie, token_hash
from openvna.security.startup import (
    BOOTSTRAP_STATE,
    InsecureConfigurationError,
    bootstrap_hash,
    check_secure_defaults,
    consume_bootstrap_secret,
    is_loopback,
    prepare_bootstrap,
)
from openvna.web.login import safe_next
from openvna.web.security import same_origin
from openvna.web.viewer import app_config_js

PASSWORD = "a sufficiently long password"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_with(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(None, data_dir=tmp_path, **{"security.require_auth": True, **overrides})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def test_session_ends_after_idle_time_and_after_max_age(tmp_path: Path, engine: Engine) -> None:
    settings = settings_with(
        tmp_path, **{"security.session_idle_minutes": 2, "security.session_max_hours": 1}
    )
    clock = Clock()
    authenticator = Authenticator(settings, engine, clock)
    create_user(authenticator.users, settings, "rita", PASSWORD, [Role.RADIOLOGIST])
    token = authenticator.login("rita", PASSWORD, None, "10.1.1.1").session.token
    cookie = Credentials(session=token)
    # used every 90 s, the session lives until its absolute end (1 h after login)
    for _ in range(39):
        clock.now += 90
        principal = authenticator.authenticate(cookie)
        assert principal is not None and principal.subject == "user:rita"
    clock.now += 90  # 60 min 0 s after login
    assert authenticator.authenticate(cookie) is None
    assert authenticator.users.get_session(token_hash(token)) is None  # deleted on sight
    # idle: 2 minutes without a request end it
    token = authenticator.login("rita", PASSWORD, None, "10.1.1.1").session.token
    clock.now += 119
    assert authenticator.authenticate(Credentials(session=token)) is not None
    clock.now += 119
    assert authenticator.authenticate(Credentials(session=token)) is not None
    clock.now += 121
    assert authenticator.authenticate(Credentials(session=token)) is None


def test_disabled_user_and_changed_roles_end_sessions(tmp_path: Path, engine: Engine) -> None:
    settings = settings_with(tmp_path)
    authenticator = Authenticator(settings, engine, Clock())
    users = authenticator.users
    create_user(users, settings, "tom", PASSWORD, [Role.TECHNOLOGIST])
    token = authenticator.login("tom", PASSWORD, None, "").session.token
    assert authenticator.authenticate(Credentials(session=token)) is not None
    update_user(users, "tom", roles=[Role.RESEARCHER])
    assert authenticator.authenticate(Credentials(session=token)) is None
    token = authenticator.login("tom", PASSWORD, None, "").session.token
    update_user(users, "tom", disabled=True)
    assert authenticator.authenticate(Credentials(session=token)) is None
    with pytest.raises(InvalidLogin):
        authenticator.login("tom", PASSWORD, None, "")


def test_totp_at_login_confirms_enrolment_and_refuses_replay(
    tmp_path: Path, engine: Engine
) -> None:
    settings = settings_with(tmp_path)
    clock = Clock()
    authenticator = Authenticator(settings, engine, clock)
    new = create_user(authenticator.users, settings, "ada", PASSWORD, [Role.ADMIN])
    assert new.totp_secret is not None and new.otpauth_uri is not None
    with pytest.raises(InvalidLogin):
        authenticator.login("ada", PASSWORD, None, "")
    code = totp.code_at(new.totp_secret, totp.current_step(clock.now))
    result = authenticator.login("ada", PASSWORD, code, "")
    assert result.session.mfa and not result.mfa_pending
    assert authenticator.users.get_user("ada").mfa_enrolled  # type: ignore[union-attr]
    with pytest.raises(InvalidLogin):  # the same code again, within its 30 s
        authenticator.login("ada", PASSWORD, code, "")
    clock.now += 30
    later = totp.code_at(new.totp_secret, totp.current_step(clock.now))
    assert authenticator.login("ada", PASSWORD, later, "").session.mfa
    principal = authenticator.authenticate(Credentials(session=result.session.token))
    assert principal is not None and Role.ADMIN in principal.roles and principal.mfa


def test_admin_without_enrolment_gets_a_session_that_can_only_enrol(
    tmp_path: Path, engine: Engine
) -> None:
    settings = settings_with(tmp_path)
    clock = Clock()
    authenticator = Authenticator(settings, engine, clock)
    users = authenticator.users
    create_user(users, settings, "ada", PASSWORD, [Role.ADMIN])
    create_user(users, settings, "bob", PASSWORD, [Role.ADMIN])
    reset_mfa(users, "ada")
    result = authenticator.login("ada", PASSWORD, None, "")
    assert result.mfa_pending and not result.session.mfa
    pending = authenticator.authenticate(Credentials(session=result.session.token))
    assert pending is not None and pending.roles == frozenset() and not pending.permissions
    secret, uri = authenticator.begin_enrolment(pending)
    assert secret in uri
    code = totp.code_at(secret, totp.current_step(clock.now))
    user, session = authenticator.confirm_enrolment(pending, code, "")
    assert user.mfa_enrolled and session.mfa
    full = authenticator.authenticate(Credentials(session=session.token))
    assert full is not None and Role.ADMIN in full.roles


def test_last_administrator_cannot_be_disabled_or_demoted(tmp_path: Path, engine: Engine) -> None:
    settings = settings_with(tmp_path)
    users = UserRepository(engine)
    create_user(users, settings, "ada", PASSWORD, [Role.ADMIN])
    with pytest.raises(AccountConflict):
        update_user(users, "ada", disabled=True)
    with pytest.raises(AccountConflict):
        update_user(users, "ada", roles=[Role.RADIOLOGIST])
    create_user(users, settings, "bob", PASSWORD, [Role.ADMIN])
    update_user(users, "ada", disabled=True)
    with pytest.raises(AccountConflict):
        update_user(users, "bob", disabled=True)


def test_login_throttle_per_user_and_per_address(tmp_path: Path, engine: Engine) -> None:
    settings = settings_with(tmp_path, **{"security.limits.login_attempts_per_minute": 3})
    clock = Clock()
    authenticator = Authenticator(settings, engine, clock)
    create_user(authenticator.users, settings, "rita", PASSWORD, [Role.RADIOLOGIST])
    for _ in range(3):
        with pytest.raises(InvalidLogin):
            authenticator.login("rita", "wrong password!", None, "10.0.0.1")
    with pytest.raises(TooManyAttempts) as throttled:  # even with the right password
        authenticator.login("rita", PASSWORD, None, "10.0.0.2")
    assert 1 <= throttled.value.retry_after <= 60
    # another user name from a fresh address is not throttled (just wrong: 401)...
    with pytest.raises(InvalidLogin):
        authenticator.login("someone", PASSWORD, None, "10.0.0.9")
    # ...but from the first address every user name is
    with pytest.raises(TooManyAttempts):
        authenticator.login("someone", PASSWORD, None, "10.0.0.1")
    clock.now += 61
    assert authenticator.login("rita", PASSWORD, None, "10.0.0.1").session.token
    # successful logins do not count: a person logging in often is never throttled
    for _ in range(10):
        authenticator.login("rita", PASSWORD, None, "10.0.0.1")


def test_bootstrap_secret_made_only_without_admin_and_used_once(
    tmp_path: Path, engine: Engine
) -> None:
    settings = settings_with(tmp_path)
    users = UserRepository(engine)
    secret = prepare_bootstrap(settings, engine)
    assert secret is not None
    assert users.get_secret_hash(BOOTSTRAP_STATE) == bootstrap_hash(secret)
    assert not consume_bootstrap_secret(users, secret + "x")
    assert consume_bootstrap_secret(users, secret)
    assert not consume_bootstrap_secret(users, secret)
    create_user(users, settings, "ada", PASSWORD, [Role.ADMIN])
    assert prepare_bootstrap(settings, engine) is None
    off = load_settings(None, data_dir=tmp_path)
    users.update_user("ada", disabled=True)
    assert prepare_bootstrap(off, engine) is None  # authentication off: no setup secret


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.1", "no-such-host.invalid"):
        assert not is_loopback(host), host


def test_secure_defaults(tmp_path: Path) -> None:
    exposed = load_settings(None, data_dir=tmp_path, host="0.0.0.0")
    with pytest.raises(InsecureConfigurationError) as refused:
        check_secure_defaults(exposed)
    message = str(refused.value)
    assert "security.require_auth" in message and "security.tls.certificate" in message
    assert "127.0.0.1" in message
    auth_only = settings_with(tmp_path, host="0.0.0.0")
    with pytest.raises(InsecureConfigurationError) as refused:
        check_secure_defaults(auth_only)
    assert "security.tls.certificate" in str(refused.value)
    assert "require_auth" not in str(refused.value)
    check_secure_defaults(
        settings_with(
            tmp_path,
            host="0.0.0.0",
            **{
                "security.tls.certificate": tmp_path / "c.pem",
                "security.tls.private_key": tmp_path / "k.pem",
            },
        )
    )
    check_secure_defaults(load_settings(None, data_dir=tmp_path))  # loopback, auth off
    with pytest.raises(InsecureConfigurationError, match="audience"):
        check_secure_defaults(settings_with(tmp_path, **{"security.oidc.issuer": "https://id"}))
    with pytest.raises(InsecureConfigurationError, match="asymmetric"):
        check_secure_defaults(
            settings_with(
                tmp_path,
                **{
                    "security.oidc.issuer": "https://id",
                    "security.oidc.audience": "openvna",
                    "security.oidc.algorithms": ["HS256", "none"],
                },
            )
        )
    with pytest.raises(InsecureConfigurationError, match="https"):
        check_secure_defaults(
            settings_with(
                tmp_path,
                **{"security.oidc.issuer": "http://id.example", "security.oidc.audience": "a"},
            )
        )


def test_session_cookie_attributes(tmp_path: Path) -> None:
    plain = session_cookie(settings_with(tmp_path), "tok")
    assert plain == "openvna_session=tok; Path=/; HttpOnly; SameSite=Strict"
    tls = settings_with(
        tmp_path,
        **{
            "security.tls.certificate": tmp_path / "c.pem",
            "security.tls.private_key": tmp_path / "k.pem",
        },
    )
    assert session_cookie(tls, "tok").endswith("; Secure")
    behind_proxy = settings_with(tmp_path, **{"http.public_url": "https://pacs.example.org"})
    assert session_cookie(behind_proxy, "tok").endswith("; Secure")


def test_redirect_after_login_stays_on_this_site() -> None:
    assert (
        safe_next("/viewer/viewer?StudyInstanceUIDs=1.2") == "/viewer/viewer?StudyInstanceUIDs=1.2"
    )
    for hostile in (
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=y",
        "",
        None,
    ):
        assert safe_next(hostile) == "/", hostile


def test_same_origin_for_cookie_requests() -> None:
    def headers(**values: str) -> Headers:
        return Headers({key.replace("_", "-"): value for key, value in values.items()})

    assert same_origin(headers(host="pacs:8042", origin="http://pacs:8042"))
    assert same_origin(headers(host="pacs:8042", referer="https://pacs:8042/login?next=/"))
    assert same_origin(headers(host="pacs:8042", x_requested_with="XMLHttpRequest"))
    assert not same_origin(headers(host="pacs:8042"))
    assert not same_origin(headers(host="pacs:8042", origin="http://evil:8042"))
    assert not same_origin(headers(host="pacs:8042", origin="http://pacs:9999"))
    assert not same_origin(headers(host="pacs:8042", origin="null"))
    assert same_origin(
        headers(host="127.0.0.1:8042", origin="https://pacs.example.org"),
        frozenset({"pacs.example.org"}),
    )


def test_oidc_claims_and_urls() -> None:
    claims = {"realm_access": {"roles": ["Radiologist", "offline_access", "auditor"]}}
    assert roles_from(claim_at(claims, "realm_access.roles")) == {Role.RADIOLOGIST, Role.AUDITOR}
    assert roles_from("admin researcher,bogus") == {Role.ADMIN, Role.RESEARCHER}
    assert roles_from(42) == frozenset()
    assert claim_at(claims, "realm_access.missing.deeper") is None
    assert url_allowed("https://id.example/realms/x")
    assert url_allowed("http://127.0.0.1:8080/")
    assert not url_allowed("http://id.example/")
    assert not url_allowed("file:///etc/passwd")


def test_voluntary_enrolment_makes_every_later_login_need_a_code(
    tmp_path: Path, engine: Engine
) -> None:
    settings = settings_with(tmp_path)
    clock = Clock()
    authenticator = Authenticator(settings, engine, clock)
    new = create_user(authenticator.users, settings, "rita", PASSWORD, [Role.RADIOLOGIST])
    assert new.totp_secret is None  # not required for radiologists
    session = authenticator.login("rita", PASSWORD, None, "").session
    principal = authenticator.authenticate(Credentials(session=session.token))
    assert principal is not None and Role.RADIOLOGIST in principal.roles
    secret, _ = authenticator.begin_enrolment(principal)
    code = totp.code_at(secret, totp.current_step(clock.now))
    _, upgraded = authenticator.confirm_enrolment(principal, code, "")
    assert upgraded.mfa
    clock.now += 30
    with pytest.raises(InvalidLogin):
        authenticator.login("rita", PASSWORD, None, "")
    later = totp.code_at(secret, totp.current_step(clock.now))
    assert authenticator.login("rita", PASSWORD, later, "").session.mfa


def test_oidc_keys_rotate_but_unknown_key_ids_cannot_hammer_the_provider() -> None:
    def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, object]:
        return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid}

    old, new = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab")
    published = {"keys": [jwk(old, "old")]}
    fetched: list[str] = []

    def fetch(url: str) -> object:
        fetched.append(url)
        return published

    settings = OidcSettings(
        issuer="https://id.example/realms/h", audience="openvna", jwks_url="https://id.example/k"
    )
    clock = Clock(time.time())
    verifier = OidcVerifier(settings, clock, fetch)
    claims = {"iss": settings.issuer, "aud": "openvna", "sub": "s1", "exp": int(clock.now) + 60}
    assert (
        verifier.verify(jwt.encode(claims, old, "RS256", headers={"kid": "old"})).subject
        == "oidc:s1"
    )
    assert fetched == ["https://id.example/k"]  # jwks_url set: no discovery
    rotated = jwt.encode(claims, new, "RS256", headers={"kid": "new"})
    published = {"keys": [jwk(old, "old"), jwk(new, "new")]}
    for _ in range(5):  # within 30 s of the last fetch: no new fetch
        with pytest.raises(AuthenticationRequired):
            verifier.verify(rotated)
    assert len(fetched) == 1
    clock.now += 31
    assert verifier.verify(rotated).subject == "oidc:s1"  # fetched again, key found
    assert len(fetched) == 2


def test_viewer_config_logs_in_through_the_provider_only_when_configured() -> None:
    assert '"oidc"' not in app_config_js()
    assert '"oidc"' not in app_config_js(OidcSettings(issuer="https://id/realms/h"))
    script = app_config_js(
        OidcSettings(issuer="https://id/realms/h", audience="v", client_id="openvna-viewer")
    )
    config = json.loads(script.split("var config = ", 1)[1].split(";\n", 1)[0])
    (login,) = config["oidc"]
    assert login["authority"] == "https://id/realms/h"
    assert login["client_id"] == "openvna-viewer"
    assert login["response_type"] == "code" and login["redirect_uri"] == "/callback"
