"""The DICOM upper-layer listener: a pynetdicom AE bound to the archive core.

Accepts Verification, every Storage SOP class (unrestricted, so private and future
classes are archived too) in the transfer syntax the sender proposes first, Patient Root
and Study Root C-FIND/C-MOVE/C-GET. Received data sets are streamed to temporary files
by pynetdicom (``STORE_RECV_CHUNKED_DATASET``) so memory stays flat with instance size.
Every accepted socket gets TCP_NODELAY (small DIMSE responses must not wait for Nagle).

With ``security.tls.dimse_port`` set, a second listener on the same AE speaks DICOM
over TLS (PS3.15 B.9, BCP 195; contexts from :mod:`openvna.security.tls`); it serves
exactly what the plain listener serves, through the same handlers and checks. Like the
plain listener it is shared by every DIMSE process: where TLS is on (mandatory beyond
loopback) it carries all the traffic, so it needs every core as much as the plain one,
and TLS adds CPU work of its own.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import ssl
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
from openvna.dimse import limits as dimse_limits
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
from openvna.dimse.workers import AcceptBalancer, dimse_listening_socket
from openvna.errors import OpenVNAError
from openvna.security.audit import events as audit_events

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

    With ``ssl_context`` set, the TLS handshake runs in the new association's thread
    with the ACSE timeout, not in the accept loop as pynetdicom does it: a peer that
    connects and never completes the handshake must not stall every other caller.
    ``tls_refused(address, reason)`` hears of each failed handshake.
    """

    shared_socket: socket.socket | None = None
    balancer: AcceptBalancer | None = None
    tls_refused: Callable[[str, str], None] | None = None

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
        assert self.socket is not None
        client, address = self.socket.accept()  # BlockingIOError if a sibling took it
        client.setblocking(True)
        if balancer is not None:
            balancer.accepted(len(self.ae.active_associations) + 1)
        with contextlib.suppress(OSError):  # unusual sockets
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, request: ssl.SSLSocket, client_address: Any) -> bool:
        """Complete the TLS handshake within the ACSE timeout; False if it failed."""
        request.settimeout(self.ae.acse_timeout or 30.0)
        try:
            request.do_handshake()
        except OSError as error:  # ssl.SSLError, timeouts, resets
            address = str(client_address[0])
            reason = str(getattr(error, "reason", None) or error)
            logger.warning("DICOM TLS handshake with %s failed: %s", address, reason)
            if self.tls_refused is not None:
                self.tls_refused(address, reason)
            return False
        request.settimeout(None)
        return True


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


def dimse_tls_listening_socket(host: str, port: int) -> socket.socket:
    """The DICOM TLS socket shared by every DIMSE process (non-blocking, as the plain
    one); raises :class:`OpenVNAError` naming the address when taken."""
    try:
        return dimse_listening_socket(host, port)
    except OSError as error:
        raise OpenVNAError(f"cannot listen for DICOM TLS on {host}:{port}: {error}") from error


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


class DimseServer:
    """Owns the AE and its listening sockets: plain DICOM, and DICOM TLS when
    ``tls_context`` is given and ``security.tls.dimse_port`` is set."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        peers: PeerRegistry,
        *,
        shared_socket: socket.socket | None = None,
        balancer: AcceptBalancer | None = None,
        processes: int = 1,
        tls_context: ssl.SSLContext | None = None,
        tls_socket: socket.socket | None = None,
        tls_balancer: AcceptBalancer | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.peers = peers
        self._shared_socket = shared_socket
        self._balancer = balancer
        self._processes = processes
        self._tls_context = tls_context
        self._tls_socket = tls_socket
        """The DICOM TLS socket shared by every DIMSE process (as ``shared_socket``)."""
        self._tls_balancer = tls_balancer
        self._server: TunedAssociationServer | None = None
        self._tls_server: TunedAssociationServer | None = None
        self.tls_port: int | None = None
        """The bound DICOM TLS port once started; None without a TLS listener."""
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
        """Start listening in background threads; returns the bound (plain) port.

        The DICOM TLS listener, when configured, starts too: same handlers, same
        checks; its port is :attr:`tls_port`.
        """
        # pynetdicom writes received data sets with NamedTemporaryFile: keep them on the
        # archive's filesystem (not a RAM-backed /tmp), where the start-up sweep cleans.
        tmp_dir = self.settings.storage_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(tmp_dir)
        ae_title = self.settings.dimse.ae_title
        event_handlers: list[Any] = [
            (evt.EVT_REQUESTED, handlers.make_access_check(self.archive, self.peers)),
            (evt.EVT_CONN_OPEN, tune_association),
            (evt.EVT_CONN_CLOSE, discard_partial_dataset),
            *dimse_limits.association_limit_handlers(self.settings, self.archive),
            (evt.EVT_C_ECHO, handlers.handle_echo),
            (evt.EVT_C_STORE, handlers.handle_store, [self.archive]),
            (evt.EVT_C_FIND, handlers.handle_find, [self.archive, ae_title]),
            (evt.EVT_C_GET, handlers.handle_get, [self.archive]),
            (evt.EVT_C_MOVE, handlers.handle_move, [self.archive, self.peers]),
            *dimse_audit.association_handlers(self.archive),
        ]
        server = self._serve(
            self.settings.dimse.port, event_handlers, self._shared_socket, self._balancer
        )
        self._server = server
        port = int(server.server_address[1])
        logger.info("DIMSE listening on %s:%d as %s", self.settings.host, port, ae_title)
        tls_port = self.settings.security.tls.dimse_port
        if self._tls_context is not None and tls_port is not None:
            tls_server = self._serve(
                tls_port,
                event_handlers,
                self._tls_socket,
                self._tls_balancer,
                ssl_context=self._tls_context,
            )
            self._tls_server = tls_server
            self.tls_port = int(tls_server.server_address[1])
            logger.info(
                "DICOM TLS listening on %s:%d as %s", self.settings.host, self.tls_port, ae_title
            )
        return port

    def _serve(
        self,
        port: int,
        event_handlers: list[Any],
        shared_socket: socket.socket | None,
        balancer: AcceptBalancer | None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> TunedAssociationServer:
        """One listener of the AE, serving in a background thread."""
        server_class = type(
            "OpenVNAAssociationServer",
            (TunedAssociationServer,),
            {"shared_socket": shared_socket, "balancer": balancer},
        )
        server = cast(
            TunedAssociationServer,
            self.ae.make_server(
                (self.settings.host, port),
                evt_handlers=event_handlers,
                ssl_context=ssl_context,
                server_class=server_class,
            ),
        )
        server.contexts = _ContextsCopiedCheaply(server.contexts)
        server.tls_refused = self._record_tls_refusal
        name = "openvna-dimse-tls" if ssl_context is not None else "openvna-dimse"
        thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        thread.start()
        self.ae._servers.append(server)  # so that AE.shutdown() stops it, as start_server does
        return server

    def _record_tls_refusal(self, address: str, reason: str) -> None:
        """Audit a failed DICOM TLS handshake: Security Alert, Node Authentication
        (PS3.15 A.5.3.11, DCM 110126), e.g. a plain or untrusted caller on the TLS port."""
        self.archive.security.audit.record(
            audit_events.security_alert(
                None,
                address,
                audit_events.NODE_AUTHENTICATION,
                description=f"DICOM TLS handshake failed: {reason}",
            )
        )

    def stop(self) -> None:
        self._server = None
        self._tls_server = None
        self.ae.shutdown()
