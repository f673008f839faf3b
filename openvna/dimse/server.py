"""The DICOM upper-layer listener: a pynetdicom AE bound to the archive core.

Accepts Verification, every Storage SOP class (unrestricted, so private and future
classes are archived too) in the transfer syntax the sender proposes first, Patient Root
and Study Root C-FIND/C-MOVE/C-GET. Received data sets are streamed to temporary files
by pynetdicom (``STORE_RECV_CHUNKED_DATASET``) so memory stays flat with instance size.
Every accepted socket gets TCP_NODELAY (small DIMSE responses must not wait for Nagle).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from openvna.archive.service import Archive
from openvna.config import Settings
from openvna.dimse import audit as dimse_audit
from openvna.dimse import handlers
from openvna.dimse.handlers import VERIFICATION
from openvna.dimse.identifier import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from openvna.dimse.peers import PeerRegistry
from openvna.dimse.scu import install_raw_send
from openvna.dimse.workers import AcceptBalancer

logger = logging.getLogger(__name__)

# Accepted as sent (PS3.5 Section 10 and Annex A); the requestor's order decides.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old devices)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Lossless
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.101",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
]

_DUL_POLL_SECONDS = 0.0005

QUERY_RETRIEVE_CLASSES = [
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_MOVE,
    PATIENT_ROOT_GET,
    STUDY_ROOT_GET,
]


class TunedAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on accepted sockets; can serve a socket shared with other processes.

    With ``shared_socket`` set (a bound, listening, non-blocking socket) the server uses it
    instead of binding its own, and asks ``balancer`` before accepting (see workers.py).
    """

    shared_socket: socket.socket | None = None
    balancer: AcceptBalancer | None = None

    def server_bind(self) -> None:
        if self.shared_socket is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()
        self.socket = self.shared_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.shared_socket is None:
            super().server_activate()

    def server_close(self) -> None:
        if self.shared_socket is None:
            super().server_close()

    def get_request(self) -> tuple[socket.socket, Any]:
        balancer = self.balancer
        if balancer is not None and not balancer.should_accept(len(self.ae.active_associations)):
            time.sleep(0.001)  # a less busy sibling process takes this connection
            raise BlockingIOError("left to a less busy DIMSE process")
        client, address = super().get_request()  # BlockingIOError if a sibling took it
        client.setblocking(True)
        if balancer is not None:
            balancer.accepted(len(self.ae.active_associations) + 1)
        with contextlib.suppress(OSError):  # TLS-wrapped or unusual sockets
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


class _ContextsCopiedCheaply(list[PresentationContext]):
    """The server's supported contexts, deep-copied for each association without cost.

    pynetdicom gives every new association ``deepcopy(server.contexts)``; with every
    storage SOP class and 28 transfer syntaxes that re-validates thousands of UIDs and
    took ~40 ms per association (C-ECHO and C-FIND latency). UIDs are immutable, so a copy
    of each context with its own transfer syntax list is as safe and a hundred times
    cheaper.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            duplicate = copy.copy(context)
            duplicate._transfer_syntax = list(context._transfer_syntax)
            copies.append(duplicate)
        return copies


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _peer_addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def tune_association(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: poll the connection more often than pynetdicom's 1 ms.

    pynetdicom's DUL thread sleeps ``_run_loop_delay`` whenever it found nothing to do,
    which delays every C-STORE response by up to that much; at 0.5 ms an idle
    association wakes 2000 times a second instead of 1000, a small price.
    """
    dul = getattr(event.assoc, "dul", None)
    if dul is not None:
        dul._run_loop_delay = _DUL_POLL_SECONDS


def discard_partial_dataset(event: evt.Event) -> None:
    """EVT_CONN_CLOSE handler: remove the temp file of a data set that never completed.

    pynetdicom spools a received data set to a ``NamedTemporaryFile(delete=False)`` and
    unlinks it after the C-STORE handler; when the peer drops the connection mid-message
    no handler runs and the partial file would stay until the next start-up sweep.
    """
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is None:
        return
    try:
        spool.close()
        os.unlink(spool.name)
    except OSError as error:
        logger.warning("could not remove the partial data set %s: %s", spool.name, error)
    else:
        logger.info("association dropped mid-message: partial data set discarded")


def make_access_check(peers: PeerRegistry) -> Callable[[evt.Event], None]:
    """EVT_REQUESTED handler: any caller from loopback, otherwise only configured peers.

    Unknown callers get A-ASSOCIATE-RJ, rejected-permanent, "calling AE title not
    recognized" (PS3.8 9.3.4), before any presentation context is negotiated.
    """

    def check(event: evt.Event) -> None:
        requestor = event.assoc.requestor
        address = str(requestor.address)
        if _is_loopback(address):
            return
        primitive = requestor.primitive
        calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
        peer = peers.get(calling)
        if peer is not None and address in _peer_addresses(peer.host):
            return
        logger.warning("association from %s (%s) rejected: not a configured peer", calling, address)
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()

    return check


class DimseServer:
    """Owns the AE and its listening socket."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        peers: PeerRegistry,
        *,
        shared_socket: socket.socket | None = None,
        balancer: AcceptBalancer | None = None,
        processes: int = 1,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.peers = peers
        self._shared_socket = shared_socket
        self._balancer = balancer
        self._processes = processes
        self._server: TunedAssociationServer | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        dimse = self.settings.dimse
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        # pynetdicom formats every C-FIND identifier for its debug log even when debug
        # logging is off (~5% of a C-FIND response's cost); we never log identifiers.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        install_raw_send()
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=dimse.ae_title)
        ae.maximum_pdu_size = dimse.max_pdu
        # the limit holds for the archive as a whole, shared out among DIMSE processes
        ae.maximum_associations = max(1, -(-dimse.max_associations // self._processes))
        ae.network_timeout = dimse.network_timeout
        ae.acse_timeout = dimse.acse_timeout
        ae.dimse_timeout = dimse.dimse_timeout
        ae.add_supported_context(VERIFICATION)
        from pynetdicom import AllStoragePresentationContexts

        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), TRANSFER_SYNTAXES)
            # C-GET: we are the SCU of the storage sub-operations (role selection).
            ae.add_supported_context(
                cast(str, context.abstract_syntax), TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        for sop_class in QUERY_RETRIEVE_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES[:3])
        return ae

    def start(self) -> int:
        """Start listening in background threads; returns the bound port."""
        # pynetdicom writes received data sets with NamedTemporaryFile: keep them on the
        # archive's filesystem (not a RAM-backed /tmp), where the start-up sweep cleans.
        tmp_dir = self.settings.storage_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(tmp_dir)
        ae_title = self.settings.dimse.ae_title
        event_handlers: list[Any] = [
            (evt.EVT_REQUESTED, make_access_check(self.peers)),
            (evt.EVT_CONN_OPEN, tune_association),
            (evt.EVT_CONN_CLOSE, discard_partial_dataset),
            (evt.EVT_C_ECHO, handlers.handle_echo),
            (evt.EVT_C_STORE, handlers.handle_store, [self.archive]),
            (evt.EVT_C_FIND, handlers.handle_find, [self.archive, ae_title]),
            (evt.EVT_C_GET, handlers.handle_get, [self.archive]),
            (evt.EVT_C_MOVE, handlers.handle_move, [self.archive, self.peers]),
            *dimse_audit.association_handlers(self.archive),
        ]
        server_class = type(
            "OpenVNAAssociationServer",
            (TunedAssociationServer,),
            {"shared_socket": self._shared_socket, "balancer": self._balancer},
        )
        server = cast(
            TunedAssociationServer,
            self.ae.make_server(
                (self.settings.host, self.settings.dimse.port),
                evt_handlers=event_handlers,
                server_class=server_class,
            ),
        )
        server.contexts = _ContextsCopiedCheaply(server.contexts)
        thread = threading.Thread(target=server.serve_forever, name="openvna-dimse", daemon=True)
        thread.start()
        self.ae._servers.append(server)  # so that AE.shutdown() stops it, as start_server does
        self._server = server
        port = int(server.server_address[1])
        logger.info("DIMSE listening on %s:%d as %s", self.settings.host, port, ae_title)
        return port

    def stop(self) -> None:
        self._server = None
        self.ae.shutdown()
