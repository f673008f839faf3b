"""Authorisation: the one place that answers "may this principal do this to this".

Adapters call :meth:`Authorizer.check_http` (REST, DICOMweb, viewer), or
:meth:`require` / :meth:`require_study` / :meth:`study_access` (DIMSE, CLI, core).
Study-level rules (institution, issuer of patient ID, explicit grants, break-the-glass)
become a :class:`StudyAccess` that the query engine applies in SQL, so QIDO-RS and
C-FIND results, counts and paging never include what the principal may not see.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from openvna.config import Settings
from openvna.security.errors import AuthenticationRequired, Forbidden
from openvna.security.permissions import Permission
from openvna.security.principal import Principal, PrincipalKind


@dataclass(frozen=True)
class StudyAccess:
    """Which studies a restricted principal sees: any study matching one of these."""

    subject: str  # explicit grants and break-the-glass for this subject
    institutions: tuple[str, ...] = ()
    issuers_of_patient_id: tuple[str, ...] = ()


class Authorizer:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    def require(self, principal: Principal | None, permission: Permission) -> None:
        if principal is None:
            raise AuthenticationRequired()
        if not principal.can(permission):
            raise Forbidden(f"{permission.value} not allowed")

    def study_access(self, principal: Principal) -> StudyAccess | None:
        """None: every study; otherwise the restriction the query engine applies."""
        return None  # filled in by the authorisation work

    def require_study(
        self, principal: Principal | None, permission: Permission, study_uid: str
    ) -> None:
        """Raise unless the principal may do ``permission`` on this study (404 when the
        study is hidden from it, so existence does not leak)."""
        self.require(principal, permission)

    def is_public(self, method: str, path: str) -> bool:
        """Paths served without authentication (health probe, login, viewer shell)."""
        return path in ("/api/health",)

    def check_http(
        self, principal: Principal | None, method: str, path: str, query: dict[str, str]
    ) -> None:
        """Raise :class:`AccessDenied` unless the request may proceed."""
        if principal is not None and principal.kind is PrincipalKind.LOCAL:
            return
        if self.is_public(method, path):
            return
        if principal is None:
            raise AuthenticationRequired()
        # the route table is filled in by the authorisation work
