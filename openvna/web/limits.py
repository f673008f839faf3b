"""Hard limits on HTTP requests, applied before anything else looks at them.

The limits live here (issue #5 item 7), in a pure ASGI middleware that runs outside the
security middleware, so that a flood of requests is turned away before it costs a
password hash, a token check or an audit record:

* **Requests per client address** (``security.limits.requests_per_minute``): a token
  bucket per address holding at most that many requests, refilled at that rate; a
  request that finds it empty gets **429 Too Many Requests** with ``Retry-After``
  (RFC 6585 4, RFC 9110 10.2.3). The buckets are shared by every server process
  (:mod:`openvna.process_shared`), so the limit holds however many processes serve.
* **No NUL in the URL**: a ``%00`` in the path or query is answered **400** (module
  function :func:`has_nul`).
* **Request body size** (``security.limits.json_body_bytes``) for every request except
  STOW-RS, whose bodies are instances and are capped by ``http.max_request_bytes`` in
  the STOW-RS handler itself: a larger ``Content-Length`` is answered **413 Content Too
  Large** before the body is read, and a body without one (chunked) is cut off with 413
  as soon as it passes the limit, so no handler ever buffers more.
"""

from __future__ import annotations

import logging
import math
import re
import time

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openvna.config import Settings
from openvna.errors import RequestTooLargeError
from openvna.process_shared import SharedTable, table_key
from openvna.security.audit import http as audit_http
from openvna.security.context import SecurityContext
from openvna.security.errors import AccessDenied
from openvna.web.dicomweb.context import DICOMWEB_ROOT

logger = logging.getLogger(__name__)

_TOKENS, _STAMP, _REFUSING = range(3)
_BUCKETS = SharedTable(slots=16384, fields=3)
"""Token buckets of every client address, made at import: before ``openvna serve``
forks its workers, so that they all share it."""

_STOW_PATH = re.compile(re.escape(DICOMWEB_ROOT) + r"/studies(/[^/]+)?/?")
"""``POST /studies`` and ``POST /studies/{study}`` (PS3.18 10.5): bodies of instances."""


def is_stow_request(method: str, path: str) -> bool:
    """Whether the request is a STOW-RS store, whose body ``http.max_request_bytes`` caps."""
    return method == "POST" and _STOW_PATH.fullmatch(path) is not None


def has_nul(scope: Scope) -> bool:
    """Whether the URL's path or query carries a NUL character (``%00``).

    No DICOM value holds one (UIDs pad with it, PS3.5 9.1), and PostgreSQL text cannot
    hold one: a NUL would turn a query for nothing into a database error (a 500)
    wherever a handler passes a path or query value to the index.
    """
    if "\x00" in scope["path"]:
        return True
    query: bytes = scope.get("query_string", b"")
    return b"\x00" in query or b"%00" in query


class RateLimiter:
    """Token buckets per client address: ``per_minute`` requests at most in any burst,
    refilled at ``per_minute`` per minute (RFC 6585 4)."""

    def __init__(self, per_minute: int, namespace: str, table: SharedTable = _BUCKETS) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._namespace = f"{namespace}|{per_minute}"
        self._table = table

    def take(self, address: str, now: float | None = None) -> tuple[bool, int, bool]:
        """Take one request from ``address``'s bucket.

        Returns (allowed, seconds after which to retry, first refusal of a burst). A
        saturated or unavailable table lets the request through: the limit protects the
        archive from one client, and must never lock out every client.
        """
        now = time.monotonic() if now is None else now
        table = self._table
        with table.locked() as held:
            if not held:
                logger.warning("rate limit table busy: request from %s let through", address)
                return True, 0, False
            slot = table.claim(
                table_key(f"{self._namespace}|{address}"),
                lambda slot: now - table.get(slot, _STAMP) > 60.0,
            )
            if slot is None:
                logger.warning("rate limit table full: request from %s let through", address)
                return True, 0, False
            stamp = table.get(slot, _STAMP)
            if stamp == 0.0:  # a new bucket starts full
                tokens = self.capacity
            else:
                tokens = min(self.capacity, table.get(slot, _TOKENS) + (now - stamp) * self.rate)
            table.set(slot, _STAMP, now)
            if tokens >= 1.0:
                table.set(slot, _TOKENS, tokens - 1.0)
                table.set(slot, _REFUSING, 0.0)
                return True, 0, False
            table.set(slot, _TOKENS, tokens)
            first = table.get(slot, _REFUSING) == 0.0
            table.set(slot, _REFUSING, 1.0)
            return False, max(1, math.ceil((1.0 - tokens) / self.rate)), first


class LimitsMiddleware:
    """Rate limit per client address, then the request body size limit (module doc)."""

    def __init__(self, app: ASGIApp, settings: Settings, security: SecurityContext) -> None:
        self.app = app
        limits = settings.security.limits
        self.body_limit = limits.json_body_bytes
        self.security = security
        self.limiter = RateLimiter(limits.requests_per_minute, str(settings.data_dir.resolve()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else ""
        allowed, retry_after, first = self.limiter.take(address)
        if not allowed:
            await self._too_many(scope, receive, send, address, retry_after, first)
            return
        if has_nul(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = JSONResponse(
                {"status": 400, "error": "a NUL character is not allowed in a request URL"},
                status_code=400,
            )
            await response(scope, receive, send)
            return
        method = scope.get("method", "GET")
        if scope["type"] != "http" or is_stow_request(method, scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.body_limit:
            response = JSONResponse(
                {"status": 413, "error": self._too_large_message(f"of {declared} bytes ")},
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, self._capped(receive), send)

    def _capped(self, receive: Receive) -> Receive:
        """``receive`` that fails with 413 once the body passes the limit (a chunked body
        declares no length); the handler's error answer then goes out as usual."""
        received = 0
        limit = self.body_limit

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLargeError(self._too_large_message(""))
            return message

        return capped_receive

    def _too_large_message(self, size: str) -> str:
        return (
            f"request body {size}exceeds the limit of {self.body_limit} bytes "
            "(security.limits.json_body_bytes; STOW-RS bodies: http.max_request_bytes)"
        )

    async def _too_many(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        address: str,
        retry_after: int,
        first: bool,
    ) -> None:
        reason = (
            f"more than {int(self.limiter.capacity)} requests per minute from {address} "
            "(security.limits.requests_per_minute)"
        )
        if first:  # one security alert per burst, not one per refused request
            logger.warning("rate limit: %s", reason)
            audit_http.record_refusal(
                self.security.audit,
                None,
                scope.get("method", "GET"),
                scope["path"],
                address,
                AccessDenied(429, reason),
            )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})  # RFC 6455 7.4.1: try again
            return
        response = JSONResponse(
            {"status": 429, "error": reason},
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)


__all__ = ["LimitsMiddleware", "RateLimiter", "has_nul", "is_stow_request"]
