"""Audit records of DIMSE services (filled in by the audit work).

Handlers call these after each operation; records are aggregated per association and
study and written when the association ends.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt

from openvna.archive.service import Archive


def on_store(
    event: evt.Event,
    archive: Archive,
    study_uid: str,
    patient_id: str,
    sop_class_uid: str,
    status: int,
) -> None:
    """A C-STORE was answered with ``status``."""


def on_find(
    event: evt.Event, archive: Archive, query_text: str, sop_class_uid: str, status: int
) -> None:
    """A C-FIND finished (``query_text``: the identifier as received, printable)."""


def on_retrieve(
    event: evt.Event,
    archive: Archive,
    kind: str,
    destination: str,
    instances: list[Any],
    status: int,
) -> None:
    """A C-GET (``kind`` 'get') or C-MOVE ('move') sent ``instances``."""


def on_refused(event: evt.Event, archive: Archive, reason: str) -> None:
    """An operation or association was refused by authorisation."""


def association_handlers(archive: Archive) -> list[tuple[Any, Any]]:
    """Notification handlers (EVT_RELEASED, EVT_ABORTED) that flush per-association
    records; bound by the DIMSE server."""
    return []
