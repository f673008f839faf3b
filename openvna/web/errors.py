"""One place where the HTTP adapter turns errors into responses (CONVENTIONS.md).

Every :class:`~openvna.errors.OpenVNAError` carries its HTTP status; the body is a small
JSON object with the message, so that a client (or a person with curl) sees why.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from openvna.errors import OpenVNAError
from openvna.security.errors import AccessDenied

logger = logging.getLogger(__name__)


def error_body(status: int, message: str) -> dict[str, object]:
    return {"status": status, "error": message}


async def openvna_error_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, OpenVNAError)
    status = error.http_status
    if status >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, error)
    return JSONResponse(error_body(status, str(error)), status_code=status)


async def http_error_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code in (204, 304):
        return Response(status_code=error.status_code, headers=error.headers)
    return JSONResponse(
        error_body(error.status_code, str(error.detail)),
        status_code=error.status_code,
        headers=error.headers,
    )


async def unexpected_error_handler(request: Request, error: Exception) -> Response:
    logger.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse(error_body(500, f"internal error: {error}"), status_code=500)


async def access_denied_handler(request: Request, error: Exception) -> Response:
    """A refusal raised inside a handler (most are raised before it, by the middleware)."""
    assert isinstance(error, AccessDenied)
    headers = {"WWW-Authenticate": 'Bearer realm="openvna"'} if error.status == 401 else None
    return JSONResponse(
        error_body(error.status, error.reason), status_code=error.status, headers=headers
    )
