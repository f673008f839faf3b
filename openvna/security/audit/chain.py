"""The local audit trail: a hash chain of audit messages in the index (``audit_log``).

Each record's ``hash`` is HMAC-SHA256 over the previous record's hash, the record's
canonical fields and its message, keyed with a secret kept beside the data
(``<data_dir>/keys/audit-chain.key``, created mode 0600 on first use). Editing a record
breaks its own hash; deleting one breaks the link of the next; without the key neither
can be repaired. The last (seq, hash) is also kept, with its own MAC, in
``archive_state`` under ``audit.head``, so cutting records off the end is detected too
(:mod:`openvna.security.audit.verify`).

Adapters call :meth:`ChainedAuditTrail.record`, which only queues the event. A writer
thread renders the queued events to XML every ``security.audit.flush_interval`` seconds
and appends them in one transaction per batch. Several processes may append to the same
chain at once: the transaction first takes the database's write lock (SQLite ``BEGIN
IMMEDIATE``; PostgreSQL ``SELECT ... FOR UPDATE`` on the ``audit.head`` row), reads the
head, and only then numbers and links its records. :meth:`~ChainedAuditTrail.flush`
waits for what was recorded before it; :meth:`~ChainedAuditTrail.close` drains the queue
before returning, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from openvna.config import Settings
from openvna.index.schema import archive_state, audit_log
from openvna.security.audit import AuditEvent, AuditEventId
from openvna.security.audit.studies import study_facts, with_facts
from openvna.security.audit.xml import ArchiveIdentity, render, requestor_user_id

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
"""``prev_hash`` of the first record."""
HEAD_STATE = "audit.head"
"""``archive_state`` row holding the last record's seq and hash (and their MAC)."""
KEY_FILE = Path("keys") / "audit-chain.key"
_BATCH = 500
_RETRY_MAX = 5.0
_CLOSE_DEADLINE = 30.0


# -- the key --------------------------------------------------------------------------


def chain_key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def load_chain_key(data_dir: Path, *, create: bool = True) -> bytes:
    """The chain's HMAC key, created (32 random bytes, hex, mode 0600) on first use.

    Creation is atomic (a temporary file linked into place), so processes starting
    together agree on one key. Raises FileNotFoundError when ``create`` is false and
    there is no key.
    """
    path = chain_key_path(data_dir)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no audit chain key at {path}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, secrets.token_hex(32).encode("ascii") + b"\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, path)  # fails if another process won the race: use theirs
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


# -- records and their hashes -----------------------------------------------------------


@dataclass(frozen=True)
class ChainEntry:
    """A rendered record before it has a place in the chain."""

    recorded_at: float
    event_id: str
    event_action: str
    outcome: int
    user_id: str
    address: str
    study_uids: str
    message: str

    @classmethod
    def of(cls, event: AuditEvent, message: str) -> ChainEntry:
        return cls(
            recorded_at=round(event.recorded_at, 6),
            event_id=event.event_id.value,
            event_action=event.action,
            outcome=event.outcome,
            user_id=requestor_user_id(event)[:255],
            address=event.address[:64],
            study_uids=" ".join(dict.fromkeys(study.study_uid for study in event.studies)),
            message=message,
        )


@dataclass(frozen=True)
class ChainRecord(ChainEntry):
    """A record of ``audit_log``."""

    seq: int = 0
    prev_hash: str = GENESIS
    hash: str = ""

    def as_row(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "recorded_at": self.recorded_at,
            "event_id": self.event_id,
            "event_action": self.event_action,
            "outcome": self.outcome,
            "user_id": self.user_id,
            "address": self.address,
            "study_uids": self.study_uids,
            "message": self.message,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def record_hash(key: bytes, prev_hash: str, seq: int, entry: ChainEntry) -> str:
    """HMAC-SHA256(key, prev_hash || canonical fields || message), hex."""
    canonical = json.dumps(
        [
            seq,
            f"{entry.recorded_at:.6f}",
            entry.event_id,
            entry.event_action,
            entry.outcome,
            entry.user_id,
            entry.address,
            entry.study_uids,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(prev_hash.encode("ascii"))
    mac.update(b"\n")
    mac.update(canonical.encode("utf-8"))
    mac.update(b"\n")
    mac.update(entry.message.encode("utf-8"))
    return mac.hexdigest()


def head_mac(key: bytes, seq: int, record_hash_hex: str) -> str:
    return hmac.new(key, f"head:{seq}:{record_hash_hex}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    mac: str = ""

    def encode(self) -> str:
        return json.dumps({"seq": self.seq, "hash": self.hash, "mac": self.mac})

    @classmethod
    def decode(cls, value: str | None) -> Head | None:
        if not value:
            return None
        try:
            data = json.loads(value)
            return cls(int(data["seq"]), str(data["hash"]), str(data.get("mac", "")))
        except (ValueError, KeyError, TypeError):
            return None


def read_head(connection: Connection) -> Head | None:
    value = connection.execute(
        select(archive_state.c.value).where(archive_state.c.name == HEAD_STATE)
    ).scalar_one_or_none()
    return Head.decode(value)


# -- appending ------------------------------------------------------------------------------


class AuditChain:
    """Appends records to ``audit_log`` under the database's write lock."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self.key = key

    def append(self, entries: Sequence[ChainEntry]) -> list[ChainRecord]:
        """Link ``entries`` after the current head, in one transaction."""
        if not entries:
            return []
        with self.engine.connect() as connection:
            previous = self._lock_head(connection)
            records = []
            seq, prev_hash = previous
            for entry in entries:
                seq += 1
                digest = record_hash(self.key, prev_hash, seq, entry)
                records.append(
                    ChainRecord(**vars(entry), seq=seq, prev_hash=prev_hash, hash=digest)
                )
                prev_hash = digest
            connection.execute(insert(audit_log), [record.as_row() for record in records])
            head = Head(seq, prev_hash, head_mac(self.key, seq, prev_hash))
            connection.execute(
                update(archive_state)
                .where(archive_state.c.name == HEAD_STATE)
                .values(value=head.encode())
            )
            connection.commit()
        return records

    def _lock_head(self, connection: Connection) -> tuple[int, str]:
        """Take the chain's lock and return (last seq, last hash).

        The head row is created (empty) when missing, inside the lock. When the head is
        missing or behind the table (state lost or edited), numbering continues after
        the last record present so that no seq is reused; verify reports the damage.
        """
        dialect = connection.dialect.name
        if dialect == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            connection.execute(
                sqlite.insert(archive_state)
                .values(name=HEAD_STATE, value="")
                .on_conflict_do_nothing(index_elements=["name"])
            )
        elif dialect == "postgresql":
            connection.execute(
                postgresql.insert(archive_state)
                .values(name=HEAD_STATE, value="")
                .on_conflict_do_nothing(index_elements=["name"])
            )
            connection.execute(
                select(archive_state.c.value)
                .where(archive_state.c.name == HEAD_STATE)
                .with_for_update()
            )
        else:  # pragma: no cover - the index runs on SQLite or PostgreSQL only
            raise NotImplementedError(f"audit chain on {dialect}")
        head = read_head(connection)
        last = connection.execute(
            select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).one_or_none()
        if head is not None and (last is None or head.seq >= last.seq):
            return head.seq, head.hash
        if last is not None:
            return int(last.seq), str(last.hash)
        return 0, GENESIS


# -- the trail adapters record into --------------------------------------------------------


_COALESCED = frozenset({AuditEventId.INSTANCES_TRANSFERRED, AuditEventId.INSTANCES_ACCESSED})


def coalesce(events: list[AuditEvent]) -> list[AuditEvent]:
    """One record for retrievals of a batch that differ only in their time.

    A viewer opening a study asks for each of its frames: hundreds of requests by one
    user for one study within a fraction of a second, each classified as the same
    Instances Transferred event. PS3.15 A.5.3 lets such a message stand for a set of
    transfers; the record keeps the first time and says how many requests it covers,
    and the writer renders and hashes one message instead of hundreds. Only reads
    (Instances Transferred or Accessed, action R) are merged: each query, store and
    security event stays a record of its own.
    """
    counts: dict[object, int] = {}
    first: dict[object, AuditEvent] = {}
    for position, event in enumerate(events):
        mergeable = event.event_id in _COALESCED and event.action == "R"
        key: object = dataclasses.replace(event, recorded_at=0.0) if mergeable else position
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, event)
    merged = []
    for key, event in first.items():
        count = counts[key]
        if count > 1:
            note = f"{count} requests"
            event = dataclasses.replace(
                event, description=f"{event.description}; {note}" if event.description else note
            )
        merged.append(event)
    return merged


class ChainedAuditTrail:
    """:class:`~openvna.security.audit.AuditTrail` writing to the local hash chain."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        identity: ArchiveIdentity | None = None,
        key: bytes | None = None,
    ) -> None:
        self.identity = identity or ArchiveIdentity.from_settings(settings)
        self.engine = engine
        self._data_dir = settings.data_dir
        self._key = key
        self._chain: AuditChain | None = None
        self.interval = settings.security.audit.flush_interval
        self._queue: collections.deque[AuditEvent | threading.Event] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False

    # -- AuditTrail ---------------------------------------------------------------------
    def record(self, event: AuditEvent) -> None:
        """Queue ``event``; never blocks on I/O."""
        if self._closed:
            logger.warning("audit event after close: written synchronously")
            self._write([event], deadline=time.monotonic() + _CLOSE_DEADLINE)
            return
        self._queue.append(event)
        if self._thread is None:
            self._start()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event recorded before this call is in the chain, or at most
        ``timeout`` seconds (then logging that the database does not take them yet)."""
        if self._closed:
            return
        written = threading.Event()
        self._queue.append(written)
        self._start()
        self._wake.set()
        if not written.wait(timeout):
            logger.warning("audit records not written after %.0fs; still queued", timeout)

    def close(self) -> None:
        """Write everything queued, then stop the writer.

        While closing the writer gives up on a batch the database keeps refusing after
        30 seconds (logging how many records were lost) so that shutdown cannot hang.
        """
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join()
        self._closed = True

    @property
    def chain(self) -> AuditChain:
        """The chain, its key read (or created) on first use rather than at start-up."""
        if self._chain is None:
            self._chain = AuditChain(self.engine, self._key or load_chain_key(self._data_dir))
        return self._chain

    # -- the writer thread ------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="openvna-audit-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            while self._queue:
                events: list[AuditEvent] = []
                markers: list[threading.Event] = []
                while self._queue and len(events) < _BATCH:
                    item = self._queue.popleft()
                    if isinstance(item, threading.Event):
                        markers.append(item)
                        if events:
                            break  # write what precedes the marker, then release it
                    else:
                        events.append(item)
                deadline = time.monotonic() + _CLOSE_DEADLINE if self._closing else None
                self._write(events, deadline=deadline)
                for marker in markers:
                    marker.set()
            if self._closing and not self._queue:
                return

    def _write(self, events: list[AuditEvent], *, deadline: float | None) -> None:
        """Render and append ``events``; retry while the database refuses.

        With a ``deadline`` (shutting down) it gives up then, logging what was lost.
        """
        if not events:
            return
        entries = self._render(coalesce(events))
        delay = 0.1
        while True:
            try:
                self.chain.append(entries)
                return
            except Exception:
                if deadline is not None and time.monotonic() + delay > deadline:
                    logger.exception("%d audit records could not be written", len(entries))
                    return
                logger.exception("audit records not written yet; retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    def _render(self, events: list[AuditEvent]) -> list[ChainEntry]:
        try:
            facts = study_facts(self.engine, (s.study_uid for e in events for s in e.studies))
        except Exception:  # the index is down: render with what the events carry
            logger.exception("study facts for audit records unavailable")
            facts = {}
        entries = []
        for event in events:
            complete = with_facts(event, facts)
            try:
                message = render(complete, self.identity)
            except Exception:  # a bug in rendering must not lose the record
                logger.exception("audit event %s could not be rendered fully", event.event_id)
                message = render(
                    AuditEvent(
                        event.event_id,
                        event.action,
                        outcome=event.outcome,
                        requestor=event.requestor,
                        address=event.address,
                        description=f"rendering failed; {event.description}",
                        recorded_at=event.recorded_at,
                    ),
                    self.identity,
                )
            entries.append(ChainEntry.of(complete, message))
        return entries
