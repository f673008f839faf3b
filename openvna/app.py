"""Composition root: builds the core, the adapters and the workers from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from openvna.archive.events import EventBus
from openvna.archive.service import Archive, StabilityMonitor, SweepReport
from openvna.config import Settings
from openvna.dimse.peers import PeerRegistry
from openvna.dimse.server import DimseServer
from openvna.index.database import create_index_engine, upgrade_schema
from openvna.storage.filesystem import FilesystemStorage
from openvna.tasks.inprocess import InProcessExecutor
from openvna.web.app import DicomEndpoint, create_app
from openvna.web.server import HttpServer

logger = logging.getLogger(__name__)


def open_archive(settings: Settings) -> tuple[Archive, InProcessExecutor]:
    """The archive core on its index and storage, schema migrated, with an event bus."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings.index_url, sqlite_synchronous=settings.sqlite_synchronous)
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
    http: HttpServer
    monitor: StabilityMonitor
    dimse_port: int
    http_port: int
    sweep: SweepReport
    stopped: bool = field(default=False)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.http.stop()
        self.dimse.stop()
        self.monitor.stop()
        self.executor.shutdown(wait=True)
        self.archive.close()


def start_archive(settings: Settings) -> RunningArchive:
    """Sweep what a crash left, then start DIMSE, HTTP and the stability monitor."""
    archive, executor = open_archive(settings)
    sweep = archive.sweep()
    dimse = DimseServer(settings, archive, peer_registry(settings))
    dimse_port = dimse.start()
    endpoint = DicomEndpoint(settings.dimse.ae_title, settings.host, dimse_port)
    http = HttpServer(create_app(archive, endpoint), settings.host, settings.http.port)
    try:
        http_port = http.start()
    except Exception:
        dimse.stop()
        raise
    monitor = StabilityMonitor(archive)
    monitor.start()
    return RunningArchive(archive, executor, dimse, http, monitor, dimse_port, http_port, sweep)
