"""Who is asking: the outcome of authentication, handed to authorisation and audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from openvna.config import Role
from openvna.security.permissions import Permission, permissions_of


class PrincipalKind(StrEnum):
    USER = "user"  # local user (password + TOTP) with a session
    API_KEY = "apikey"  # service with an API key
    OIDC = "oidc"  # bearer JWT from the external identity provider
    AE = "ae"  # DICOM application entity (calling AE title, TLS certificate)
    LOCAL = "local"  # authentication off on a loopback-only archive: full access
    SYSTEM = "system"  # the archive itself (AI worker, CLI on the data dir)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``subject`` is unique and stable (``user:alice``, ``apikey:k1a2``, ``oidc:<sub>``,
    ``ae:CT01``) and is what grants and audit records name. ``scopes``, when set, narrows
    the roles' permissions (API keys). ``institutions`` and ``issuers_of_patient_id``
    restrict which studies the principal sees, on top of role access rules.
    """

    subject: str
    kind: PrincipalKind
    roles: frozenset[Role]
    display_name: str = ""
    address: str = ""
    scopes: frozenset[Permission] | None = None
    institutions: tuple[str, ...] = ()
    issuers_of_patient_id: tuple[str, ...] = ()
    mfa: bool = False
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def permissions(self) -> frozenset[Permission]:
        granted = permissions_of(self.roles)
        if self.scopes is not None:
            granted &= self.scopes
        return granted

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def user_id(self) -> str:
        """The name audit messages carry (UserID of the active participant)."""
        return self.subject


def local_principal(address: str = "") -> Principal:
    """The caller when authentication is off (only possible on loopback)."""
    return Principal(
        subject="local",
        kind=PrincipalKind.LOCAL,
        roles=frozenset(Role),
        display_name="local user (authentication off)",
        address=address,
    )


def system_principal(name: str = "openvna") -> Principal:
    """The archive acting on its own behalf (AI results, routing, CLI)."""
    return Principal(
        subject=f"system:{name}",
        kind=PrincipalKind.SYSTEM,
        roles=frozenset(Role),
        display_name=name,
    )
