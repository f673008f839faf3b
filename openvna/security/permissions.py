"""Permissions and the roles that hold them.

A permission names one kind of act on one kind of resource. Roles are the department's
words for people and services; the mapping below is the one place that says what each
may do. API keys may narrow a role further with scopes (a subset of these permissions).
"""

from __future__ import annotations

from enum import StrEnum

from openvna.config import Role


class Permission(StrEnum):
    QUERY = "study:query"  # QIDO-RS, C-FIND, study list
    READ = "study:read"  # WADO-RS/URI, metadata, frames, rendered, C-GET, C-MOVE
    STORE = "study:store"  # STOW-RS, C-STORE, import
    UPDATE = "study:update"  # corrections, merges
    DELETE = "study:delete"
    AI_RUN = "ai:run"  # request a model run, reject an AI result
    AI_ADMIN = "ai:admin"  # stop switch, cancel, purge
    WORKITEM_READ = "ups:read"
    WORKITEM_WRITE = "ups:write"
    AUDIT_READ = "audit:read"
    USER_ADMIN = "users:admin"  # users, API keys, grants
    SYSTEM_READ = "system:read"  # counts, version, health details
    BREAK_GLASS = "access:break-glass"


ALL_PERMISSIONS = frozenset(Permission)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: ALL_PERMISSIONS,
    Role.RADIOLOGIST: frozenset(
        {
            Permission.QUERY,
            Permission.READ,
            Permission.AI_RUN,
            Permission.WORKITEM_READ,
            Permission.WORKITEM_WRITE,
            Permission.SYSTEM_READ,
            Permission.BREAK_GLASS,
        }
    ),
    Role.TECHNOLOGIST: frozenset(
        {
            Permission.QUERY,
            Permission.READ,
            Permission.STORE,
            Permission.UPDATE,
            Permission.WORKITEM_READ,
            Permission.SYSTEM_READ,
        }
    ),
    Role.REFERRING_PHYSICIAN: frozenset(
        {Permission.QUERY, Permission.READ, Permission.SYSTEM_READ, Permission.BREAK_GLASS}
    ),
    Role.RESEARCHER: frozenset({Permission.QUERY, Permission.READ, Permission.SYSTEM_READ}),
    Role.AI_SERVICE: frozenset(
        {
            Permission.QUERY,
            Permission.READ,
            Permission.STORE,
            Permission.WORKITEM_READ,
            Permission.WORKITEM_WRITE,
            Permission.SYSTEM_READ,
        }
    ),
    Role.AUDITOR: frozenset({Permission.AUDIT_READ, Permission.SYSTEM_READ}),
}


def permissions_of(roles: frozenset[Role]) -> frozenset[Permission]:
    """Union of what each role may do."""
    granted: set[Permission] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())
    return frozenset(granted)


def parse_roles(text: str) -> frozenset[Role]:
    """Roles from a comma-separated list (as stored in the index); unknown names raise."""
    return frozenset(Role(part.strip()) for part in text.split(",") if part.strip())


def parse_permissions(text: str) -> frozenset[Permission]:
    return frozenset(Permission(part.strip()) for part in text.split(",") if part.strip())
