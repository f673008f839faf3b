"""Placeholder: filled in by the DICOMweb work of issue #3."""

from __future__ import annotations

from starlette.routing import BaseRoute

from openvna.config import HttpSettings


def routes(http: HttpSettings) -> list[BaseRoute]:
    return []


def installed(http: HttpSettings) -> bool:
    return False
