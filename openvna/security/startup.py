"""Secure by default: the checks ``openvna serve`` passes before it opens any port.

An archive reachable from the network must authenticate every caller and encrypt the
traffic: the server refuses to listen on a non-loopback address unless
``security.require_auth`` is on *and* TLS is configured (Orthanc's CVE-2025-0896 was
an archive answering anyone by default). There are no default passwords: when
authentication is on and no administrator exists yet, a one-time secret is made at
start-up and shown once in the server's log; ``POST /api/auth/setup`` with it creates
the first administrator, once (``openvna user add --role admin`` works as well).
Only the secret's SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import socket

from sqlalchemy import Engine

from openvna.config import Settings
from openvna.errors import OpenVNAError
from openvna.index.user_repository import UserRepository
from openvna.security.oidc import accepted_algorithms, url_allowed

BOOTSTRAP_STATE = "auth_bootstrap_secret"
"""archive_state row holding the SHA-256 of the one-time setup secret."""
SETUP_PATH = "/api/auth/setup"


class InsecureConfigurationError(OpenVNAError):
    """The settings would expose the archive; the message says how to fix them."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1,
    ``localhost`` or a name that resolves only to those). ``0.0.0.0`` and ``::``
    listen on every interface and are not."""
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        resolved = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {entry[4][0] for entry in resolved}
    return bool(addresses) and all(
        ipaddress.ip_address(str(address).split("%")[0]).is_loopback for address in addresses
    )


def check_secure_defaults(settings: Settings) -> None:
    """Raise :class:`InsecureConfigurationError` (an :class:`OpenVNAError`) when the
    settings would expose the archive; nothing has been opened or written by then."""
    security = settings.security
    if not is_loopback(settings.host):
        missing = []
        if not security.require_auth:
            missing.append(
                "authentication: set security.require_auth = true "
                "(environment OPENVNA_SECURITY__REQUIRE_AUTH=true)"
            )
        if not security.tls.configured:
            missing.append(
                "TLS: set security.tls.certificate and security.tls.private_key to PEM files "
                "(OPENVNA_SECURITY__TLS__CERTIFICATE, OPENVNA_SECURITY__TLS__PRIVATE_KEY)"
            )
        if missing:
            raise InsecureConfigurationError(
                f"refusing to listen on {settings.host}: an archive reachable from the "
                "network needs " + " and ".join(missing) + ". Or listen on this machine "
                "only with --host 127.0.0.1. See docs/authentication.md (secure by default)."
            )
    oidc = security.oidc
    if oidc.issuer:
        if not oidc.audience:
            raise InsecureConfigurationError(
                "security.oidc.issuer is set but security.oidc.audience is not: tokens "
                "issued for other applications would be accepted. Set it to the audience "
                "(client id or API identifier) the provider puts in 'aud'."
            )
        if not accepted_algorithms(oidc):
            raise InsecureConfigurationError(
                "security.oidc.algorithms names no asymmetric algorithm (RS256, PS256, "
                "ES256, ...); 'none' and HMAC algorithms are never accepted."
            )
        for name, url in (("issuer", oidc.issuer), ("jwks_url", oidc.jwks_url)):
            if url and not url_allowed(url):
                raise InsecureConfigurationError(
                    f"security.oidc.{name} must be an https URL (plain http only on "
                    f"loopback): {url}"
                )


def bootstrap_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def prepare_bootstrap(settings: Settings, engine: Engine) -> str | None:
    """A new one-time setup secret when authentication is on and no enabled
    administrator exists (its hash replaces any earlier one); None otherwise."""
    repository = UserRepository(engine)
    if not settings.security.require_auth or repository.has_active_admin():
        repository.drop_secret_hash(BOOTSTRAP_STATE)
        return None
    secret = secrets.token_urlsafe(24)
    repository.put_secret_hash(BOOTSTRAP_STATE, bootstrap_hash(secret))
    return secret


def consume_bootstrap_secret(repository: UserRepository, secret: str) -> bool:
    """True exactly once for the current secret (atomic across server processes)."""
    if not secret:
        return False
    return repository.consume_secret_hash(BOOTSTRAP_STATE, bootstrap_hash(secret))


def bootstrap_banner(secret: str) -> str:
    """What the server log shows at start when the first administrator is missing (short
    lines, the secret alone on one, so that no log formatter breaks it)."""
    return (
        "no administrator exists yet\n"
        "one-time setup secret (shown once):\n"
        f"  {secret}\n"
        f"create the first administrator with POST {SETUP_PATH}\n"
        '{"secret": ..., "username": ..., "password": ...}\n'
        "or with: openvna user add NAME --role admin\n"
        "(see docs/authentication.md)"
    )
