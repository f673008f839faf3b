"""ASGI middleware that every HTTP request passes: authenticate, authorise, audit.

It sits outside every route (DICOMweb, WADO-URI, REST, viewer) so that nothing can be
reached around it. With authentication off (loopback only) it adds the local principal
and the audit record and nothing else, without leaving the event loop.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openvna.security.audit import http as audit_http
from openvna.security.authn import SESSION_COOKIE, Credentials
from openvna.security.context import SecurityContext
from openvna.security.errors import AccessDenied
from openvna.security.principal import Principal, PrincipalKind

PRINCIPAL_KEY = "principal"
"""Key of the principal in ``scope["state"]`` (``request.state.principal``)."""


def credentials_from(scope: Scope) -> Credentials:
    headers = Headers(scope=scope)
    session = None
    cookie_header = headers.get("cookie")
    if cookie_header:
        cookies = SimpleCookie()
        try:
            cookies.load(cookie_header)
        except Exception:  # malformed Cookie header: as if none was sent
            cookies = SimpleCookie()
        morsel = cookies.get(SESSION_COOKIE)
        session = morsel.value if morsel is not None else None
    client = scope.get("client")
    return Credentials(
        authorization=headers.get("authorization"),
        api_key=headers.get("x-api-key"),
        session=session,
        address=client[0] if client else "",
    )


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, security: SecurityContext) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path = scope["path"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        credentials = credentials_from(scope)
        security = self.security
        principal: Principal | None = None
        try:
            if not security.auth_required:
                principal = security.authenticator.authenticate(credentials)
            else:
                principal = await run_in_threadpool(
                    security.authenticator.authenticate, credentials
                )
            if principal is None or principal.kind is not PrincipalKind.LOCAL:
                await run_in_threadpool(
                    security.authorizer.check_http, principal, method, path, query
                )
        except AccessDenied as denied:
            await self._refuse(scope, receive, send, denied, principal)
            return
        state = scope.setdefault("state", {})
        state[PRINCIPAL_KEY] = principal
        status = {"code": 0}

        async def send_capturing_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_capturing_status)
        finally:
            self._audit(principal, method, path, query, status["code"], credentials, state)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        denied: AccessDenied,
        principal: Principal | None,
    ) -> None:
        headers = {}
        if denied.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="openvna"'
        client = scope.get("client")
        audit_http.record_refusal(
            self.security.audit,
            principal,
            scope.get("method", "GET"),
            scope["path"],
            client[0] if client else "",
            denied,
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse(
            {"error": denied.reason, "status": denied.status},
            status_code=denied.status,
            headers=headers,
        )
        await response(scope, receive, send)

    def _audit(
        self,
        principal: Principal | None,
        method: str,
        path: str,
        query: dict[str, str],
        status: int,
        credentials: Credentials,
        state: dict[str, object],
    ) -> None:
        """Hand the request to the audit classifier (it never blocks on I/O)."""
        audit_http.record_request(
            self.security.audit,
            principal,
            method,
            path,
            query,
            status,
            credentials.address,
            state,
        )
