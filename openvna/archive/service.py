"""The archive core that every adapter calls: ingest, query, retrieve, verify, recover."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import Engine

from openvna.archive.events import EventBus, StudyStable
from openvna.archive.ingest import ExpectedIdentity, Ingestor, IngestResult, Origin
from openvna.archive.pixels import PixelStore
from openvna.archive.query import Query
from openvna.config import Settings
from openvna.index import access_repository
from openvna.index.repository import IndexRepository
from openvna.index.search import IndexSearch, RetrievableInstance, find_retrievable
from openvna.security.context import build_security
from openvna.storage.base import Storage

if TYPE_CHECKING:
    from openvna.security.authz import StudyAccess

logger = logging.getLogger(__name__)

_LAST_SWEEP = "last_clean_start"


@dataclass(frozen=True)
class VerifyProblem:
    sop_instance_uid: str
    storage_key: str
    problem: str


@dataclass(frozen=True)
class SweepReport:
    temporary_removed: int
    orphans_removed: int
    skipped: bool = False


class Archive:
    """Facade over ingest, index and storage; the only thing adapters talk to."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        storage: Storage,
        bus: EventBus,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.bus = bus
        self.repository = IndexRepository(engine)
        self.index = IndexSearch(engine)
        self.ingestor = Ingestor(
            storage,
            self.repository,
            bus,
            settings.ingest,
            max_compression_ratio=settings.http.max_compression_ratio,
        )
        self.pixels = PixelStore(engine, storage)
        """Frame reads with their fragment-table cache, shared by every pixel endpoint."""
        self.security = build_security(settings, engine)
        """Authentication, authorisation and audit for every adapter of this process."""

    def close(self) -> None:
        """Release the index connections and this process's claim on storage."""
        self.security.close()
        self.engine.dispose()
        self.storage.close()

    # -- status ------------------------------------------------------------------------
    def counts(self, access: StudyAccess | None = None) -> dict[str, int]:
        """Patients, studies, series and instances in the index (full counts: not for
        hot paths); with ``access``, of the studies that principal may see."""
        if access is not None:
            return access_repository.visible_counts(self.engine, access)
        return self.repository.counts()

    def check_index(self) -> None:
        """Raise when the index does not answer; cheap enough for every health probe."""
        self.repository.ping()

    # -- ingest ------------------------------------------------------------------------
    def ingest_file(
        self, source: BinaryIO, *, origin: Origin, expected: ExpectedIdentity | None = None
    ) -> IngestResult:
        return self.ingestor.ingest_file(source, origin=origin, expected=expected)

    # -- query -------------------------------------------------------------------------
    def search(self, query: Query) -> Iterator[dict[str, Any]]:
        return self.index.search(query)

    # -- retrieve ----------------------------------------------------------------------
    def find_retrievable(
        self, *, access: StudyAccess | None = None, **unique_keys: tuple[str, ...]
    ) -> list[RetrievableInstance]:
        """Instances under the unique keys; with ``access``, of visible studies only."""
        return find_retrievable(self.engine, access=access, **unique_keys)

    def open_instance(self, instance: RetrievableInstance) -> BinaryIO:
        return self.storage.open(instance.storage_key)

    # -- integrity ---------------------------------------------------------------------
    def verify(self) -> Iterator[tuple[str, VerifyProblem | None]]:
        """Re-hash every stored object; yields (sop_instance_uid, problem or None)."""
        for sop_instance_uid, key, expected in self.repository.iter_stored():
            try:
                digest = hashlib.sha256()
                with self.storage.open(key) as stored:
                    while chunk := stored.read(1024 * 1024):
                        digest.update(chunk)
            except Exception as error:
                yield sop_instance_uid, VerifyProblem(sop_instance_uid, key, f"unreadable: {error}")
                continue
            if digest.hexdigest() != expected:
                yield (
                    sop_instance_uid,
                    VerifyProblem(sop_instance_uid, key, "content hash mismatch (SHA-256)"),
                )
            else:
                yield sop_instance_uid, None

    def sweep(self) -> SweepReport:
        """Remove what a crash left behind: temp files and objects no index row references.

        Only shards changed since the last clean start are listed, so the sweep costs
        little on a large archive. Run before accepting connections; skipped while another
        process (an import, a second server) uses the same storage.
        """
        with self.storage.maintenance() as alone:
            if not alone:
                logger.info("another process uses this storage: start-up sweep skipped")
                return SweepReport(temporary_removed=0, orphans_removed=0, skipped=True)
            started = time.time()
            temporary = self.storage.sweep_temporary()
            last = self.repository.get_state(_LAST_SWEEP)
            since = float(last) - 5.0 if last else None
            orphans = 0
            for key in self.storage.iter_keys(modified_since=since):
                if not self.repository.is_key_referenced(key):
                    self.storage.delete(key)
                    orphans += 1
            self.repository.set_state(_LAST_SWEEP, repr(started))
        if temporary or orphans:
            logger.warning(
                "start-up sweep removed %d temporary and %d orphan objects", temporary, orphans
            )
        return SweepReport(temporary_removed=temporary, orphans_removed=orphans)

    # -- stability ---------------------------------------------------------------------
    def check_stability(self, now: float | None = None) -> list[str]:
        """Mark studies quiet for ``stable_after`` seconds as stable; emit StudyStable."""
        cutoff = (now if now is not None else time.time()) - self.settings.stable_after
        became_stable = []
        for study_pk, study_uid in self.repository.unstable_studies_quiet_since(cutoff):
            if self.repository.mark_stable(study_pk, cutoff):
                became_stable.append(study_uid)
                self.bus.publish(StudyStable(study_instance_uid=study_uid))
        return became_stable


class StabilityMonitor:
    """Background thread calling :meth:`Archive.check_stability` periodically."""

    def __init__(self, archive: Archive, interval: float | None = None) -> None:
        self._archive = archive
        stable_after = archive.settings.stable_after
        self._interval = interval if interval is not None else max(0.2, min(5.0, stable_after / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openvna-stability", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._archive.check_stability()
            except Exception:
                logger.exception("stability check failed")
