"""Audit records of HTTP requests (REST, DICOMweb, WADO-URI), classified by route.

Called by :class:`openvna.web.security.SecurityMiddleware` after every response and for
every refused request (filled in by the audit work).
"""

from __future__ import annotations

from collections.abc import Mapping

from openvna.security.audit import AuditTrail
from openvna.security.errors import AccessDenied
from openvna.security.principal import Principal


def record_request(
    audit: AuditTrail,
    principal: Principal | None,
    method: str,
    path: str,
    query: Mapping[str, str],
    status: int,
    address: str,
    state: Mapping[str, object],
) -> None:
    """Record what the request did to PHI (query, access, import...), if anything.

    ``state`` is the request's ``scope["state"]``: handlers may leave the studies they
    touched under ``audit_studies`` (a list of StudyRef).
    """


def record_refusal(
    audit: AuditTrail,
    principal: Principal | None,
    method: str,
    path: str,
    address: str,
    denied: AccessDenied,
) -> None:
    """Record a refused request as a security alert."""
