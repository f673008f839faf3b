"""Audit records of DIMSE services, aggregated per association and study.

Handlers call these hooks after each operation. A modality sending a study in one
association makes one DICOM Instances Transferred record per study (action C, the
calling AE as source and requestor, the archive as destination, SOP classes with their
instance counts), not one per instance: the hooks tally, and the handlers bound to
EVT_RELEASED / EVT_ABORTED (and EVT_CONN_CLOSE, for a peer that just hangs up) write
the records when the association ends. Successful and failed operations are tallied
apart, as A.5.2 wants one message per outcome.

* C-STORE received: Instances Transferred, C (no Begin Transferring: that is the
  sender's to record).
* C-FIND: one Query per request, written at once, carrying the identifier exactly as
  received (base64) and its transfer syntax.
* C-GET / C-MOVE: Begin Transferring (E) and Instances Transferred (R) per study, the
  archive as source, the C-GET requestor or the C-MOVE destination AE as destination
  (the C-MOVE requestor then appears as a third participant).
* Refusals (association or operation): a Security Alert at once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ParamSpec

from pynetdicom import evt

from openvna.archive.service import Archive
from openvna.security.audit import REQUESTOR, AuditEvent, StudyRef, dicom_party, events
from openvna.security.principal import Principal, PrincipalKind

logger = logging.getLogger(__name__)
_P = ParamSpec("_P")
_ATTRIBUTE = "_openvna_audit"
_SUCCESS_STATUSES = {0x0000, 0xFF00, 0xFF01, 0xFE00}
"""Success, pending and cancel; warnings (0xBxxx) count as success too."""


def _never_raises(hook: Callable[_P, None]) -> Callable[_P, None]:
    """Auditing must not turn an answered DIMSE operation into a failure: log instead."""

    @functools.wraps(hook)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            logger.exception("DIMSE audit hook %s failed", hook.__name__)

    return guarded


def _succeeded(status: int) -> bool:
    return status in _SUCCESS_STATUSES or (status & 0xF000) == 0xB000


@dataclasses.dataclass
class _Tally:
    patient_id: str = ""
    sop_classes: Counter[str] = dataclasses.field(default_factory=Counter)
    first_at: float = dataclasses.field(default_factory=time.time)

    def studies(self, study_uid: str) -> list[StudyRef]:
        """The study tallied (none when the failure came before its UID was known)."""
        if not study_uid:
            return []
        counts = tuple(sorted((uid, n) for uid, n in self.sop_classes.items() if uid))
        return [StudyRef(study_uid, patient_id=self.patient_id, sop_classes=counts)]


@dataclasses.dataclass
class _AssociationAudit:
    """What one association did, waiting for its end."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    stored: dict[tuple[str, bool], _Tally] = dataclasses.field(default_factory=dict)
    retrieved: dict[tuple[str, str, str, bool], _Tally] = dataclasses.field(default_factory=dict)


def _tallies(event: evt.Event) -> _AssociationAudit:
    association = event.assoc
    audit = getattr(association, _ATTRIBUTE, None)
    if audit is None:
        audit = _AssociationAudit()
        setattr(association, _ATTRIBUTE, audit)
    return audit


def _caller(event: evt.Event) -> tuple[str, str]:
    """(calling AE title, address) as the A-ASSOCIATE-RQ gave them."""
    requestor = event.assoc.requestor
    primitive = getattr(requestor, "primitive", None)
    calling = getattr(primitive, "calling_ae_title", None) or requestor.ae_title
    if isinstance(calling, bytes):
        calling = calling.decode("ascii", "replace")
    return str(calling).strip(), str(requestor.address)


def _principal(event: evt.Event, archive: Archive) -> Principal:
    """Who the records name: the association's principal when it is an AE (security
    on), else the calling AE itself (subject ``ae:<title>``) rather than the local
    principal, which says nothing about which device asked."""
    from openvna.dimse.access import association_principal  # access imports this module

    accepted = association_principal(event, archive)
    if accepted is not None and accepted.kind is PrincipalKind.AE:
        return accepted
    ae_title, address = _caller(event)
    return Principal(
        subject=f"ae:{ae_title}", kind=PrincipalKind.AE, roles=frozenset(), address=address
    )


@_never_raises
def on_store(
    event: evt.Event,
    archive: Archive,
    study_uid: str,
    patient_id: str,
    sop_class_uid: str,
    status: int,
) -> None:
    """A C-STORE was answered with ``status``."""
    audit = _tallies(event)
    with audit.lock:
        tally = audit.stored.setdefault((study_uid, _succeeded(status)), _Tally())
        tally.patient_id = tally.patient_id or patient_id
        tally.sop_classes[sop_class_uid] += 1


@_never_raises
def on_find(
    event: evt.Event, archive: Archive, query_text: str, sop_class_uid: str, status: int
) -> None:
    """A C-FIND finished (``query_text``: the identifier as received, printable)."""
    _, address = _caller(event)
    identifier: Any = getattr(getattr(event, "request", None), "Identifier", None)
    data = identifier.getvalue() if hasattr(identifier, "getvalue") else b""
    context = getattr(event, "context", None)
    archive.security.audit.record(
        events.query(
            _principal(event, archive),
            address,
            query_text=query_text,
            sop_class=sop_class_uid,
            success=_succeeded(status),
            description="" if _succeeded(status) else f"C-FIND status 0x{status:04X}",
            query_data=bytes(data),
            transfer_syntax=str(getattr(context, "transfer_syntax", "") or ""),
        )
    )


@_never_raises
def on_retrieve(
    event: evt.Event,
    archive: Archive,
    kind: str,
    destination: str,
    instances: list[Any],
    status: int,
) -> None:
    """A C-GET (``kind`` 'get') or C-MOVE ('move') sent ``instances``."""
    audit = _tallies(event)
    success = _succeeded(status)
    with audit.lock:
        if not instances:  # refused or failed before anything was found
            audit.retrieved.setdefault((kind, destination, "", success), _Tally())
        for instance in instances:
            study_uid = str(getattr(instance, "study_instance_uid", ""))
            key = (kind, destination, study_uid, success)
            tally = audit.retrieved.setdefault(key, _Tally())
            tally.sop_classes[str(getattr(instance, "sop_class_uid", ""))] += 1


@_never_raises
def on_refused(event: evt.Event, archive: Archive, reason: str) -> None:
    """An operation or association was refused by authorisation."""
    ae_title, address = _caller(event)
    archive.security.audit.record(
        events.security_alert(
            _principal(event, archive),
            address,
            events.UNAUTHORIZED_ACCESS,
            description=f"DICOM request from {ae_title} refused: {reason}",
            resource=f"{ae_title}@{address}",
        )
    )


def association_handlers(archive: Archive) -> list[tuple[Any, Any]]:
    """Notification handlers (EVT_RELEASED, EVT_ABORTED) that flush per-association
    records; bound by the DIMSE server."""
    ended = functools.partial(_association_ended, archive=archive)
    return [(evt.EVT_RELEASED, ended), (evt.EVT_ABORTED, ended), (evt.EVT_CONN_CLOSE, ended)]


@_never_raises
def _association_ended(event: evt.Event, archive: Archive) -> None:
    audit = getattr(event.assoc, _ATTRIBUTE, None)
    if audit is None:
        return
    with audit.lock:
        stored, audit.stored = audit.stored, {}
        retrieved, audit.retrieved = audit.retrieved, {}
    for record in _records(event, archive, stored, retrieved):
        archive.security.audit.record(record)


def _records(
    event: evt.Event,
    archive: Archive,
    stored: dict[tuple[str, bool], _Tally],
    retrieved: dict[tuple[str, str, str, bool], _Tally],
) -> list[AuditEvent]:
    principal = _principal(event, archive)
    ae_title, address = _caller(event)
    records = []
    for (study_uid, success), tally in stored.items():
        records.append(
            events.instances_transferred(
                principal,
                address,
                tally.studies(study_uid),
                action="C",
                source=dicom_party(ae_title, address),
                destination="",
                success=success,
                description="" if success else "C-STORE refused or failed",
            )
        )
    for (kind, destination, study_uid, success), tally in retrieved.items():
        target = REQUESTOR if kind == "get" else _destination(destination)
        studies = tally.studies(study_uid)
        if studies:
            begin = events.begin_transferring(
                principal, address, studies, source="", destination=target
            )
            records.append(dataclasses.replace(begin, recorded_at=tally.first_at))
        records.append(
            events.instances_transferred(
                principal,
                address,
                studies,
                action="R",
                source="",
                destination=target,
                success=success,
                description="" if success else f"C-{kind.upper()} sub-operations failed",
            )
        )
    return records


def _destination(destination: str) -> str:
    """The ``destination`` form of a C-MOVE destination AE title."""
    if destination.startswith("AE:"):
        return destination
    return dicom_party(destination, "")
