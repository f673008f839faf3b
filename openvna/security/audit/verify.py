"""Walk the audit hash chain and report the first record that does not hold.

A record holds when its seq follows the previous one, its ``prev_hash`` is the
previous record's hash, and its ``hash`` is the HMAC of its own content
(:func:`~openvna.security.audit.chain.record_hash`). After the last record, the head
kept in ``archive_state`` must name that record, with a MAC only the key can make.
What each failure means:

* a record whose hash does not match its content was **edited**;
* a gap in the seqs, or a ``prev_hash`` that is not the previous hash, means records
  were **deleted** (or inserted) there;
* a head beyond the last record means the **tail was cut off**; a head that does not
  match its MAC was itself edited.

Records are read in seq order, in batches, so memory stays flat with the log's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select

from openvna.index.schema import audit_log
from openvna.security.audit.chain import (
    GENESIS,
    ChainEntry,
    Head,
    chain_key_path,
    head_mac,
    load_chain_key,
    read_head,
    record_hash,
)

_READ_BATCH = 1000


@dataclass(frozen=True)
class ChainReport:
    """The outcome of a walk: ``broken_seq`` is None when the chain holds."""

    records: int
    last_seq: int
    broken_seq: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_seq is None

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "records": self.records,
            "lastSeq": self.last_seq,
            "brokenSeq": self.broken_seq,
            "problem": self.problem,
        }


def verify_archive(engine: Engine, data_dir: Path) -> ChainReport:
    """Verify the chain of the archive at ``data_dir`` with its key."""
    try:
        key = load_chain_key(data_dir, create=False)
    except FileNotFoundError:
        with engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(audit_log)).scalar_one()
            head = read_head(connection)
        if count or head is not None:
            return ChainReport(
                0, 0, 1, f"the audit chain key {chain_key_path(data_dir)} is missing"
            )
        return ChainReport(0, 0)
    return verify_chain(engine, key)


def verify_chain(engine: Engine, key: bytes) -> ChainReport:
    """Check every record of ``audit_log`` and the head; stop at the first failure."""
    count = 0
    expected_seq = 1
    prev_hash = GENESIS
    with engine.connect() as connection:
        head = read_head(connection)
        after = 0
        while True:
            rows = connection.execute(
                select(audit_log)
                .where(audit_log.c.seq > after)
                .order_by(audit_log.c.seq)
                .limit(_READ_BATCH)
            ).all()
            if not rows:
                break
            for row in rows:
                seq = int(row.seq)
                if seq != expected_seq:
                    return ChainReport(
                        count,
                        expected_seq - 1,
                        expected_seq,
                        f"record {expected_seq} is missing (deleted): the chain jumps "
                        f"from {expected_seq - 1} to {seq}",
                    )
                entry = ChainEntry(
                    recorded_at=float(row.recorded_at),
                    event_id=row.event_id,
                    event_action=row.event_action,
                    outcome=int(row.outcome),
                    user_id=row.user_id,
                    address=row.address,
                    study_uids=row.study_uids,
                    message=row.message,
                )
                if row.prev_hash != prev_hash:
                    return ChainReport(
                        count,
                        seq - 1,
                        seq,
                        f"record {seq} does not link to record {seq - 1} (a record was "
                        "deleted or replaced before it)",
                    )
                if record_hash(key, prev_hash, seq, entry) != row.hash:
                    return ChainReport(
                        count, seq - 1, seq, f"record {seq} was edited (its hash does not match)"
                    )
                prev_hash = row.hash
                expected_seq = seq + 1
                count += 1
            after = expected_seq - 1
    last_seq = expected_seq - 1
    return _check_head(count, last_seq, prev_hash, head, key)


def _check_head(
    count: int, last_seq: int, last_hash: str, head: Head | None, key: bytes
) -> ChainReport:
    if head is None:
        if count:
            return ChainReport(
                count, last_seq, 1, "the chain head (archive_state audit.head) is missing"
            )
        return ChainReport(0, 0)
    if head.mac != head_mac(key, head.seq, head.hash):
        return ChainReport(
            count, last_seq, head.seq, "the chain head (archive_state audit.head) was edited"
        )
    if head.seq > last_seq:
        return ChainReport(
            count,
            last_seq,
            last_seq + 1,
            f"records {last_seq + 1} to {head.seq} are missing (the tail was cut off)",
        )
    if head.seq < last_seq or head.hash != last_hash:
        return ChainReport(
            count,
            last_seq,
            head.seq + 1,
            f"record {head.seq + 1} onwards are not covered by the chain head",
        )
    return ChainReport(count, last_seq)
