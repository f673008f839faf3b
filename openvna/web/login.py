"""The login page at ``/login``: a plain server-rendered HTML form, no script, no
external assets.

The form posts (``application/x-www-form-urlencoded``) to ``/api/auth/login``, which
sets the session cookie and redirects to ``?next=``. When the user's role requires a
second factor that was never enrolled, the answer is the enrolment page: the new
secret to type into an authenticator app and a field for the first code, posted to
``/api/auth/mfa/confirm``. Pages are sent with a Content-Security-Policy that allows
no script at all and forbids framing (no clickjacking of the login form).
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from openvna.security.principal import Principal, PrincipalKind

LOGIN_PATH = "/login"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_STYLE = """
body { font-family: system-ui, sans-serif; background: #10151c; color: #e6e9ee;
  display: flex; justify-content: center; padding-top: 10vh; margin: 0; }
main { background: #1b232e; padding: 2rem 2.5rem; border-radius: 8px; width: 22rem; }
h1 { font-size: 1.3rem; margin: 0 0 1.2rem; }
label { display: block; margin: 0.8rem 0 0.3rem; font-size: 0.9rem; }
input { width: 100%; box-sizing: border-box; padding: 0.5rem; border-radius: 4px;
  border: 1px solid #3b4758; background: #0f141a; color: inherit; font-size: 1rem; }
button { margin-top: 1.4rem; width: 100%; padding: 0.6rem; border: 0; border-radius: 4px;
  background: #3c7ee6; color: white; font-size: 1rem; cursor: pointer; }
.error { background: #5c1f24; padding: 0.6rem; border-radius: 4px; margin-bottom: 0.8rem; }
.hint { font-size: 0.8rem; color: #9aa6b5; }
code { word-break: break-all; background: #0f141a; padding: 0.2rem; display: block; }
"""


def safe_next(value: str | None) -> str:
    """Where to go after login: a path on this site, never another site (an open
    redirect would let a phishing link pass through our login page)."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def login_url(next_url: str) -> str:
    return f"{LOGIN_PATH}?next={quote(safe_next(next_url), safe='')}"


def _page(title: str, body: str, status: int) -> HTMLResponse:
    html = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · OpenVNA</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>\n"
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _error(message: str) -> str:
    return f"<p class=error role=alert>{escape(message)}</p>" if message else ""


def login_page(
    next_url: str = "/", *, error: str = "", username: str = "", status: int = 200
) -> HTMLResponse:
    """The login form (again with ``error`` after a failed attempt)."""
    body = (
        f"{_error(error)}"
        '<form method=post action="/api/auth/login">'
        f'<input type=hidden name=next value="{escape(safe_next(next_url))}">'
        "<label for=username>User name</label>"
        f"<input id=username name=username autocomplete=username required autofocus "
        f'value="{escape(username)}">'
        "<label for=password>Password</label>"
        "<input id=password name=password type=password autocomplete=current-password "
        "required>"
        "<label for=totp>One-time code</label>"
        "<input id=totp name=totp inputmode=numeric autocomplete=one-time-code "
        'pattern="[0-9 ]{6,7}" maxlength=7>'
        "<p class=hint>The six digits of your authenticator app, if your account uses "
        "two-factor authentication.</p>"
        "<button type=submit>Log in</button></form>"
    )
    return _page("Log in to OpenVNA", body, status)


def enrolment_page(
    next_url: str, secret: str, uri: str, *, error: str = "", status: int = 403
) -> HTMLResponse:
    """Two-factor enrolment: the secret to add to an authenticator app, then a code."""
    body = (
        f"{_error(error)}"
        "<p>Your role requires two-factor authentication. Add this account to an "
        "authenticator app (FreeOTP, Google Authenticator, 1Password...), then enter "
        "the code it shows.</p>"
        f"<label>Secret key</label><code>{escape(secret)}</code>"
        f"<label>Or this otpauth link</label><code>{escape(uri)}</code>"
        '<form method=post action="/api/auth/mfa/confirm">'
        f'<input type=hidden name=next value="{escape(safe_next(next_url))}">'
        "<label for=totp>One-time code</label>"
        "<input id=totp name=totp inputmode=numeric autocomplete=one-time-code required "
        'pattern="[0-9 ]{6,7}" maxlength=7 autofocus>'
        "<button type=submit>Confirm</button></form>"
    )
    return _page("Set up two-factor authentication", body, status)


def _logged_in(principal: Principal | None) -> bool:
    return (
        principal is not None
        and principal.kind is PrincipalKind.USER
        and "mfa_pending" not in principal.extra
    )


def routes() -> list[BaseRoute]:
    async def page(request: Request) -> Response:
        next_url = safe_next(request.query_params.get("next"))
        if _logged_in(getattr(request.state, "principal", None)):
            return RedirectResponse(next_url, status_code=303)
        return login_page(next_url)

    return [Route(LOGIN_PATH, page, methods=["GET", "HEAD"])]
