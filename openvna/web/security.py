"""ASGI middleware that every HTTP request passes: authenticate, authorise, audit.

It sits outside every route (DICOMweb, WADO-URI, REST, viewer) so that nothing can be
reached around it. With authentication off (loopback only) it adds the local principal
and the audit record and nothing else, without leaving the event loop.

With authentication on it also:

* refuses cross-site requests that ride on the session cookie (CSRF): an unsafe method
  (POST, PUT, PATCH, DELETE) authenticated by the cookie, or aimed at the login
  endpoints, must come with an ``Origin`` (or, lacking it, ``Referer``) of this site or
  with an ``X-Requested-With`` header, which no cross-site form can send. Requests
  authenticated by a header (bearer token, API key) carry no ambient authority and
  need neither;
* sends a browser that opens a viewer page without a session to ``/login?next=...``
  (unless the viewer logs in through the OIDC provider itself);
* tells the browser to forget a session cookie that no longer works.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import PurePosixPath
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openvna.security.audit import http as audit_http
from openvna.security.authn import SESSION_COOKIE, Credentials
from openvna.security.context import SecurityContext
from openvna.security.errors import AccessDenied, Forbidden
from openvna.security.principal import Principal, PrincipalKind
from openvna.security.sessions import clearing_cookie

PRINCIPAL_KEY = "principal"
"""Key of the principal in ``scope["state"]`` (``request.state.principal``)."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_ENDPOINTS = frozenset({"/api/auth/login", "/api/auth/setup", "/api/auth/logout"})
"""Unsafe endpoints reached without credentials whose requests are checked for CSRF too
(a forged login would sign the victim in as the attacker)."""
VIEWER_ROOT = "/viewer"
LOGIN_PAGE = "/login"


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
                if principal is None and self._viewer_page(scope, method, path):
                    await self._to_login(scope, receive, send)
                    return
                self._check_origin(scope, method, path, credentials)
            if principal is None or principal.kind is not PrincipalKind.LOCAL:
                await run_in_threadpool(
                    security.authorizer.check_http, principal, method, path, query
                )
        except AccessDenied as denied:
            await self._refuse(scope, receive, send, denied, principal, credentials)
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

    def _check_origin(self, scope: Scope, method: str, path: str, credentials: Credentials) -> None:
        """Raise 403 for an unsafe request that rides on the cookie from another site."""
        if method not in UNSAFE_METHODS:
            return
        if credentials.authorization is not None or credentials.api_key is not None:
            return
        if credentials.session is None and path not in LOGIN_ENDPOINTS:
            return
        if not same_origin(Headers(scope=scope), self._trusted_origins()):
            raise Forbidden(
                "cross-site request refused: send an Origin header of this site or X-Requested-With"
            )

    def _trusted_origins(self) -> frozenset[str]:
        """Origins besides the request's own host that may post with the cookie."""
        http = self.security.settings.http
        origins = {origin for origin in http.cors_origins if origin != "*"}
        if http.public_url:
            origins.add(http.public_url)
        return frozenset(filter(None, (_netloc(origin) for origin in origins)))

    def _viewer_page(self, scope: Scope, method: str, path: str) -> bool:
        """A browser navigating to a page of the viewer (not a script, style or image)."""
        if method not in ("GET", "HEAD"):
            return False
        if path != VIEWER_ROOT and not path.startswith(VIEWER_ROOT + "/"):
            return False
        oidc = self.security.settings.security.oidc
        if oidc.issuer and oidc.client_id:
            return False  # OHIF logs in through the identity provider itself
        suffix = PurePosixPath(path).suffix.lower()
        accept = Headers(scope=scope).get("accept", "")
        return suffix in ("", ".html") and (not accept or "text/html" in accept)

    async def _to_login(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = scope["path"]
        query_string = scope.get("query_string", b"").decode("latin-1")
        if query_string:
            target += "?" + query_string
        response = RedirectResponse(f"{LOGIN_PAGE}?next={quote(target, safe='')}", status_code=303)
        await response(scope, receive, send)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        denied: AccessDenied,
        principal: Principal | None,
        credentials: Credentials,
    ) -> None:
        headers = {}
        if denied.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="openvna"'
            if credentials.session is not None and principal is None:
                headers["Set-Cookie"] = clearing_cookie(self.security.settings)
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


def _netloc(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return parts.netloc.lower()


def same_origin(headers: Headers, trusted: frozenset[str] = frozenset()) -> bool:
    """Whether the request comes from a page of this site (or of ``trusted`` hosts):
    its ``Origin`` (else ``Referer``) names the host it was sent to, or it carries
    ``X-Requested-With`` (a header a cross-site form cannot add, and a script can only
    add after a CORS preflight the archive refuses)."""
    if headers.get("x-requested-with"):
        return True
    source = headers.get("origin") or headers.get("referer")
    if not source:
        return False
    netloc = _netloc(source)
    host = headers.get("host", "").lower()
    return bool(netloc) and (netloc == host or netloc in trusted)
