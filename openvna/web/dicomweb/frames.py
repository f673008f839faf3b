"""Placeholder: filled in by the DICOMweb work of issue #3."""

from __future__ import annotations

from starlette.routing import BaseRoute

from openvna.web.dicomweb.context import DicomWebContext


def routes(context: DicomWebContext) -> list[BaseRoute]:
    return []
