"""The security layer of one process: authenticator, authoriser and audit trail."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from openvna.config import Settings
from openvna.security.audit import AuditTrail, NullAuditTrail
from openvna.security.audit.chain import ChainedAuditTrail
from openvna.security.authn import Authenticator
from openvna.security.authz import Authorizer


@dataclass
class SecurityContext:
    settings: Settings
    authenticator: Authenticator
    authorizer: Authorizer
    audit: AuditTrail

    @property
    def auth_required(self) -> bool:
        return self.settings.security.require_auth

    def close(self) -> None:
        self.audit.close()


def build_security(settings: Settings, engine: Engine) -> SecurityContext:
    """Everything the adapters of one process need to authenticate, authorise, audit."""
    audit: AuditTrail = (
        ChainedAuditTrail(settings, engine) if settings.security.audit.enabled else NullAuditTrail()
    )
    return SecurityContext(
        settings, Authenticator(settings, engine), Authorizer(settings, engine), audit
    )
