"""Authentication against a real ``openvna serve`` over real HTTP.

Local users (password, TOTP, enrolment), sessions (logout, idle and absolute expiry),
API keys (valid, expired, revoked, scoped), the one-time bootstrap secret, login
throttling, CSRF on cookie requests, the login page and the viewer redirect, bearer
JWTs from a real identity provider started here (discovery document and JWKS over
HTTP, RSA keys made with cryptography) with the classic attacks, and the
secure-by-default refusal to listen beyond loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import Engine, select

from openvna.app import open_archive
from openvna.config import Role, load_settings
from openvna.index.database import create_index_engine
from openvna.index.schema import archive_state
from openvna.index.user_repository import UserRepository
from openvna.security import totp
from openvna.security.accounts import create_user
from openvna.security.apikeys import create_api_key
from openvna.security.audit import AuditEvent, AuditEventId, Outcome
from openvna.security.sessions import open_session, token_hash
from openvna.security.startup import BOOTSTRAP_STATE
from openvna.web.app import DicomEndpoint, create_app
from openvna.web.server import HttpServer
from tests.conftest import ArchiveProcess, free_port, openvna_command, wait_until

pytestmark = pytest.mark.integration

AUDIENCE = "openvna"
PASSWORD = "correct horse battery staple"
XHR = {"X-Requested-With": "XMLHttpRequest"}
ECHO_AE = '[{"ae_title":"ECHOSCU","roles":["technologist"]}]'


def http_get(url: str, **options: Any) -> requests.Response:
    return requests.get(url, allow_redirects=False, timeout=60, **options)


def http_post(url: str, **options: Any) -> requests.Response:
    return requests.post(url, allow_redirects=False, timeout=60, **options)


def http_patch(url: str, **options: Any) -> requests.Response:
    return requests.patch(url, allow_redirects=False, timeout=60, **options)


def http_delete(url: str, **options: Any) -> requests.Response:
    return requests.delete(url, allow_redirects=False, timeout=60, **options)


# -- a real identity provider ----------------------------------------------------------


@dataclass
class IdentityProvider:
    """Discovery document and JWKS over HTTP on loopback, counting what was fetched."""

    port: int
    key: rsa.RSAPrivateKey
    kid: str = "idp-key-1"
    requests: list[str] = field(default_factory=list)
    extra_keys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/hospital"

    def jwks(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def fetched(self, suffix: str) -> int:
        return sum(1 for path in self.requests if path.endswith(suffix))


def serve_json(routes: Callable[[str], Any], log: list[str]) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            log.append(self.path)
            document = routes(self.path)
            body = json.dumps(document).encode() if document is not None else b"{}"
            self.send_response(200 if document is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider(0, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def routes(path: str) -> Any:
        if path == "/realms/hospital/.well-known/openid-configuration":
            return {
                "issuer": provider.issuer,
                "jwks_uri": f"{provider.issuer}/protocol/openid-connect/certs",
                "authorization_endpoint": f"{provider.issuer}/protocol/openid-connect/auth",
                "token_endpoint": f"{provider.issuer}/protocol/openid-connect/token",
            }
        if path == "/realms/hospital/protocol/openid-connect/certs":
            return provider.jwks()
        return None

    server, provider.port = serve_json(routes, provider.requests)
    yield provider
    server.shutdown()


# -- the archive under test --------------------------------------------------------------


def secured_env(**settings: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OPENVNA_SECURITY__REQUIRE_AUTH": "true",
        "OPENVNA_SECURITY__DICOM_AES": ECHO_AE,
    }
    env.update({f"OPENVNA_{key.upper()}": value for key, value in settings.items()})
    return env


def cli(
    data_dir: Path, *args: str, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*openvna_command(), *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "300"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openvna {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def totp_secret_from(output: str) -> str:
    match = re.search(r"otpauth://totp/\S*secret=([A-Z2-7]+)", output)
    assert match, output
    return match.group(1)


def token_from(output: str) -> str:
    match = re.search(r"\b(ovna_[0-9a-f]{12}_[A-Za-z0-9_-]{43})\b", output)
    assert match, output
    return match.group(1)


@dataclass
class Secured:
    """The running archive, its index and the accounts made for the tests."""

    process: ArchiveProcess
    engine: Engine
    admin_secret: str
    admin_key: str

    @property
    def url(self) -> str:
        return self.process.http_url

    @property
    def users(self) -> UserRepository:
        return UserRepository(self.engine)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, idp: IdentityProvider) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("authn")
    data_dir = directory / "data"
    added = cli(
        data_dir, "user", "add", "ada", "--role", "admin", "--password-stdin", stdin=PASSWORD
    )
    admin_secret = totp_secret_from(added.stdout)
    cli(
        data_dir, "user", "add", "rita", "--role", "radiologist", "--password-stdin", stdin=PASSWORD
    )
    admin_key = token_from(cli(data_dir, "apikey", "create", "ops", "--role", "admin").stdout)
    env = secured_env(
        security__session_idle_minutes="1",
        security__limits__login_attempts_per_minute="100",
        security__oidc__issuer=idp.issuer,
        security__oidc__audience=AUDIENCE,
        security__oidc__roles_claim="realm_access.roles",
        dimse__processes="1",
    )
    process = ArchiveProcess(data_dir, free_port(), "OPENVNA", None, directory / "log", (), env)
    process.start()
    engine = create_index_engine(f"sqlite:///{data_dir / 'index.sqlite'}")
    try:
        yield Secured(process, engine, admin_secret, admin_key)
    finally:
        engine.dispose()
        process.stop()


def login(url: str, username: str, password: str, code: str | None = None) -> requests.Response:
    body: dict[str, str] = {"username": username, "password": password}
    if code is not None:
        body["totp"] = code
    return http_post(f"{url}/api/auth/login", json=body, headers=XHR)


def session_of(response: requests.Response) -> str:
    cookie = response.headers.get("set-cookie", "")
    match = re.match(r"openvna_session=([A-Za-z0-9_-]+);", cookie)
    assert match, f"no session cookie in {response.status_code} {response.headers}"
    return match.group(1)


def with_session(token: str, **headers: str) -> dict[str, str]:
    return {"Cookie": f"openvna_session={token}", **headers}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def now_code(secret: str) -> str:
    return totp.code_at(secret, totp.current_step(time.time()))


# -- local users and sessions ------------------------------------------------------------


def test_without_credentials_only_public_paths_answer(secured: Secured) -> None:
    for path in ("/api/system", "/api/auth/me", "/api/users", "/dicom-web/studies"):
        answer = http_get(secured.url + path)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert http_get(secured.url + "/api/health").status_code == 200
    page = http_get(secured.url + "/login?next=/viewer/")
    assert page.status_code == 200
    for field_name in ("name=username", "name=password", "name=totp", 'value="/viewer/"'):
        assert field_name in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # no script at all
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text and "http" not in page.text.split("<body>")[1]


def test_user_logs_in_works_and_logs_out(secured: Secured) -> None:
    answer = login(secured.url, "rita", PASSWORD)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["user"] == "rita" and body["roles"] == ["radiologist"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["expiresAt"])
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: no TLS configured here
    token = session_of(answer)
    me = http_get(secured.url + "/api/auth/me", headers=with_session(token))
    assert me.status_code == 200
    assert me.json()["subject"] == "user:rita" and me.json()["kind"] == "user"
    assert http_get(secured.url + "/api/system", headers=with_session(token)).status_code == 200
    assert http_get(secured.url + "/api/users", headers=with_session(token)).status_code == 403
    stored = secured.users.get_session(token_hash(token))
    assert stored is not None and token not in stored.token_hash  # only the hash is kept
    out = http_post(secured.url + "/api/auth/logout", headers=with_session(token, **XHR))
    assert out.status_code == 200 and out.json() == {"loggedOut": True}
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert http_get(secured.url + "/api/auth/me", headers=with_session(token)).status_code == 401


def test_wrong_password_and_unknown_user_get_the_same_401(secured: Secured) -> None:
    wrong = login(secured.url, "rita", PASSWORD + "!")
    unknown = login(secured.url, "nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["error"] == unknown.json()["error"]
    assert "set-cookie" not in wrong.headers
    missing = http_post(secured.url + "/api/auth/login", json={"username": "rita"}, headers=XHR)
    assert missing.status_code == 400


def test_admin_must_give_a_fresh_totp_code(secured: Secured) -> None:
    assert login(secured.url, "ada", PASSWORD).status_code == 401  # no code
    code = now_code(secured.admin_secret)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert login(secured.url, "ada", PASSWORD, wrong).status_code == 401
    assert login(secured.url, "ada", PASSWORD + "x", code).status_code == 401
    answer = login(secured.url, "ada", PASSWORD, code)
    assert answer.status_code == 200, answer.text
    assert answer.json()["roles"] == ["admin"] and answer.json()["mfa"] is True
    token = session_of(answer)
    users = http_get(secured.url + "/api/users", headers=with_session(token))
    assert users.status_code == 200
    assert {user["username"]: user["mfaEnrolled"] for user in users.json()}["ada"] is True
    assert "argon2" not in users.text and "password" not in users.text
    replay = login(secured.url, "ada", PASSWORD, code)
    assert replay.status_code == 401  # a code works once


def test_admin_without_enrolment_is_sent_to_set_it_up(secured: Secured) -> None:
    data_dir = secured.process.data_dir
    cli(data_dir, "user", "add", "bea", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    cli(data_dir, "user", "mfa-reset", "bea")
    answer = login(secured.url, "bea", PASSWORD)
    assert answer.status_code == 403, answer.text
    assert answer.json()["mfaSetup"] == "/api/auth/mfa/enroll"
    pending = session_of(answer)
    assert http_get(secured.url + "/api/users", headers=with_session(pending)).status_code == 403
    me = http_get(secured.url + "/api/auth/me", headers=with_session(pending)).json()
    assert me["mfaPending"] is True and me["roles"] == [] and me["permissions"] == []
    enrol = http_post(secured.url + "/api/auth/mfa/enroll", headers=with_session(pending, **XHR))
    assert enrol.status_code == 200, enrol.text
    secret = enrol.json()["secret"]
    assert enrol.json()["otpauthUri"].startswith("otpauth://totp/OpenVNA:bea?")
    confirm = http_post(
        secured.url + "/api/auth/mfa/confirm",
        json={"totp": now_code(secret)},
        headers=with_session(pending, **XHR),
    )
    assert confirm.status_code == 200, confirm.text
    full = session_of(confirm)
    assert full != pending
    assert http_get(secured.url + "/api/users", headers=with_session(full)).status_code == 200
    assert http_get(secured.url + "/api/auth/me", headers=with_session(pending)).status_code == 401
    again = http_post(secured.url + "/api/auth/mfa/enroll", headers=with_session(full, **XHR))
    assert again.status_code == 409  # only an administrator resets an enrolment


def test_session_idle_and_absolute_expiry(secured: Secured) -> None:
    """idle: 1 minute (set for this archive); absolute: 12 hours (default). Time moves
    through the session's own timestamps, written by the repository functions."""
    users = secured.users
    token = session_of(login(secured.url, "rita", PASSWORD))
    me = secured.url + "/api/auth/me"
    assert http_get(me, headers=with_session(token)).status_code == 200
    users.touch_session(token_hash(token), time.time() - 50)
    assert http_get(me, headers=with_session(token)).status_code == 200  # 50 s idle: fine
    users.touch_session(token_hash(token), time.time() - 61)
    expired = http_get(me, headers=with_session(token))
    assert expired.status_code == 401
    assert "Max-Age=0" in expired.headers.get("set-cookie", "")  # the browser forgets it
    assert users.get_session(token_hash(token)) is None
    rita = users.get_user("rita")
    assert rita is not None
    settings = load_settings(None, data_dir=secured.process.data_dir)
    old = open_session(
        users, settings, rita, address="127.0.0.1", mfa=False, now=time.time() - 11.9 * 3600
    )
    users.touch_session(token_hash(old.token), time.time())
    assert http_get(me, headers=with_session(old.token)).status_code == 200  # 11.9 h old
    older = open_session(
        users, settings, rita, address="127.0.0.1", mfa=False, now=time.time() - 12.01 * 3600
    )
    users.touch_session(token_hash(older.token), time.time())  # busy, but past 12 h
    assert http_get(me, headers=with_session(older.token)).status_code == 401


def test_login_form_redirects_back_and_only_to_this_site(secured: Secured) -> None:
    origin = {"Origin": secured.url}
    form = {"username": "rita", "password": PASSWORD, "next": "/api/auth/me?x=1"}
    answer = http_post(secured.url + "/api/auth/login", data=form, headers=origin)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/api/auth/me?x=1"
    assert (
        http_get(secured.url + "/api/auth/me", headers=with_session(session_of(answer))).status_code
        == 200
    )
    evil = http_post(
        secured.url + "/api/auth/login", data={**form, "next": "//evil.example/"}, headers=origin
    )
    assert evil.status_code == 303 and evil.headers["location"] == "/"
    wrong = http_post(
        secured.url + "/api/auth/login", data={**form, "password": "nope"}, headers=origin
    )
    assert wrong.status_code == 401 and "invalid user name" in wrong.text
    assert 'value="rita"' in wrong.text and "nope" not in wrong.text


def test_login_page_walks_an_administrator_through_enrolment(secured: Secured) -> None:
    url = secured.url
    admin = bearer(secured.admin_key)
    created = http_post(
        url + "/api/users",
        json={"username": "ines", "password": PASSWORD, "roles": ["admin"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert http_post(url + "/api/users/ines/mfa-reset", headers=admin).status_code == 200
    origin = {"Origin": url}
    form = {"username": "ines", "password": PASSWORD, "next": "/api/users"}
    page = http_post(url + "/api/auth/login", data=form, headers=origin)
    assert page.status_code == 403 and "text/html" in page.headers["content-type"]
    secret = re.search(r"<code>([A-Z2-7]{32})</code>", page.text)
    assert secret, page.text
    pending = session_of(page)
    confirm = url + "/api/auth/mfa/confirm"
    step = totp.current_step(time.time())
    window = {totp.code_at(secret.group(1), step + offset) for offset in range(-2, 3)}
    not_a_code = next(code for code in ("000000", "111111", "222222") if code not in window)
    wrong = http_post(
        confirm,
        data={"totp": not_a_code, "next": "/api/users"},
        headers=with_session(pending, **origin),
    )
    assert wrong.status_code == 401 and secret.group(1) in wrong.text  # same secret again
    done = http_post(
        confirm,
        data={"totp": now_code(secret.group(1)), "next": "/api/users"},
        headers=with_session(pending, **origin),
    )
    assert done.status_code == 303 and done.headers["location"] == "/api/users"
    assert http_get(url + "/api/users", headers=with_session(session_of(done))).status_code == 200


def test_cookie_requests_from_other_sites_are_refused(secured: Secured) -> None:
    token = session_of(login(secured.url, "rita", PASSWORD))
    logout = secured.url + "/api/auth/logout"
    assert http_post(logout, headers=with_session(token)).status_code == 403
    evil = with_session(token, Origin="http://evil.example")
    assert http_post(logout, headers=evil).status_code == 403
    assert (
        http_post(logout, headers=with_session(token, Referer="http://evil.example/x")).status_code
        == 403
    )
    forged_login = http_post(
        secured.url + "/api/auth/login",
        data={"username": "rita", "password": PASSWORD},
        headers={"Origin": "http://evil.example"},
    )
    assert forged_login.status_code == 403  # login CSRF
    assert http_get(secured.url + "/api/auth/me", headers=with_session(token)).status_code == 200
    ours = http_post(logout, headers=with_session(token, Origin=secured.url))
    assert ours.status_code == 200 and ours.json()["loggedOut"] is True


def test_browser_opening_the_viewer_without_session_goes_to_login(secured: Secured) -> None:
    html = {"Accept": "text/html,application/xhtml+xml"}
    answer = http_get(secured.url + "/viewer/viewer?StudyInstanceUIDs=1.2.3", headers=html)
    assert answer.status_code == 303
    assert (
        answer.headers["location"] == "/login?next=%2Fviewer%2Fviewer%3FStudyInstanceUIDs%3D1.2.3"
    )
    assert (
        http_get(secured.url + "/viewer", headers=html).headers["location"]
        == "/login?next=%2Fviewer"
    )
    token = session_of(login(secured.url, "rita", PASSWORD))
    logged_in = http_get(secured.url + "/viewer/", headers=with_session(token, **html))
    assert logged_in.status_code != 303  # the viewer itself (not installed here: 404)


# -- API keys ------------------------------------------------------------------------------


def test_api_keys_valid_expired_revoked_and_scoped(secured: Secured) -> None:
    url = secured.url
    admin = bearer(secured.admin_key)
    assert http_get(url + "/api/users", headers=admin).status_code == 200
    assert http_get(url + "/api/users", headers={"X-API-Key": secured.admin_key}).status_code == 200
    created = http_post(
        url + "/api/apikeys",
        json={
            "name": "qido-only",
            "roles": ["admin"],
            "scopes": ["system:read"],
            "expiresDays": 30,
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    scoped = created.json()["token"]
    assert http_get(url + "/api/system", headers=bearer(scoped)).status_code == 200
    assert http_get(url + "/api/users", headers=bearer(scoped)).status_code == 403  # narrowed
    listed = http_get(url + "/api/apikeys", headers=admin).json()
    assert scoped not in json.dumps(listed)  # tokens are never listed
    key_id = created.json()["keyId"]
    assert any(key["keyId"] == key_id and key["scopes"] == ["system:read"] for key in listed)
    assert http_delete(f"{url}/api/apikeys/{key_id}", headers=admin).status_code == 200
    assert http_get(url + "/api/system", headers=bearer(scoped)).status_code == 401  # revoked
    expired = create_api_key(
        secured.users, "old", [Role.RADIOLOGIST], expires_days=1, now=time.time() - 2 * 86400
    )
    assert http_get(url + "/api/system", headers=bearer(expired.token)).status_code == 401
    bad = secured.admin_key[:-2] + ("AA" if not secured.admin_key.endswith("AA") else "BB")
    assert http_get(url + "/api/system", headers=bearer(bad)).status_code == 401
    assert http_get(url + "/api/system", headers={"X-API-Key": "ovna_nonsense"}).status_code == 401
    revoked_by_cli = token_from(
        cli(
            secured.process.data_dir,
            "apikey",
            "create",
            "tmp",
            "--role",
            "researcher",
            "--scope",
            "system:read",
            "--expires-days",
            "2",
        ).stdout
    )
    assert http_get(url + "/api/system", headers=bearer(revoked_by_cli)).status_code == 200
    cli(secured.process.data_dir, "apikey", "revoke", revoked_by_cli.split("_")[1])
    assert http_get(url + "/api/system", headers=bearer(revoked_by_cli)).status_code == 401


def test_admin_manages_users_over_the_api(secured: Secured) -> None:
    url = secured.url
    admin = bearer(secured.admin_key)
    created = http_post(
        url + "/api/users",
        json={"username": "tess", "password": PASSWORD, "roles": ["technologist"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert "totp" not in created.json()  # technologists need no second factor
    token = session_of(login(url, "tess", PASSWORD))
    short = http_post(
        url + "/api/users",
        json={"username": "x", "password": "short", "roles": ["admin"]},
        headers=admin,
    )
    assert short.status_code == 400
    mfa_user = http_post(
        url + "/api/users",
        json={"username": "otto", "password": PASSWORD, "roles": ["admin"]},
        headers=admin,
    )
    assert mfa_user.json()["totp"]["otpauthUri"].startswith("otpauth://totp/OpenVNA:otto?")
    disabled = http_patch(url + "/api/users/tess", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert http_get(url + "/api/auth/me", headers=with_session(token)).status_code == 401
    assert login(url, "tess", PASSWORD).status_code == 401
    assert (
        http_patch(url + "/api/users/nobody", json={"disabled": True}, headers=admin).status_code
        == 404
    )


# -- OIDC bearer tokens and the attacks on them --------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"


def test_oidc_bearer_tokens_and_attacks(secured: Secured, idp: IdentityProvider) -> None:
    url = secured.url
    now = int(time.time())
    claims = {
        "iss": idp.issuer,
        "aud": AUDIENCE,
        "sub": "4d1f-olga",
        "exp": now + 300,
        "iat": now,
        "preferred_username": "olga",
        "realm_access": {"roles": ["radiologist", "offline_access", "uma_authorization"]},
    }

    def signed(payload: dict[str, Any], key: Any = idp.key, **header: Any) -> str:
        header.setdefault("kid", idp.kid)
        algorithm = header.pop("alg", "RS256")
        return jwt.encode(payload, key, algorithm=algorithm, headers=header)

    valid = signed(claims)
    me = http_get(url + "/api/auth/me", headers=bearer(valid))
    assert me.status_code == 200, me.text
    assert me.json()["subject"] == "oidc:4d1f-olga" and me.json()["kind"] == "oidc"
    assert me.json()["roles"] == ["radiologist"]  # unknown role names ignored
    assert me.json()["displayName"] == "olga"
    assert http_get(url + "/api/system", headers=bearer(valid)).status_code == 200
    assert idp.fetched("/.well-known/openid-configuration") == 1  # discovered once
    certs_before = idp.fetched("/certs")
    assert certs_before == 1

    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rogue_jwk = {**json.loads(RSAAlgorithm.to_jwk(rogue.public_key())), "kid": "rogue"}
    attacker_log: list[str] = []
    attacker, attacker_port = serve_json(lambda path: {"keys": [rogue_jwk]}, attacker_log)
    public_pem = idp.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head, body, signature = valid.split(".")
    flipped = b64url(
        bytes([base64.urlsafe_b64decode(signature + "==")[0] ^ 1])
        + base64.urlsafe_b64decode(signature + "==")[1:]
    )
    admin_claims = {**claims, "realm_access": {"roles": ["admin"]}}
    hs_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": idp.kid}, admin_claims)
    hs_signature = b64url(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())
    ec_key = ec.generate_private_key(ec.SECP256R1())
    attacks = {
        "expired": signed({**claims, "exp": now - 120}),
        "wrong audience": signed({**claims, "aud": "another-app"}),
        "no audience": signed({k: v for k, v in claims.items() if k != "aud"}),
        "wrong issuer": signed({**claims, "iss": f"http://127.0.0.1:{attacker_port}/realms/x"}),
        "missing exp": signed({k: v for k, v in claims.items() if k != "exp"}),
        "not yet valid": signed({**claims, "nbf": now + 600}),
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": idp.kid}, admin_claims) + ".",
        "alg None with the signature kept": unsigned({"alg": "None", "kid": idp.kid}, admin_claims)
        + "."
        + signature,
        "HS256 with the public key as secret": f"{hs_input}.{hs_signature}",
        "tampered signature": f"{head}.{body}.{flipped}",
        "tampered claims": f"{head}.{unsigned({}, admin_claims).split('.')[1]}.{signature}",
        "unknown kid": signed(claims, rogue, kid="rogue"),
        "right kid but another key": signed(claims, rogue),
        "jku to the attacker's keys": signed(
            claims, rogue, kid="rogue", jku=f"http://127.0.0.1:{attacker_port}/jwks"
        ),
        "embedded jwk": signed(claims, rogue, kid="rogue", jwk=rogue_jwk),
        "ES256 on the RSA key id": signed(claims, ec_key, alg="ES256"),
        "garbage": "not.a.jwt",
    }
    refused = 0
    for name, token in attacks.items():
        for path in ("/api/auth/me", "/api/system"):
            answer = http_get(url + path, headers=bearer(token))
            assert answer.status_code == 401, (name, path, answer.status_code, answer.text)
        refused += 1
    attacker.shutdown()
    print(f"\nJWT attacks refused with 401: {refused} of {len(attacks)}: {', '.join(attacks)}")
    assert refused == len(attacks) == 17
    assert attacker_log == []  # jku/jwk headers never make the archive fetch keys
    # unknown key ids make the archive look again, at most once per 30 s
    assert idp.fetched("/certs") - certs_before <= 1
    assert http_get(url + "/api/auth/me", headers=bearer(valid)).status_code == 200


# -- bootstrap and throttling: archives of their own ------------------------------------


def test_bootstrap_secret_creates_the_first_admin_once(
    start_archive: Callable[..., ArchiveProcess],
) -> None:
    archive = start_archive(env=secured_env())
    wait_until(lambda: "setup secret" in archive.log_path.read_text(), 20, "the setup secret")
    log = archive.log_path.read_text()
    match = re.search(r"setup secret \(shown once\):\s*\n\s*(\S+)", log)
    assert match, log
    secret = match.group(1)
    assert log.count(secret) == 1
    engine = create_index_engine(f"sqlite:///{archive.data_dir / 'index.sqlite'}")
    with engine.connect() as connection:
        stored = connection.execute(
            select(archive_state.c.value).where(archive_state.c.name == BOOTSTRAP_STATE)
        ).scalar_one()
    engine.dispose()
    assert stored == hashlib.sha256(secret.encode()).hexdigest() and secret not in stored
    setup = archive.http_url + "/api/auth/setup"
    body = {"secret": secret, "username": "root", "password": PASSWORD}
    assert http_post(setup, json={**body, "secret": "guess"}, headers=XHR).status_code == 403
    assert http_post(setup, json={**body, "password": "short"}, headers=XHR).status_code == 400
    created = http_post(setup, json=body, headers=XHR)
    assert created.status_code == 201, created.text
    assert created.json()["roles"] == ["admin"]
    secret_totp = created.json()["totp"]["secret"]
    again = http_post(setup, json={**body, "username": "root2"}, headers=XHR)
    assert again.status_code in (403, 409)  # used: never a second administrator this way
    answer = login(archive.http_url, "root", PASSWORD, now_code(secret_totp))
    assert answer.status_code == 200, answer.text
    assert answer.json()["roles"] == ["admin"]


def test_login_attempts_are_throttled(start_archive: Callable[..., ArchiveProcess]) -> None:
    archive = start_archive(env=secured_env(security__limits__login_attempts_per_minute="3"))
    cli(
        archive.data_dir,
        "user",
        "add",
        "rita",
        "--role",
        "radiologist",
        "--password-stdin",
        stdin=PASSWORD,
    )
    statuses = [login(archive.http_url, "rita", "wrong password").status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    throttled = login(archive.http_url, "rita", PASSWORD)  # even the right password
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    other = login(archive.http_url, "someone-else", PASSWORD)  # same address
    assert other.status_code == 429


# -- audit ---------------------------------------------------------------------------------


class CollectingTrail:
    """An audit trail that keeps events in a list (the sink only; the app is real)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_logins_logouts_and_throttling_are_audited(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        **{"security.require_auth": True, "security.limits.login_attempts_per_minute": 2},
    )
    archive, executor = open_archive(settings)
    trail = CollectingTrail()
    archive.security.audit = trail
    try:
        create_user(
            archive.security.authenticator.users, settings, "rita", PASSWORD, [Role.RADIOLOGIST]
        )
        app = create_app(archive, DicomEndpoint("OPENVNA", "127.0.0.1", 0), settings.http)
        server = HttpServer(app, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.start()}"
        try:
            failed = login(url, "rita", "nope")
            assert failed.status_code == 401
            token = session_of(login(url, "rita", PASSWORD))
            out = http_post(url + "/api/auth/logout", headers=with_session(token, **XHR))
            assert out.status_code == 200
            statuses = [login(url, "mallory", "x").status_code for _ in range(2)]
            assert statuses == [401, 429]  # the address had one failure already
        finally:
            server.stop()
    finally:
        executor.shutdown()
        archive.close()
    logins = [e for e in trail.events if e.event_id is AuditEventId.USER_AUTHENTICATION]
    summary = [(e.type_code.meaning if e.type_code else "", e.outcome) for e in logins]
    assert summary == [
        ("Login", Outcome.MINOR_FAILURE),
        ("Login", Outcome.SUCCESS),
        ("Logout", Outcome.SUCCESS),
        ("Login", Outcome.MINOR_FAILURE),
    ]
    assert logins[1].requestor is not None and logins[1].requestor.subject == "user:rita"
    assert "rita" in logins[0].description and "wrong password" in logins[0].description
    alerts = [
        e
        for e in trail.events
        if e.event_id is AuditEventId.SECURITY_ALERT and "throttled" in e.description
    ]
    assert len(alerts) == 1 and "mallory" in alerts[0].description


# -- secure by default -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected", "absent"),
    [
        ({}, ["security.require_auth", "security.tls.certificate"], []),
        (
            {"OPENVNA_SECURITY__REQUIRE_AUTH": "true"},
            ["security.tls.certificate", "security.tls.private_key"],
            ["require_auth = true"],
        ),
    ],
    ids=["auth off", "auth on, no TLS"],
)
def test_serve_refuses_to_listen_beyond_loopback(
    tmp_path: Path, env: dict[str, str], expected: list[str], absent: list[str]
) -> None:
    data_dir = tmp_path / "data"
    dicom_port, http_port = free_port(), free_port()
    result = subprocess.run(
        [
            *openvna_command(),
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(data_dir),
            "--dicom-port",
            str(dicom_port),
            "--http-port",
            str(http_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300", **env},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "refusing to listen on 0.0.0.0" in output
    for text in expected:
        assert text in output, output
    for text in absent:
        assert text not in output, output
    assert "--host 127.0.0.1" in output and "Traceback" not in output
    assert "serving" not in output
    assert not data_dir.exists()  # refused before anything was opened or written
