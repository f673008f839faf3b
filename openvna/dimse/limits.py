"""Associations open at once per peer address (``security.limits.associations_per_host``).

``dimse.max_associations`` bounds the archive as a whole; one misbehaving modality or
a scanner of the network could take every one of them. This limit bounds what one
address holds: connections are counted when they open (``EVT_CONN_OPEN``) and when
they close (``EVT_CONN_CLOSE``), and a connection whose A-ASSOCIATE-RQ arrives while
its address already holds the limit is refused with A-ASSOCIATE-RJ, result 2
*rejected-transient*, source 3 *DICOM UL service-provider (presentation related
function)*, reason 2 *local-limit-exceeded* (PS3.8 9.3.4, Table 9-21): the peer may
try again once one of its associations has ended. The associations it already holds
carry on untouched.

Counting connections rather than negotiated associations counts a connection that
never sends its request too (it holds a thread until ``dimse.acse_timeout``). The
counts are shared by every DIMSE process (:mod:`openvna.process_shared`); each process
also keeps its own connections, so a connection whose close event never came is
recognised by its ended thread and taken off the count.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association

from openvna.archive.service import Archive
from openvna.config import Settings
from openvna.dimse import audit as dimse_audit
from openvna.process_shared import SharedTable, table_key

logger = logging.getLogger(__name__)

REJECTED_TRANSIENT = 0x02
SERVICE_PROVIDER_PRESENTATION = 0x03
LOCAL_LIMIT_EXCEEDED = 0x02
"""A-ASSOCIATE-RJ result, source and reason/diag. (PS3.8 9.3.4, Table 9-21)."""

_COUNT = 0
_CONNECTIONS = SharedTable(slots=8192, fields=1)
"""Open connections per address of every DIMSE process, made at import: before
``openvna serve`` forks its DIMSE workers, so that they all share it."""


class AssociationLimit:
    """Counts the open connections of each peer address and refuses those beyond
    ``per_host`` (module doc)."""

    def __init__(self, per_host: int, namespace: str, table: SharedTable = _CONNECTIONS) -> None:
        self.per_host = per_host
        self._namespace = namespace
        self._table = table
        self._lock = threading.Lock()
        self._open: dict[str, set[Association]] = {}
        """This process's counted connections per address."""

    def _key(self, address: str) -> int:
        return table_key(f"{self._namespace}|{address}")

    def _add(self, address: str, delta: int) -> int:
        """Change ``address``'s shared count by ``delta``; returns the new count."""
        table = self._table
        with table.locked() as held:
            if not held:
                return 0
            slot = table.claim(self._key(address), lambda slot: table.get(slot, _COUNT) <= 0)
            if slot is None:  # saturated: do not refuse anyone for want of a slot
                return 0
            count = max(0.0, table.get(slot, _COUNT) + delta)
            table.set(slot, _COUNT, count)
            return int(count)

    def opened(self, assoc: Association) -> None:
        """EVT_CONN_OPEN: count the connection."""
        address = str(assoc.requestor.address)
        with self._lock:
            self._open.setdefault(address, set()).add(assoc)
        self._add(address, +1)

    def closed(self, assoc: Association) -> None:
        """EVT_CONN_CLOSE: uncount it (once, however many close events arrive)."""
        address = str(assoc.requestor.address)
        with self._lock:
            connections = self._open.get(address)
            if connections is None or assoc not in connections:
                return
            connections.discard(assoc)
            if not connections:
                del self._open[address]
        self._add(address, -1)

    def open_count(self, address: str) -> int:
        """Connections ``address`` holds in every process, after dropping from this
        process's count those whose thread has ended without a close event."""
        with self._lock:
            connections = self._open.get(address, set())
            ended = {
                assoc for assoc in connections if assoc.ident is not None and not assoc.is_alive()
            }
            connections -= ended
        for _ in ended:
            self._add(address, -1)
        return self._add(address, 0)

    def check(self, assoc: Association) -> bool:
        """EVT_REQUESTED: whether the association may proceed (counting itself)."""
        if assoc.is_rejected or assoc.is_aborted:
            return True  # already refused by an earlier check
        return self.open_count(str(assoc.requestor.address)) <= self.per_host


def association_limit_handlers(settings: Settings, archive: Archive) -> list[tuple[Any, ...]]:
    """The EVT_CONN_OPEN, EVT_CONN_CLOSE and EVT_REQUESTED handlers of the limit, bound
    by the DIMSE server (after its access check, so a refused caller is not counted
    twice)."""
    limit = AssociationLimit(
        settings.security.limits.associations_per_host, str(settings.data_dir.resolve())
    )

    def on_open(event: evt.Event) -> None:
        limit.opened(event.assoc)

    def on_close(event: evt.Event) -> None:
        limit.closed(event.assoc)

    def on_requested(event: evt.Event) -> None:
        assoc = event.assoc
        if limit.check(assoc):
            return
        address = str(assoc.requestor.address)
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
        reason = (
            f"association from {calling} ({address}) refused: {limit.per_host} associations "
            "from that address are open (security.limits.associations_per_host)"
        )
        logger.warning("%s", reason)
        assoc.acse.send_reject(
            REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED
        )
        assoc.kill()
        dimse_audit.on_refused(event, archive, reason)

    return [
        (evt.EVT_CONN_OPEN, on_open),
        (evt.EVT_CONN_CLOSE, on_close),
        (evt.EVT_REQUESTED, on_requested),
    ]


__all__ = [
    "LOCAL_LIMIT_EXCEEDED",
    "REJECTED_TRANSIENT",
    "SERVICE_PROVIDER_PRESENTATION",
    "AssociationLimit",
    "association_limit_handlers",
]
