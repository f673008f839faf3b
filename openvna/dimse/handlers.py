"""DIMSE service handlers: translate the event, call the archive, answer a status.

Each handler is a plain function bound to a pynetdicom event (CONVENTIONS.md). Status
values come from :mod:`openvna.errors` (one table); no business logic lives here.

Every handler first takes the association's principal (:mod:`openvna.dimse.access`,
decided when the association was accepted) and checks the permission the operation
needs: C-STORE ``study:store``, C-FIND ``study:query``, C-GET and C-MOVE ``study:read``.
A refusal is status 0x0124 "Refused: Not Authorized" (PS3.7 C.4) and is audited.
C-FIND, C-GET and C-MOVE pass the principal's study-level access to the core, so hidden
studies are never matched nor sent. Each operation is handed to the audit hooks of
:mod:`openvna.dimse.audit`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import build_context

from openvna.archive.ingest import ExpectedIdentity, Origin
from openvna.archive.service import Archive
from openvna.dimse import audit as dimse_audit
from openvna.dimse.access import association_principal
from openvna.dimse.access import make_access_check as make_access_check
from openvna.dimse.identifier import identifier_to_query, json_to_identifier, retrieve_keys
from openvna.dimse.peers import PeerRegistry
from openvna.dimse.scu import StoredInstanceRef, contexts_for
from openvna.errors import OpenVNAError
from openvna.index import access_repository
from openvna.index.search import RetrievableInstance
from openvna.security.authz import StudyAccess
from openvna.security.permissions import Permission
from openvna.security.principal import Principal

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
UNABLE_TO_PROCESS = 0xC000
VERIFICATION = "1.2.840.10008.1.1"
_PATIENTS_ATTRIBUTE = "openvna_patient_of_study"


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


def _authorized(
    event: evt.Event, archive: Archive, permission: Permission, operation: str
) -> Principal | None:
    """The principal if it may do ``permission``; None (refusal audited) otherwise."""
    principal = association_principal(event, archive)
    if principal is not None and principal.can(permission):
        return principal
    who = principal.subject if principal is not None else _remote(event)[0]
    reason = f"{operation} by {who}: {permission.value} not allowed"
    logger.warning("%s refused: %s", operation, reason)
    dimse_audit.on_refused(event, archive, reason)
    return None


def _refusal(operation: str) -> Dataset:
    return status(NOT_AUTHORIZED, f"{operation} not authorized for this AE")


def _study_access(archive: Archive, principal: Principal) -> StudyAccess | None:
    return archive.security.authorizer.study_access(principal)


def identifier_text(identifier: Dataset, prefix: str = "") -> str:
    """The Identifier as received, one ``Keyword=value`` line per element (sequence items
    as ``Sequence[n].Keyword``): the printable query text audit records carry."""
    lines = []
    for element in identifier:
        name = prefix + (element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})")
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                lines.append(identifier_text(item, f"{name}[{index}]."))
            continue
        value = element.value
        if isinstance(value, bytes):
            text = value.hex()
        elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(part) for part in value)
        else:
            text = "" if value is None else str(value)
        lines.append(f"{name}={text}")
    return "\n".join(line for line in lines if line)


def _patient_of(event: evt.Event, archive: Archive, study_uid: str) -> str:
    """Patient ID of a study, looked up once per study and association (for audit)."""
    known: dict[str, str] | None = getattr(event.assoc, _PATIENTS_ATTRIBUTE, None)
    if known is None:
        known = {}
        setattr(event.assoc, _PATIENTS_ATTRIBUTE, known)
    if study_uid not in known:
        known[study_uid] = access_repository.patient_id_of_study(archive.engine, study_uid)
    return known[study_uid]


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, archive: Archive) -> Dataset | int:
    """C-STORE SCP (PS3.4 B.2): the received file goes through the one ingest path."""
    calling_aet, address = _remote(event)
    request = cast(C_STORE, event.request)
    sop_class_uid = str(request.AffectedSOPClassUID or "")
    if _authorized(event, archive, Permission.STORE, "C-STORE") is None:
        return _refusal("C-STORE")
    expected = ExpectedIdentity(
        sop_class_uid=sop_class_uid,
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
        dimse_audit.on_store(event, archive, "", "", sop_class_uid, error.dicom_status)
        return status(error.dicom_status, str(error))
    except Exception as error:  # never acknowledge what was not stored
        logger.exception("C-STORE from %s failed", calling_aet)
        dimse_audit.on_store(event, archive, "", "", sop_class_uid, UNABLE_TO_PROCESS)
        return status(UNABLE_TO_PROCESS, f"internal error: {type(error).__name__}")
    answer: Dataset | int = SUCCESS
    if result.warnings:
        answer = status(0xB000, "; ".join(result.warnings))
    dimse_audit.on_store(
        event,
        archive,
        result.study_instance_uid,
        _patient_of(event, archive, result.study_instance_uid),
        result.sop_class_uid,
        answer if isinstance(answer, int) else int(answer.Status),
    )
    return answer


def handle_find(event: evt.Event, archive: Archive, ae_title: str) -> Iterator[tuple[Any, Any]]:
    """C-FIND SCP (PS3.4 C.4.1) for the Patient Root and Study Root models."""
    sop_class = str(event.request.AffectedSOPClassUID)
    query_text = identifier_text(event.identifier)
    principal = _authorized(event, archive, Permission.QUERY, "C-FIND")
    if principal is None:
        yield _refusal("C-FIND"), None
        return
    outcome = SUCCESS
    try:
        query = identifier_to_query(event.identifier, sop_class)
        access = _study_access(archive, principal)
        if access is not None:
            query = replace(query, access=access)
        results = archive.search(query)
        for result in results:
            if event.is_cancelled:
                outcome = CANCEL
                yield CANCEL, None
                return
            yield PENDING, json_to_identifier(result, query.level, ae_title)
    except OpenVNAError as error:
        outcome = error.dicom_status
        yield status(error.dicom_status, str(error)), None
        return
    except Exception as error:
        logger.exception("C-FIND failed")
        outcome = UNABLE_TO_PROCESS
        yield status(UNABLE_TO_PROCESS, f"internal error: {type(error).__name__}"), None
        return
    finally:
        dimse_audit.on_find(event, archive, query_text, sop_class, outcome)
    yield SUCCESS, None


def _instances_to_send(
    event: evt.Event, archive: Archive, access: StudyAccess | None
) -> list[RetrievableInstance]:
    keys = retrieve_keys(event.identifier, str(event.request.AffectedSOPClassUID))
    return archive.find_retrievable(access=access, **keys)


def _references(archive: Archive, found: list[RetrievableInstance]) -> Iterator[Dataset]:
    for instance in found:
        path = archive.storage.local_path(instance.storage_key)  # None: encrypted
        yield StoredInstanceRef(instance, path, partial(archive.storage.open, instance.storage_key))


def handle_get(event: evt.Event, archive: Archive) -> Iterator[Any]:
    """C-GET SCP (PS3.4 C.4.3): sub-operations on the same association."""
    calling_aet, _ = _remote(event)
    principal = _authorized(event, archive, Permission.READ, "C-GET")
    if principal is None:
        yield 1
        yield _refusal("C-GET"), None
        return
    try:
        found = _instances_to_send(event, archive, _study_access(archive, principal))
    except OpenVNAError as error:
        dimse_audit.on_retrieve(event, archive, "get", calling_aet, [], error.dicom_status)
        yield 1
        yield status(error.dicom_status, str(error)), None
        return
    yield len(found)
    for sent, reference in enumerate(_references(archive, found)):
        if event.is_cancelled:
            dimse_audit.on_retrieve(event, archive, "get", calling_aet, found[:sent], CANCEL)
            yield CANCEL, None
            return
        yield PENDING, reference
    dimse_audit.on_retrieve(event, archive, "get", calling_aet, found, SUCCESS)


def handle_move(event: evt.Event, archive: Archive, peers: PeerRegistry) -> Iterator[Any]:
    """C-MOVE SCP (PS3.4 C.4.2): sub-operations on a new association to a known peer."""
    move_destination = (
        str(event.move_destination, "ascii")
        if isinstance(event.move_destination, bytes)
        else str(event.move_destination)
    ).strip()
    destination = peers.get(move_destination)
    principal = _authorized(event, archive, Permission.READ, "C-MOVE")
    if destination is None:
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    # pynetdicom associates with the destination before it reads our status; offer
    # it Verification only, so that the association succeeds and the caller gets
    # this status rather than "destination unreachable" (0xC515 / 0xA801).
    verification_only = {"contexts": [build_context(VERIFICATION)]}
    if principal is None:
        yield destination.host, destination.port, verification_only
        yield 1
        yield _refusal("C-MOVE"), None
        return
    try:
        found = _instances_to_send(event, archive, _study_access(archive, principal))
    except OpenVNAError as error:
        dimse_audit.on_retrieve(event, archive, "move", move_destination, [], error.dicom_status)
        yield destination.host, destination.port, verification_only
        yield 1
        yield status(error.dicom_status, str(error)), None
        return
    yield destination.host, destination.port, {"contexts": contexts_for(found) or None}
    yield len(found)
    for sent, reference in enumerate(_references(archive, found)):
        if event.is_cancelled:
            dimse_audit.on_retrieve(event, archive, "move", move_destination, found[:sent], CANCEL)
            yield CANCEL, None
            return
        yield PENDING, reference
    dimse_audit.on_retrieve(event, archive, "move", move_destination, found, SUCCESS)
