"""DIMSE service handlers: translate the event, call the archive, answer a status.

Each handler is a plain function bound to a pynetdicom event (CONVENTIONS.md). Status
values come from :mod:`openvna.errors` (one table); no business logic lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import build_context

from openvna.archive.ingest import ExpectedIdentity, Origin
from openvna.archive.service import Archive
from openvna.dimse.identifier import identifier_to_query, json_to_identifier, retrieve_keys
from openvna.dimse.peers import PeerRegistry
from openvna.dimse.scu import StoredInstanceRef, contexts_for
from openvna.errors import OpenVNAError
from openvna.index.search import RetrievableInstance

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
UNABLE_TO_PROCESS = 0xC000
VERIFICATION = "1.2.840.10008.1.1"


def status(code: int, comment: str = "") -> Dataset:
    """A status Dataset with an Error Comment (PS3.7 C: 64 characters at most)."""
    answer = Dataset()
    answer.Status = code
    if comment:
        answer.ErrorComment = comment[:64]
    return answer


def _remote(event: evt.Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), str(requestor.address)


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, archive: Archive) -> Dataset | int:
    """C-STORE SCP (PS3.4 B.2): the received file goes through the one ingest path."""
    calling_aet, address = _remote(event)
    request = cast(C_STORE, event.request)
    expected = ExpectedIdentity(
        sop_class_uid=str(request.AffectedSOPClassUID or ""),
        sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
    )
    try:
        with open(event.dataset_path, "rb") as received:
            result = archive.ingest_file(
                received,
                origin=Origin(protocol="dimse", calling_aet=calling_aet, remote_address=address),
                expected=expected,
            )
    except OpenVNAError as error:
        logger.warning(
            "C-STORE from %s rejected (0x%04X): %s", calling_aet, error.dicom_status, error
        )
        return status(error.dicom_status, str(error))
    except Exception as error:  # never acknowledge what was not stored
        logger.exception("C-STORE from %s failed", calling_aet)
        return status(UNABLE_TO_PROCESS, f"internal error: {type(error).__name__}")
    if result.warnings:
        return status(0xB000, "; ".join(result.warnings))
    return SUCCESS


def handle_find(event: evt.Event, archive: Archive, ae_title: str) -> Iterator[tuple[Any, Any]]:
    """C-FIND SCP (PS3.4 C.4.1) for the Patient Root and Study Root models."""
    sop_class = str(event.request.AffectedSOPClassUID)
    try:
        query = identifier_to_query(event.identifier, sop_class)
        results = archive.search(query)
        for result in results:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, json_to_identifier(result, query.level, ae_title)
    except OpenVNAError as error:
        yield status(error.dicom_status, str(error)), None
        return
    except Exception as error:
        logger.exception("C-FIND failed")
        yield status(UNABLE_TO_PROCESS, f"internal error: {type(error).__name__}"), None
        return
    yield SUCCESS, None


def _instances_to_send(event: evt.Event, archive: Archive) -> list[RetrievableInstance]:
    keys = retrieve_keys(event.identifier, str(event.request.AffectedSOPClassUID))
    return archive.find_retrievable(**keys)


def _references(archive: Archive, found: list[RetrievableInstance]) -> Iterator[Dataset]:
    for instance in found:
        path = archive.storage.local_path(instance.storage_key)
        if path is None:  # pragma: no cover - remote storage arrives with the S3 issue
            raise NotImplementedError("retrieval from remote storage")
        yield StoredInstanceRef(instance, path)


def handle_get(event: evt.Event, archive: Archive) -> Iterator[Any]:
    """C-GET SCP (PS3.4 C.4.3): sub-operations on the same association."""
    try:
        found = _instances_to_send(event, archive)
    except OpenVNAError as error:
        yield 1
        yield status(error.dicom_status, str(error)), None
        return
    yield len(found)
    for reference in _references(archive, found):
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, reference


def handle_move(event: evt.Event, archive: Archive, peers: PeerRegistry) -> Iterator[Any]:
    """C-MOVE SCP (PS3.4 C.4.2): sub-operations on a new association to a known peer."""
    destination = peers.get(
        str(event.move_destination, "ascii")
        if isinstance(event.move_destination, bytes)
        else str(event.move_destination)
    )
    if destination is None:
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    try:
        found = _instances_to_send(event, archive)
    except OpenVNAError as error:
        # pynetdicom associates with the destination before it reads our status; offer
        # it Verification only, so that the association succeeds and the caller gets
        # this status rather than "destination unreachable" (0xC515 / 0xA801).
        yield destination.host, destination.port, {"contexts": [build_context(VERIFICATION)]}
        yield 1
        yield status(error.dicom_status, str(error)), None
        return
    yield destination.host, destination.port, {"contexts": contexts_for(found) or None}
    yield len(found)
    for reference in _references(archive, found):
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, reference
