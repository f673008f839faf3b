"""Authentication: turns credentials into a :class:`Principal`.

Credentials accepted over HTTP: a session cookie (local users after password + TOTP),
``Authorization: Bearer <JWT>`` from the configured OIDC provider, ``Authorization:
Bearer <API key>`` or ``X-API-Key``. With ``security.require_auth`` off (possible only
on a loopback-only archive) every caller is the local principal.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from openvna.config import Settings
from openvna.security.principal import Principal, local_principal

SESSION_COOKIE = "openvna_session"


@dataclass(frozen=True)
class Credentials:
    """What a request carried, extracted by the adapter."""

    authorization: str | None = None  # the Authorization header, as sent
    api_key: str | None = None  # X-API-Key
    session: str | None = None  # session cookie value
    address: str = ""


class Authenticator:
    """Verifies credentials; one instance per process, shared by every adapter."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

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
        return None  # filled in by the authentication work
