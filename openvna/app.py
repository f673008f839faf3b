"""Composition root: builds the core, the adapters and the workers from the settings."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import threading
from dataclasses import dataclass, field

from openvna.ai.jobs import Orchestrator
from openvna.ai.registry import load_registry
from openvna.ai.supervisor import AiSupervisor
from openvna.archive.events import EventBus, StudyStable
from openvna.archive.service import Archive, StabilityMonitor, SweepReport
from openvna.config import Settings
from openvna.dimse.peers import PeerRegistry
from openvna.dimse.server import DimseServer, dimse_tls_listening_socket
from openvna.dimse.workers import (
    AcceptBalancer,
    dimse_listening_socket,
    fork_workers,
    stop_workers,
)
from openvna.errors import OpenVNAError
from openvna.index.database import create_index_engine, upgrade_schema
from openvna.security.audit.lifecycle import AuditLifecycle, start_audit
from openvna.security.startup import bootstrap_banner, check_secure_defaults, prepare_bootstrap
from openvna.security.tls import ServerContexts, server_contexts
from openvna.storage.crypto import encrypt_if_enabled
from openvna.storage.filesystem import FilesystemStorage
from openvna.tasks.inprocess import InProcessExecutor
from openvna.web.app import DicomEndpoint, create_app
from openvna.web.server import HttpServer, http_listening_socket

logger = logging.getLogger(__name__)


def open_archive(settings: Settings, *, migrate: bool = True) -> tuple[Archive, InProcessExecutor]:
    """The archive core on its index and storage, schema migrated, with an event bus."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings.index_url, sqlite_synchronous=settings.sqlite_synchronous)
    if migrate:
        upgrade_schema(engine)
    storage = encrypt_if_enabled(FilesystemStorage(settings.storage_dir), settings)
    executor = InProcessExecutor()
    archive = Archive(settings, engine, storage, EventBus(executor))
    return archive, executor


def peer_registry(settings: Settings) -> PeerRegistry:
    return PeerRegistry(settings.dimse.peers, settings.peers_file)


@dataclass
class RunningArchive:
    """A started archive: call :meth:`stop` to shut every part down in order."""

    archive: Archive
    executor: InProcessExecutor
    dimse: DimseServer
    dimse_workers: list[int]
    dimse_socket: socket.socket | None
    http_socket: socket.socket | None
    http: HttpServer
    monitor: StabilityMonitor
    dimse_port: int
    http_port: int
    sweep: SweepReport
    ai_worker: AiSupervisor | None = None
    dimse_tls_port: int | None = None
    """The DICOM TLS port; None without ``security.tls.dimse_port``."""
    dimse_tls_socket: socket.socket | None = None
    https: bool = False
    """HTTP is served over TLS (``security.tls`` has a certificate)."""
    audit: AuditLifecycle | None = None
    """Application Start/Stop records and the syslog forwarder (main process only)."""
    stopped: bool = field(default=False)

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP listener as the start-up banner shows it."""
        host = self.archive.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.https else 'http'}://{host}:{self.http_port}"

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.http.stop()
        stop_workers(self.dimse_workers)
        if self.ai_worker is not None:
            self.ai_worker.stop()
        self.dimse.stop()
        for shared in (self.dimse_socket, self.http_socket, self.dimse_tls_socket):
            if shared is not None:
                shared.close()
        self.monitor.stop()
        self.executor.shutdown(wait=True)
        if self.audit is not None:
            self.audit.stop()
        self.archive.close()


def dimse_process_count(settings: Settings) -> int:
    """How many processes serve DIMSE: ``dimse.processes``, or one per core up to four."""
    if settings.dimse.processes:
        return settings.dimse.processes
    return max(1, min(4, os.cpu_count() or 1))


def start_archive(settings: Settings) -> RunningArchive:
    """Sweep what a crash left, then start DIMSE (in one or more processes), HTTP and the
    stability monitor. With a TLS certificate configured HTTP is HTTPS, and
    ``security.tls.dimse_port`` adds a DICOM TLS listener, shared by the DIMSE processes
    like the plain one."""
    check_secure_defaults(settings)  # refuse to expose the archive: before any port
    tls = server_contexts(settings.security.tls)  # a wrong TLS file stops us here
    tls_port = settings.security.tls.dimse_port if tls is not None else None
    archive, executor = open_archive(settings)
    bootstrap_secret = prepare_bootstrap(settings, archive.engine)
    if bootstrap_secret is not None:
        logger.warning(bootstrap_banner(bootstrap_secret))
    sweep = archive.sweep()
    processes = dimse_process_count(settings)
    shared_socket: socket.socket | None = None
    http_socket: socket.socket | None = None
    tls_socket: socket.socket | None = None
    balancer: AcceptBalancer | None = None
    tls_balancer: AcceptBalancer | None = None
    workers: list[int] = []
    if processes > 1:
        try:
            shared_socket = dimse_listening_socket(settings.host, settings.dimse.port)
            http_socket = http_listening_socket(settings.host, settings.http.port)
            if tls_port is not None:
                tls_socket = dimse_tls_listening_socket(settings.host, tls_port)
        except OSError as error:
            if shared_socket is not None:
                shared_socket.close()
            archive.close()
            raise OpenVNAError(
                f"cannot listen for DICOM on {settings.host}:{settings.dimse.port}: {error}"
            ) from error
        except OpenVNAError:
            for bound in (shared_socket, http_socket):
                if bound is not None:
                    bound.close()
            archive.close()
            raise
        balancer = AcceptBalancer(processes)
        tls_balancer = AcceptBalancer(processes) if tls_socket is not None else None
        archive.engine.dispose()  # no database connection may cross the fork
        workers = fork_workers(
            processes - 1,
            lambda slot: _run_worker(
                settings,
                shared_socket,
                http_socket,
                balancer,
                slot,
                processes,
                _WorkerTls(tls, tls_socket, tls_balancer),
            ),
        )
    dimse = _dimse_server(
        settings,
        archive,
        shared_socket,
        balancer,
        processes,
        _WorkerTls(tls, tls_socket, tls_balancer),
    )
    dimse_port = dimse.start()
    http = _http_server(settings, archive, dimse_port, http_socket, tls)
    try:
        http_port = http.start()
    except Exception:
        stop_workers(workers)
        dimse.stop()
        raise
    ai_worker: AiSupervisor | None = None
    if settings.ai.enabled:
        ai_worker = AiSupervisor(settings)
        ai_worker.start()
        orchestrator = Orchestrator(settings, archive.engine, load_registry(settings))
        archive.bus.subscribe(StudyStable, orchestrator.on_study_stable)
    monitor = StabilityMonitor(archive)
    monitor.start()
    logger.info("DIMSE served by %d process(es)", processes)
    return RunningArchive(
        archive,
        executor,
        dimse,
        workers,
        shared_socket,
        http_socket,
        http,
        monitor,
        dimse_port,
        http_port,
        sweep,
        ai_worker,
        dimse_tls_port=dimse.tls_port,
        dimse_tls_socket=tls_socket,
        https=tls is not None,
        audit=start_audit(archive),
    )


@dataclass(frozen=True)
class _WorkerTls:
    """What each DIMSE process needs for TLS: the contexts (built once, before the fork)
    and, with several processes, the shared DICOM TLS socket and its balancer."""

    contexts: ServerContexts | None
    socket: socket.socket | None
    balancer: AcceptBalancer | None


def _dimse_server(
    settings: Settings,
    archive: Archive,
    shared_socket: socket.socket | None,
    balancer: AcceptBalancer | None,
    processes: int,
    tls: _WorkerTls,
) -> DimseServer:
    """The DIMSE server of one process (main or worker) over its own archive handle."""
    return DimseServer(
        settings,
        archive,
        peer_registry(settings),
        shared_socket=shared_socket,
        balancer=balancer,
        processes=processes,
        tls_context=tls.contexts.dimse if tls.contexts is not None else None,
        tls_socket=tls.socket,
        tls_balancer=tls.balancer,
    )


def _http_server(
    settings: Settings,
    archive: Archive,
    dimse_port: int,
    sock: socket.socket | None,
    tls: ServerContexts | None,
) -> HttpServer:
    """The HTTP server of one process (main or worker) over its own archive handle."""
    endpoint = DicomEndpoint(settings.dimse.ae_title, settings.host, dimse_port)
    ssl_context: ssl.SSLContext | None = tls.https if tls is not None else None
    return HttpServer(
        create_app(archive, endpoint, settings.http),
        settings.host,
        settings.http.port,
        sock=sock,
        ssl_context=ssl_context,
    )


def _run_worker(
    settings: Settings,
    shared_socket: socket.socket | None,
    http_socket: socket.socket | None,
    balancer: AcceptBalancer | None,
    slot: int,
    processes: int,
    tls: _WorkerTls,
) -> None:
    """Body of a forked server process: its own index connections, the shared DIMSE,
    DICOM TLS and HTTP sockets (HTTP, like DIMSE, is GIL-bound in one process)."""
    assert balancer is not None
    balancer.slot = slot
    if tls.balancer is not None:
        tls.balancer.slot = slot
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C: the main process stops us
    archive, executor = open_archive(settings, migrate=False)
    dimse = _dimse_server(settings, archive, shared_socket, balancer, processes, tls)
    dimse_port = dimse.start()
    http: HttpServer | None = None
    if http_socket is not None:
        http = _http_server(settings, archive, dimse_port, http_socket, tls.contexts)
        http.start()
    stop.wait()
    if http is not None:
        http.stop()
    dimse.stop()
    executor.shutdown(wait=True)
    archive.close()
