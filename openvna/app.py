"""Composition root: builds the core, the adapters and the workers from the settings."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field

from openvna.ai.jobs import Orchestrator
from openvna.ai.registry import load_registry
from openvna.ai.supervisor import AiSupervisor
from openvna.archive.events import EventBus, StudyStable
from openvna.archive.service import Archive, StabilityMonitor, SweepReport
from openvna.config import Settings
from openvna.dimse.peers import PeerRegistry
from openvna.dimse.server import DimseServer
from openvna.dimse.workers import (
    AcceptBalancer,
    dimse_listening_socket,
    fork_workers,
    stop_workers,
)
from openvna.errors import OpenVNAError
from openvna.index.database import create_index_engine, upgrade_schema
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
    storage = FilesystemStorage(settings.storage_dir)
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
    stopped: bool = field(default=False)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.http.stop()
        stop_workers(self.dimse_workers)
        if self.ai_worker is not None:
            self.ai_worker.stop()
        self.dimse.stop()
        for shared in (self.dimse_socket, self.http_socket):
            if shared is not None:
                shared.close()
        self.monitor.stop()
        self.executor.shutdown(wait=True)
        self.archive.close()


def dimse_process_count(settings: Settings) -> int:
    """How many processes serve DIMSE: ``dimse.processes``, or one per core up to four."""
    if settings.dimse.processes:
        return settings.dimse.processes
    return max(1, min(4, os.cpu_count() or 1))


def start_archive(settings: Settings) -> RunningArchive:
    """Sweep what a crash left, then start DIMSE (in one or more processes), HTTP and the
    stability monitor."""
    archive, executor = open_archive(settings)
    sweep = archive.sweep()
    processes = dimse_process_count(settings)
    shared_socket: socket.socket | None = None
    http_socket: socket.socket | None = None
    balancer: AcceptBalancer | None = None
    workers: list[int] = []
    if processes > 1:
        try:
            shared_socket = dimse_listening_socket(settings.host, settings.dimse.port)
            http_socket = http_listening_socket(settings.host, settings.http.port)
        except OSError as error:
            if shared_socket is not None:
                shared_socket.close()
            archive.close()
            raise OpenVNAError(
                f"cannot listen for DICOM on {settings.host}:{settings.dimse.port}: {error}"
            ) from error
        except OpenVNAError:
            if shared_socket is not None:
                shared_socket.close()
            archive.close()
            raise
        balancer = AcceptBalancer(processes)
        archive.engine.dispose()  # no database connection may cross the fork
        workers = fork_workers(
            processes - 1,
            lambda slot: _run_worker(
                settings, shared_socket, http_socket, balancer, slot, processes
            ),
        )
    dimse = _dimse_server(settings, archive, shared_socket, balancer, processes)
    dimse_port = dimse.start()
    http = _http_server(settings, archive, dimse_port, http_socket)
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
    )


def _dimse_server(
    settings: Settings,
    archive: Archive,
    shared_socket: socket.socket | None,
    balancer: AcceptBalancer | None,
    processes: int,
) -> DimseServer:
    """The DIMSE server of one process (main or worker) over its own archive handle."""
    return DimseServer(
        settings,
        archive,
        peer_registry(settings),
        shared_socket=shared_socket,
        balancer=balancer,
        processes=processes,
    )


def _http_server(
    settings: Settings, archive: Archive, dimse_port: int, sock: socket.socket | None
) -> HttpServer:
    """The HTTP server of one process (main or worker) over its own archive handle."""
    endpoint = DicomEndpoint(settings.dimse.ae_title, settings.host, dimse_port)
    return HttpServer(
        create_app(archive, endpoint, settings.http), settings.host, settings.http.port, sock=sock
    )


def _run_worker(
    settings: Settings,
    shared_socket: socket.socket | None,
    http_socket: socket.socket | None,
    balancer: AcceptBalancer | None,
    slot: int,
    processes: int,
) -> None:
    """Body of a forked server process: its own index connections, the shared DIMSE and
    HTTP sockets (HTTP, like DIMSE, is GIL-bound in one process)."""
    assert balancer is not None
    balancer.slot = slot
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C: the main process stops us
    archive, executor = open_archive(settings, migrate=False)
    dimse = _dimse_server(settings, archive, shared_socket, balancer, processes)
    dimse_port = dimse.start()
    http: HttpServer | None = None
    if http_socket is not None:
        http = _http_server(settings, archive, dimse_port, http_socket)
        http.start()
    stop.wait()
    if http is not None:
        http.stop()
    dimse.stop()
    executor.shutdown(wait=True)
    archive.close()
