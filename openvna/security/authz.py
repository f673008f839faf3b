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
from openvna.index import access_repository
from openvna.security import routes
from openvna.security.errors import AuthenticationRequired, Forbidden, NotVisible
from openvna.security.permissions import ALL_PERMISSIONS, ROLE_PERMISSIONS, Permission
from openvna.security.principal import Principal, PrincipalKind

STUDY_PERMISSIONS = frozenset(
    {Permission.QUERY, Permission.READ, Permission.STORE, Permission.UPDATE, Permission.DELETE}
)
"""Permissions that act on studies: only roles holding one decide what a principal sees."""


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

    def require_admin(self, principal: Principal | None) -> None:
        """Every permission, unnarrowed: what routes unknown to the table need."""
        if principal is None:
            raise AuthenticationRequired()
        if not principal.permissions >= ALL_PERMISSIONS:
            raise Forbidden("administrators only")

    def study_access(self, principal: Principal) -> StudyAccess | None:
        """None: every study; otherwise the restriction the query engine applies.

        - The local principal (authentication off) and the archive itself see all.
        - A principal with its own institutions or issuers of patient ID (a user's
          ``institutions`` / ``issuers_of_patient_id``) sees studies matching those,
          whatever its roles: the more specific statement wins.
        - Otherwise each role that acts on studies contributes: its
          ``security.access_rules`` (institutions, issuers), nothing if it is one of
          ``security.grants_only_roles``, or everything if it has neither (then the
          principal is unrestricted). Roles that never act on studies (auditor) do not
          widen what a principal sees.

        Explicit grants and break-the-glass for the principal's subject always apply.
        """
        if principal.kind in (PrincipalKind.LOCAL, PrincipalKind.SYSTEM):
            return None
        if principal.institutions or principal.issuers_of_patient_id:
            return StudyAccess(
                principal.subject,
                tuple(dict.fromkeys(principal.institutions)),
                tuple(dict.fromkeys(principal.issuers_of_patient_id)),
            )
        security = self.settings.security
        institutions: list[str] = []
        issuers: list[str] = []
        for role in sorted(principal.roles):
            if not ROLE_PERMISSIONS.get(role, frozenset()) & STUDY_PERMISSIONS:
                continue
            rules = [rule for rule in security.access_rules if rule.role is role]
            if rules:
                for rule in rules:
                    institutions.extend(rule.institutions)
                    issuers.extend(rule.issuers_of_patient_id)
            elif role not in security.grants_only_roles:
                return None
        return StudyAccess(
            principal.subject, tuple(dict.fromkeys(institutions)), tuple(dict.fromkeys(issuers))
        )

    def can_see_study(self, principal: Principal, study_uid: str) -> bool:
        """Whether the study exists and is visible to the principal (unrestricted
        principals: True without asking the index)."""
        access = self.study_access(principal)
        if access is None:
            return True
        return access_repository.is_study_visible(self.engine, access, study_uid)

    def require_study(
        self,
        principal: Principal | None,
        permission: Permission | None,
        study_uid: str,
        *,
        allow_new: bool = False,
    ) -> None:
        """Raise unless the principal may do ``permission`` on this study (404 when the
        study is hidden from it, so existence does not leak).

        A restricted principal gets the same 404 for a study that does not exist, so
        the answer is the same whether a study is hidden or absent. ``allow_new``
        (storing) lets it name a study the archive does not hold yet.
        """
        if principal is None:
            raise AuthenticationRequired()
        if permission is not None:
            self.require(principal, permission)
        access = self.study_access(principal)
        if access is None:
            return
        if access_repository.is_study_visible(self.engine, access, study_uid):
            return
        if allow_new and not access_repository.study_exists(self.engine, study_uid):
            return
        raise NotVisible()

    def is_public(self, method: str, path: str) -> bool:
        """Paths served without authentication (health probe, login, viewer shell)."""
        return routes.is_public_path(path)

    def check_http(
        self, principal: Principal | None, method: str, path: str, query: dict[str, str]
    ) -> None:
        """Raise :class:`AccessDenied` unless the request may proceed.

        The route table (:mod:`openvna.security.routes`) names the permission; a study
        named by the request is checked with :meth:`require_study`; a route the table
        does not know needs an administrator.
        """
        if principal is not None and principal.kind is PrincipalKind.LOCAL:
            return
        if self.is_public(method, path):
            return
        if principal is None:
            raise AuthenticationRequired()
        needed = routes.requirement(method, path, query)
        if needed.admin:
            self.require_admin(principal)
            return
        if needed.permission is not None:
            self.require(principal, needed.permission)
        if needed.study_uid is not None:
            self.require_study(
                principal,
                needed.permission,
                needed.study_uid,
                allow_new=needed.permission is Permission.STORE,
            )
