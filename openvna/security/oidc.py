"""Bearer JWTs from an external OAuth2 / OpenID Connect identity provider (IHE IUA
style: the archive is a resource server that validates access tokens itself).

Keys come from the provider's JSON Web Key Set: ``security.oidc.jwks_url``, or the
``jwks_uri`` of ``<issuer>/.well-known/openid-configuration`` (OpenID Connect
Discovery 1.0 section 4, whose ``issuer`` must equal ours). The set is cached for an
hour and fetched again when a token names a key id it does not hold (key rotation),
at most once every :data:`REFRESH_INTERVAL` seconds so that tokens with made-up key
ids cannot make the archive hammer the provider.

What a token must pass (RFC 8725, JWT best current practice):

* ``alg`` is one of ``security.oidc.algorithms`` *and* asymmetric. ``none`` and the
  HMAC family are refused before any key is looked at, which is what defeats the
  classic key-confusion attack (an HS256 token "signed" with the provider's public
  key as HMAC secret);
* the key's type fits the algorithm (RSA for RS/PS, EC for ES, OKP for EdDSA), and the
  key is the provider's own: ``jku``, ``x5u`` and embedded ``jwk`` headers are ignored;
* ``exp``, ``iss``, ``aud`` and ``sub`` are present; ``exp``/``nbf``/``iat`` are
  checked with ``security.oidc.leeway_seconds`` of clock skew.

Roles come from the claim ``security.oidc.roles_claim`` (a dotted path such as
Keycloak's ``realm_access.roles``); names that are not OpenVNA roles are ignored.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK
from jwt.exceptions import InvalidTokenError, PyJWKError

from openvna.config import OidcSettings, Role
from openvna.security.errors import AuthenticationRequired
from openvna.security.principal import Principal, PrincipalKind

logger = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_TYPE_OF_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
CACHE_SECONDS = 3600.0
REFRESH_INTERVAL = 30.0
"""Fewest seconds between two fetches of the key set (unknown key ids)."""
FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_TOKEN_BYTES = 16 * 1024
MFA_METHODS = frozenset({"mfa", "otp", "hwk", "swk", "sc", "fido"})
"""``amr`` values (RFC 8176) that mean a second factor was used."""

Fetch = Callable[[str], Any]


def accepted_algorithms(settings: OidcSettings) -> frozenset[str]:
    """The configured algorithms that are asymmetric (``none``/HMAC never are)."""
    return frozenset(settings.algorithms) & ASYMMETRIC_ALGORITHMS


def url_allowed(url: str) -> bool:
    """HTTPS, or plain HTTP to a loopback address (a provider on the same host)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def fetch_json(url: str) -> Any:
    """GET a JSON document from the identity provider (bounded size and time)."""
    if not url_allowed(url):
        raise OSError(f"refusing to fetch {url}: identity provider URLs must be https")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise OSError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    return json.loads(body)


@dataclass(frozen=True)
class SigningKey:
    """One public key of the provider and the algorithm it declares (``alg``), if any."""

    jwk: PyJWK
    algorithm: str | None


class JwksCache:
    """The provider's signing keys by key id, fetched on demand and shared by threads."""

    def __init__(
        self, settings: OidcSettings, clock: Callable[[], float], fetch: Fetch = fetch_json
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._fetch = fetch
        self._lock = threading.Lock()
        self._keys: dict[str | None, SigningKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._jwks_url: str | None = settings.jwks_url
        self.fetches = 0
        """How many times the key set was fetched (tests and diagnostics)."""

    def key(self, kid: str | None) -> SigningKey | None:
        """The key named ``kid`` (None: the only key of the set), or None."""
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= CACHE_SECONDS:
                self._refresh(now)
            found = self._lookup(kid)
            if found is None:
                self._refresh(now)
                found = self._lookup(kid)
            return found

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        if self._last_attempt is not None and now - self._last_attempt < REFRESH_INTERVAL:
            return
        self._last_attempt = now
        try:
            url = self._jwks_url or self._discover()
            document = self._fetch(url)
            self.fetches += 1
        except (OSError, ValueError) as error:
            logger.warning("cannot fetch the identity provider's keys: %s", error)
            return
        self._keys = _signing_keys(document)
        self._fetched_at = now

    def _discover(self) -> str:
        issuer = self.settings.issuer or ""
        document = self._fetch(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            raise ValueError("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not url_allowed(jwks_uri):
            raise ValueError("the discovery document has no usable jwks_uri")
        self._jwks_url = jwks_uri
        return jwks_uri


def _signing_keys(document: Any) -> dict[str | None, SigningKey]:
    """Public signing keys of a JWK Set; symmetric, encryption and broken keys left out."""
    keys: dict[str | None, SigningKey] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig" or "d" in entry:  # never a private key
            continue
        try:
            declared = entry.get("alg")
            keys[entry.get("kid")] = SigningKey(
                PyJWK(entry), declared if isinstance(declared, str) else None
            )
        except (PyJWKError, ValueError, TypeError, KeyError) as error:
            logger.warning("ignoring an unusable key in the JWKS: %s", error)
    return keys


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``realm_access.roles``), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def roles_from(value: Any) -> frozenset[Role]:
    """OpenVNA roles named in a claim value (list, or space/comma separated string)."""
    if isinstance(value, str):
        names = value.replace(",", " ").split()
    elif isinstance(value, list):
        names = [item for item in value if isinstance(item, str)]
    else:
        return frozenset()
    known = {role.value: role for role in Role}
    return frozenset(known[name.lower()] for name in names if name.lower() in known)


class OidcVerifier:
    """Validates bearer JWTs of the configured provider and makes principals of them."""

    def __init__(
        self,
        settings: OidcSettings,
        clock: Callable[[], float] = time.time,
        fetch: Fetch = fetch_json,
    ) -> None:
        self.settings = settings
        self.algorithms = accepted_algorithms(settings)
        self.jwks = JwksCache(settings, clock, fetch)
        self._clock = clock

    def verify(self, token: str, address: str = "") -> Principal:
        """The principal of a valid token; :class:`AuthenticationRequired` otherwise."""
        claims = self.claims(token)
        subject = claims["sub"]
        username = claims.get(self.settings.username_claim)
        amr = claims.get("amr")
        return Principal(
            subject=f"oidc:{subject}",
            kind=PrincipalKind.OIDC,
            roles=roles_from(claim_at(claims, self.settings.roles_claim)),
            display_name=str(username) if username else str(subject),
            address=address,
            mfa=isinstance(amr, list) and bool(MFA_METHODS.intersection(map(str, amr))),
        )

    def claims(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationRequired("bearer token too large")
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError as error:
            raise AuthenticationRequired("malformed bearer token") from error
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise AuthenticationRequired(f"token algorithm {algorithm!r} not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationRequired("malformed key id")
        key = self.jwks.key(kid)
        if key is None:
            raise AuthenticationRequired("token signed with an unknown key")
        if key.jwk.key_type != _KEY_TYPE_OF_FAMILY.get(algorithm[:2]):
            raise AuthenticationRequired("token algorithm does not fit the key")
        if key.algorithm is not None and key.algorithm != algorithm:
            raise AuthenticationRequired("token algorithm is not the key's")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
            )
        except InvalidTokenError as error:
            raise AuthenticationRequired(f"invalid bearer token: {error}") from error
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthenticationRequired("token without a subject")
        return claims
