"""OpenAPI description of the REST endpoints under ``/api`` (not DICOMweb).

DICOMweb is described by PS3.18 and by the capabilities document at
``OPTIONS /dicom-web``; the archive's own REST endpoints are described here, generated
from the routes so that an endpoint cannot be added without appearing in it.
"""

from __future__ import annotations

import inspect
from typing import Any

from starlette.routing import BaseRoute, Route

from openvna import __version__


def openapi_document(routes: list[BaseRoute], prefix: str = "") -> dict[str, Any]:
    """OpenAPI 3.1 paths for ``routes``: each operation's summary is its docstring."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        doc = inspect.getdoc(route.endpoint) or ""
        summary, _, description = doc.partition("\n\n")
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            operation: dict[str, Any] = {
                "summary": summary.replace("\n", " "),
                "operationId": f"{method.lower()}_{route.name}",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
            if description:
                operation["description"] = description
            paths.setdefault(prefix + route.path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OpenVNA REST API",
            "version": __version__,
            "description": "Archive status and administration. DICOMweb (PS3.18) is served "
            "under /dicom-web; see OPTIONS /dicom-web for what it supports.",
        },
        "paths": paths,
    }
