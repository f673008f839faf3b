"""Starlette application of the HTTP adapter.

Thin by design (ARCHITECTURE.md): every endpoint asks the :class:`Archive` facade and
formats the answer; blocking index calls run in Starlette's thread pool. For now it
answers what an operator or a load balancer needs to see that the archive is up and where
its DICOM side listens; DICOMweb (``/dicom-web``) and the viewer arrive with issue #3.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openvna import __version__
from openvna.archive.service import Archive


@dataclass(frozen=True)
class DicomEndpoint:
    """Where DICOM clients reach this archive (shown on the system page)."""

    ae_title: str
    host: str
    port: int


def create_app(archive: Archive, dicom: DicomEndpoint) -> Starlette:
    """The HTTP application over one archive."""

    async def system(request: Request) -> Response:
        counts = await run_in_threadpool(archive.counts)
        return JSONResponse(
            {
                "name": "OpenVNA",
                "version": __version__,
                "dicom": {"aeTitle": dicom.ae_title, "host": dicom.host, "port": dicom.port},
                "counts": counts,
            }
        )

    async def health(request: Request) -> Response:
        """200 when the index answers, 503 otherwise (for load balancers and probes)."""
        try:
            await run_in_threadpool(archive.check_index)
        except Exception as error:  # any index failure means "not healthy"
            return JSONResponse({"status": "unavailable", "reason": str(error)}, status_code=503)
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/api/system", system, methods=["GET"]),
            Route("/api/health", health, methods=["GET"]),
        ]
    )
