"""Retrieve Capabilities (PS3.18 10.8): ``OPTIONS /dicom-web`` describes the service.

The description is generated from the routes that are actually mounted, so it cannot
drift from what the server does: a WADL document (``application/vnd.sun.wadl+xml``, the
standard's default) or the same content as JSON when the client asks for
``application/json``. Each resource lists its methods and the media types it answers.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from openvna import __version__
from openvna.web.dicomweb.context import DicomWebContext
from openvna.web.dicomweb.media import negotiate, parse_accept

WADL = "application/vnd.sun.wadl+xml"
_MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


def _media_types(path: str, method: str) -> list[str]:
    """The representations one resource answers (what ``Accept`` may ask for)."""
    if method == "POST":
        return ["application/dicom+json"]
    if path.endswith("/metadata"):
        return ["application/dicom+json", "application/json"]
    if "/bulkdata/" in path:
        return ['multipart/related; type="application/octet-stream"', "application/octet-stream"]
    if path.endswith("/rendered") or path.endswith("/thumbnail"):
        return ["image/jpeg", "image/png"]
    if "/frames/" in path:
        return [
            'multipart/related; type="application/octet-stream"',
            'multipart/related; type="image/jp2"',
            'multipart/related; type="image/jls"',
            'multipart/related; type="image/dicom-rle"',
            'multipart/related; type="image/jpeg"',
        ]
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last in ("studies", "series", "instances"):
        return ["application/dicom+json", "application/json"]
    if path.endswith("/{instance}"):
        return [_MULTIPART_DICOM, "application/dicom"]
    return [_MULTIPART_DICOM]


def describe(routes: list[BaseRoute]) -> list[dict[str, Any]]:
    """One entry per path: its methods and their media types."""
    resources: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        entry = resources.setdefault(route.path, {"path": route.path, "methods": []})
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            entry["methods"].append(
                {"name": method, "mediaTypes": _media_types(route.path, method)}
            )
    return sorted(resources.values(), key=lambda entry: str(entry["path"]))


def _wadl(base: str, resources: list[dict[str, Any]]) -> str:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<application xmlns="http://wadl.dev.java.net/2009/02">',
        f"  <doc title={quoteattr('OpenVNA DICOMweb ' + __version__)}>"
        "DICOM PS3.18 services: QIDO-RS, WADO-RS, STOW-RS</doc>",
        f"  <resources base={quoteattr(base + '/')}>",
    ]
    for resource in resources:
        lines.append(f"    <resource path={quoteattr(resource['path'].lstrip('/'))}>")
        for method in resource["methods"]:
            lines.append(f'      <method name="{method["name"]}">')
            kind = "request" if method["name"] == "POST" else "response"
            lines.append(f"        <{kind}>")
            for media_type in method["mediaTypes"]:
                lines.append(f"          <representation mediaType={quoteattr(media_type)}/>")
            lines.append(f"        </{kind}>")
            lines.append("      </method>")
        lines.append("    </resource>")
    lines += ["  </resources>", "</application>", ""]
    return "\n".join(lines)


def endpoint(context: DicomWebContext, described: list[BaseRoute]) -> Any:
    """The OPTIONS endpoint describing ``described`` (the other DICOMweb routes)."""

    async def capabilities(request: Request) -> Response:
        chosen, _ = negotiate(
            parse_accept(request.headers.get("accept")), [WADL, "application/json"]
        )
        base = context.base_url(request)
        resources = describe(described)
        allow = {"Allow": "GET, POST, OPTIONS"}
        if chosen == "application/json":
            return JSONResponse(
                {
                    "service": "OpenVNA DICOMweb",
                    "version": __version__,
                    "base": base,
                    "resources": resources,
                },
                headers=allow,
            )
        return Response(_wadl(base, resources), media_type=WADL, headers=allow)

    return capabilities
