"""Starlette application of the HTTP adapter.

Thin by design (ARCHITECTURE.md): every endpoint asks the :class:`Archive` facade and
formats the answer; blocking index and file work runs in threads. It serves DICOMweb
under ``/dicom-web`` (PS3.18), WADO-URI at ``/wado``, the REST API under ``/api`` (with
its OpenAPI description at ``/api/openapi.json``) and the OHIF viewer at ``/viewer``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from openvna import __version__
from openvna.archive.service import Archive
from openvna.config import HttpSettings
from openvna.errors import BadRequestError, OpenVNAError, QueryError
from openvna.security.errors import AccessDenied
from openvna.web import access_api, ai_api, audit_api, auth_api, login, user_admin_api, viewer
from openvna.web.access import study_access
from openvna.web.api import openapi_document, study_list_query, study_summary
from openvna.web.dicomweb import capabilities, frames, qido, stow, ups, wado, wado_uri
from openvna.web.dicomweb.context import DICOMWEB_ROOT, DicomWebContext
from openvna.web.errors import (
    access_denied_handler,
    http_error_handler,
    openvna_error_handler,
    unexpected_error_handler,
)
from openvna.web.limits import LimitsMiddleware
from openvna.web.security import SecurityMiddleware


@dataclass(frozen=True)
class DicomEndpoint:
    """Where DICOM clients reach this archive (shown on the system page)."""

    ae_title: str
    host: str
    port: int


def create_app(
    archive: Archive, dicom: DicomEndpoint, http: HttpSettings | None = None
) -> Starlette:
    """The HTTP application over one archive."""
    http = http or archive.settings.http
    context = DicomWebContext(archive, http)

    async def system(request: Request) -> Response:
        """Archive identity, where DICOM and DICOMweb clients connect, and counts."""
        counts = await run_in_threadpool(archive.counts, study_access(request, archive))
        return JSONResponse(
            {
                "name": "OpenVNA",
                "version": __version__,
                "dicom": {"aeTitle": dicom.ae_title, "host": dicom.host, "port": dicom.port},
                "dicomweb": context.base_url(request),
                "viewer": context.viewer_url(request),
                "counts": counts,
            }
        )

    async def health(request: Request) -> Response:
        """Health probe: 200 when the index answers, 503 otherwise."""
        try:
            await run_in_threadpool(archive.check_index)
        except Exception as error:  # any index failure means "not healthy"
            return JSONResponse({"status": "unavailable", "reason": str(error)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def study_list(request: Request) -> Response:
        """Studies with links to open each in the viewer and to retrieve it over DICOMweb.

        Filters: PatientID, PatientName, StudyDate, AccessionNumber, ModalitiesInStudy
        (DICOM matching: wildcards, date ranges); paging with limit (default 100) and
        offset.
        """
        try:
            query = study_list_query(dict(request.query_params), http.qido_max_results)
        except QueryError as error:
            raise BadRequestError(str(error)) from error
        query = replace(query, access=study_access(request, archive))
        results = await run_in_threadpool(lambda: list(archive.search(query)))
        origin_url = context.viewer_url(request).removesuffix("/viewer")
        studies = []
        for result in results:
            summary = study_summary(result)
            uid = summary["studyInstanceUID"]
            summary["viewerUrl"] = viewer.study_viewer_url(origin_url, uid)
            summary["dicomwebUrl"] = context.study_url(request, uid)
            studies.append(summary)
        return JSONResponse(studies)

    async def home(request: Request) -> Response:
        return RedirectResponse("/viewer/" if viewer.installed(http) else "/api/system")

    dicomweb_routes: list[BaseRoute] = [
        *stow.routes(context),
        *qido.routes(context),
        *frames.routes(context),
        *wado.routes(context),
        *ups.routes(context),
    ]
    describe_dicomweb = capabilities.endpoint(context, dicomweb_routes)
    api_routes: list[BaseRoute] = [
        Route("/system", system, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/studies", study_list, methods=["GET"]),
        *ai_api.routes(archive),
        *access_api.routes(archive),
        *audit_api.routes(archive),
        *auth_api.routes(archive),
        *user_admin_api.routes(archive),
    ]

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(api_routes, prefix="/api"))

    middleware = []
    if http.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=http.cors_origins,
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Warning", "Content-Location", "Location"],
            )
        )
    return Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Mount("/api", routes=[*api_routes, Route("/openapi.json", openapi)]),
            Route(DICOMWEB_ROOT, describe_dicomweb, methods=["OPTIONS"]),
            Mount(
                DICOMWEB_ROOT,
                routes=[Route("/", describe_dicomweb, methods=["OPTIONS"]), *dicomweb_routes],
            ),
            *wado_uri.routes(context),
            *login.routes(),
            *viewer.routes(http, archive.settings.security.oidc),
        ],
        middleware=[
            *middleware,
            Middleware(LimitsMiddleware, settings=archive.settings, security=archive.security),
            Middleware(SecurityMiddleware, security=archive.security),
        ],
        exception_handlers={
            OpenVNAError: openvna_error_handler,
            AccessDenied: access_denied_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
