"""The OHIF viewer at ``/viewer``: a prebuilt OHIF release served on the archive's origin.

Serving the viewer from the same origin as DICOMweb means the browser needs no CORS
and the viewer needs no address of the archive: its configuration points at
``window.location.origin + "/dicom-web"``. ``make viewer`` fetches the release from npm
(``@ohif/app``, whose tarball carries the built ``dist``) into ``.viewer/ohif``;
``http.viewer_dir`` (``--viewer-dir``) names that folder. See docs/viewer.md.

The npm release is built with ``PUBLIC_URL`` "/", i.e. for the root of a web site,
and that base is baked in where ``window.PUBLIC_URL`` does not reach: above all the
webpack runtime of the app bundle and of every web-worker bundle
(``__webpack_require__.p = "/"``, the base of lazy chunks, workers and ``.wasm``
codecs), then the absolute ``href``/``src`` of ``index.html``, ``url(/...)`` in the
style sheets and the icons of ``manifest.json``. Serving chunks at the site root as
well would shadow other routes, so those literals (:func:`rebase`) are rewritten to
``/viewer/`` as the files are served, once per file, kept in memory; the release
stays as published. The release's own ``app-config.js`` (a public demo server) is never
served: :func:`app_config_js` generates ours.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from openvna.config import HttpSettings, OidcSettings
from openvna.web.dicomweb.context import DICOMWEB_ROOT
from openvna.web.dicomweb.wado_uri import WADO_PATH
from openvna.web.errors import error_body

VIEWER_ROOT = "/viewer"
"""Where the viewer is served; also OHIF's ``routerBasename``."""

_BASE = VIEWER_ROOT + "/"
_NOT_INSTALLED = (
    "the OHIF viewer is not installed: run `make viewer`, then start the archive with "
    "`openvna serve --viewer-dir .viewer/ohif` (or set OPENVNA_HTTP__VIEWER_DIR); "
    "see docs/viewer.md"
)

IMMUTABLE = "public, max-age=31536000, immutable"
"""For files whose name carries a content hash: a new release has new names."""
REVALIDATE = "no-cache"
"""For everything else (index.html, app-config.js, unhashed names such as 1602.css):
the browser keeps a copy but asks (If-None-Match) before each use."""

_REBASE_TAG = "r1"
"""Part of the ETag of rebased files: change it with the rules of :func:`rebase`, so that
browsers revalidating an unchanged file still get the new rewriting."""

_HASHED_NAME = re.compile(r"^(?:[\w-]+\.bundle\.[0-9a-f]{8,}\.js|[0-9a-f]{12,}\.\w+)$")

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
"""Explicit, so that ``.wasm`` is ``application/wasm`` (streaming compilation refuses
anything else) whatever the host's mimetypes database says."""

_COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".wasm", ".xml"}
_MIN_COMPRESS_BYTES = 1024
_MAX_PREPARED_BYTES = 32 * 1024**2
"""Larger files (the optional onnxruntime builds) stream from disk as they are."""
_CACHE_BUDGET_BYTES = 256 * 1024**2

_WEBPACK_PUBLIC_PATH = re.compile(rb'(__webpack_require__\.p\s*=\s*)(["\'])/\2')
_ROOT_STRING_LITERALS = re.compile(rb"""(["'])/(dicom-microscopy-viewer/|silent-refresh\.html)""")
_NOT_REBASED = rb"(?!/|" + re.escape(_BASE[1:].encode()) + rb")"
"""After a root "/": neither protocol-relative ("//host") nor already under /viewer/."""
_HTML_ROOT_URLS = re.compile(rb'\b(href|src|content)="/' + _NOT_REBASED)
_HTML_PUBLIC_URL = re.compile(rb'(window\.PUBLIC_URL\s*=\s*)(["\'])/\2')
_CSS_ROOT_URLS = re.compile(rb"""url\((["']?)/""" + _NOT_REBASED)
_MANIFEST_ROOT_URLS = re.compile(rb'("src"\s*:\s*")/' + _NOT_REBASED)


def installed(http: HttpSettings) -> bool:
    """Whether a built viewer is where ``http.viewer_dir`` says (its index.html exists).

    Checked on each request, so that ``make viewer`` while the archive runs is enough.
    """
    return http.viewer_dir is not None and (http.viewer_dir / "index.html").is_file()


def study_viewer_url(base_url: str, study_uid: str) -> str:
    """The link that opens one study in OHIF's basic viewer mode.

    ``base_url`` is where the archive is reached (``http://host:8042``); OHIF's mode
    route ``viewer`` under our ``routerBasename`` takes the study in the query string.
    """
    return (
        f"{base_url.rstrip('/')}{VIEWER_ROOT}/viewer?StudyInstanceUIDs={quote(study_uid, safe='.')}"
    )


def oidc_config(oidc: OidcSettings | None) -> list[dict[str, object]] | None:
    """OHIF's ``oidc`` setting when the viewer logs in through the identity provider.

    Authorization code flow with PKCE (``response_type: code``, what OAuth 2.0 for
    browser-based apps recommends; no client secret in the page). OHIF then sends the
    access token as ``Authorization: Bearer`` to DICOMweb, which validates it like any
    other bearer JWT. ``redirect_uri`` is relative to OHIF's ``routerBasename``
    (``/viewer/callback``): register that URL at the provider. Without an issuer and a
    client id: None, and the browser's session cookie (``/login``) carries the user.
    """
    if oidc is None or not oidc.issuer or not oidc.client_id:
        return None
    return [
        {
            "authority": oidc.issuer,
            "client_id": oidc.client_id,
            "redirect_uri": "/callback",
            "response_type": "code",
            "scope": "openid profile email",
            "post_logout_redirect_uri": "/",
            "automaticSilentRenew": True,
            "revokeAccessTokenOnSignout": True,
        }
    ]


def app_config_js(oidc: OidcSettings | None = None) -> str:
    """OHIF's ``window.config`` for this archive: one DICOMweb source, this origin.

    ``window.location.origin`` rather than ``http.public_url``: the page itself was
    loaded from the archive, so its origin is the one address that certainly works
    for this browser (and needs no CORS). No telemetry, no public demo server, no
    URL-driven configuration (``dangerouslyUseDynamicConfig`` stays off). With an OIDC
    provider and client id configured, OHIF's ``oidc`` login (:func:`oidc_config`).
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "openvna",
        "configuration": {
            "friendlyName": "OpenVNA",
            "name": "openvna",
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "dicomUploadEnabled": False,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "name": "openvna",
        "routerBasename": VIEWER_ROOT,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 10, "prefetch": 25},
        "defaultDataSourceName": "openvna",
        "dataSources": [source],
    }
    login = oidc_config(oidc)
    if login is not None:
        config["oidc"] = login
    roots = (
        f"  source.qidoRoot = archive + {json.dumps(DICOMWEB_ROOT)};\n"
        f"  source.wadoRoot = archive + {json.dumps(DICOMWEB_ROOT)};\n"
        f"  source.wadoUriRoot = archive + {json.dumps(WADO_PATH)};\n"
    )
    return (
        "/* OHIF configuration generated by OpenVNA (openvna/web/viewer.py). */\n"
        "window.config = (function () {\n"
        "  var archive = window.location.origin;\n"
        f"  var config = {json.dumps(config, indent=2)};\n"
        "  var source = config.dataSources[0].configuration;\n"
        f"{roots}"
        "  return config;\n"
        "})();\n"
    )


def rebase(relative: PurePosixPath, body: bytes) -> bytes:
    """``body`` of the dist file at ``relative`` with its root-relative URLs under /viewer.

    Only the literals the build baked in for PUBLIC_URL "/" are touched (module
    docstring); URLs the code builds from ``window.PUBLIC_URL`` already follow it.
    """
    base = _BASE.encode()
    suffix = relative.suffix
    if relative.name == "index.html":
        body = _HTML_PUBLIC_URL.sub(lambda m: m[1] + m[2] + base + m[2], body)
        return _HTML_ROOT_URLS.sub(lambda m: m[1] + b'="' + base, body)
    if suffix in (".js", ".mjs"):
        body = _WEBPACK_PUBLIC_PATH.sub(lambda m: m[1] + m[2] + base + m[2], body)
        return _ROOT_STRING_LITERALS.sub(lambda m: m[1] + base + m[2], body)
    if suffix == ".css":
        return _CSS_ROOT_URLS.sub(lambda m: b"url(" + m[1] + base, body)
    if relative.name == "manifest.json":
        return _MANIFEST_ROOT_URLS.sub(lambda m: m[1] + base, body)
    return body


def _needs_rebase(relative: PurePosixPath) -> bool:
    return relative.suffix in (".html", ".js", ".mjs", ".css") or relative.name == "manifest.json"


@dataclass(frozen=True)
class _Prepared:
    """A dist file as served: rebased, and gzip-compressed when that pays."""

    body: bytes
    gzipped: bytes | None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


class _PreparedFiles:
    """Rebased/compressed files in memory, least recently used out past a byte budget.

    Keyed by path, size and mtime, so that a new ``make viewer`` is picked up without
    a restart. Preparing the 17 MB app bundle takes about a second, once.
    """

    def __init__(self, budget: int = _CACHE_BUDGET_BYTES) -> None:
        self._budget = budget
        self._used = 0
        self._entries: OrderedDict[tuple[str, int, int], _Prepared] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, relative: PurePosixPath, stat: os.stat_result) -> _Prepared:
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        body = path.read_bytes()
        if _needs_rebase(relative):
            body = rebase(relative, body)
        compress = relative.suffix in _COMPRESSIBLE and len(body) >= _MIN_COMPRESS_BYTES
        prepared = _Prepared(body, gzip.compress(body, compresslevel=6) if compress else None)
        with self._lock:
            if key not in self._entries and prepared.size <= self._budget:
                self._entries[key] = prepared
                self._used += prepared.size
                while self._used > self._budget:
                    _, evicted = self._entries.popitem(last=False)
                    self._used -= evicted.size
        return prepared


@dataclass(frozen=True)
class _Found:
    path: Path
    relative: PurePosixPath
    stat: os.stat_result


def _find(root: Path, requested: str) -> _Found | None:
    """The dist file for ``requested`` (a path under /viewer/), never outside ``root``."""
    root = root.resolve()
    relative = PurePosixPath(requested or "index.html")
    if relative.is_absolute() or ".." in relative.parts:
        return None
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return _Found(path, PurePosixPath(path.relative_to(root).as_posix()), path.stat())


def _accepts_gzip(request: Request) -> bool:
    for coding in request.headers.get("accept-encoding", "").split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            quality = params.strip().removeprefix("q=").strip()
            return quality not in ("0", "0.0", "0.00", "0.000")
    return False


def _not_modified(request: Request, etag: str) -> bool:
    tags = [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]
    return etag in tags or "*" in tags


def routes(http: HttpSettings, oidc: OidcSettings | None = None) -> list[BaseRoute]:
    """``/viewer`` (redirect), ``/viewer/app-config.js`` and the dist with SPA fallback.

    A path that is no file of the dist and does not look like one (no known file
    suffix) is one of OHIF's client routes (``/viewer/viewer?StudyInstanceUIDs=...``)
    and gets index.html; a missing ``.js`` or ``.wasm`` gets 404, so that a broken
    install fails loudly instead of feeding HTML to the script loader.
    """
    prepared_files = _PreparedFiles()

    def not_installed() -> Response:
        return JSONResponse(error_body(404, _NOT_INSTALLED), status_code=404)

    async def viewer_root(request: Request) -> Response:
        if not installed(http):
            return not_installed()
        query = request.url.query
        return RedirectResponse(_BASE + (f"?{query}" if query else ""), status_code=308)

    async def app_config(request: Request) -> Response:
        if not installed(http):
            return not_installed()
        return Response(
            app_config_js(oidc),
            media_type=_MEDIA_TYPES[".js"],
            headers={"Cache-Control": REVALIDATE},
        )

    async def viewer_file(request: Request) -> Response:
        root = http.viewer_dir
        if root is None or not installed(http):
            return not_installed()
        requested = request.path_params["path"]
        found = await run_in_threadpool(_find, root, requested)
        if found is None:
            if PurePosixPath(requested).suffix.lower() in _MEDIA_TYPES:
                message = f"{_BASE}{requested} is not part of the installed viewer"
                return JSONResponse(error_body(404, message), status_code=404)
            found = await run_in_threadpool(_find, root, "index.html")
            if found is None:
                return not_installed()
        return await serve(request, found)

    async def serve(request: Request, found: _Found) -> Response:
        suffix = found.relative.suffix.lower()
        media_type = _MEDIA_TYPES.get(suffix, "application/octet-stream")
        hashed = found.relative.parent == PurePosixPath(".") and _HASHED_NAME.match(
            found.relative.name
        )
        headers = {
            "Cache-Control": IMMUTABLE if hashed else REVALIDATE,
            "X-Content-Type-Options": "nosniff",
        }
        etag = f'"{found.stat.st_mtime_ns:x}-{found.stat.st_size:x}"'
        prepare = found.stat.st_size <= _MAX_PREPARED_BYTES and (
            _needs_rebase(found.relative) or suffix in _COMPRESSIBLE
        )
        if not prepare:
            headers["ETag"] = etag
            if _not_modified(request, etag):
                return Response(status_code=304, headers=headers)
            return FileResponse(
                found.path, media_type=media_type, headers=headers, stat_result=found.stat
            )
        prepared = await run_in_threadpool(
            prepared_files.get, found.path, found.relative, found.stat
        )
        body = prepared.body
        if _needs_rebase(found.relative):
            etag = f'{etag[:-1]}-{_REBASE_TAG}"'
        if prepared.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(request):
                body = prepared.gzipped
                headers["Content-Encoding"] = "gzip"
                etag = etag[:-1] + '-gz"'
        headers["ETag"] = etag
        if _not_modified(request, etag):
            headers.pop("Content-Encoding", None)  # a 304 has no body to be encoded
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    return [
        Route(VIEWER_ROOT, viewer_root, methods=["GET", "HEAD"]),
        Route(f"{_BASE}app-config.js", app_config, methods=["GET", "HEAD"]),
        Route(_BASE + "{path:path}", viewer_file, methods=["GET", "HEAD"]),
    ]
