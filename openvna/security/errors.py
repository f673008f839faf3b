"""Errors of the security layer, mapped to HTTP statuses and DIMSE refusals by adapters."""

from __future__ import annotations


class AccessDenied(Exception):
    """Refused. ``status`` is the HTTP status to answer: 401 (who are you?), 403 (not
    allowed), 404 (a resource the principal may not know exists), 429 (slow down)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class AuthenticationRequired(AccessDenied):
    def __init__(self, reason: str = "authentication required") -> None:
        super().__init__(401, reason)


class Forbidden(AccessDenied):
    def __init__(self, reason: str = "not allowed") -> None:
        super().__init__(403, reason)


class NotVisible(AccessDenied):
    """The resource is hidden from this principal: answered like a missing one."""

    def __init__(self, reason: str = "not found") -> None:
        super().__init__(404, reason)
