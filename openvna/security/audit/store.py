"""Reading the audit log: filtered lists for people, ordered runs for forwarding.

Used by ``openvna audit list/export``, ``GET /api/audit/events`` and the syslog
forwarder. Writing is :mod:`openvna.security.audit.chain`'s alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Row, literal, select

from openvna.index.schema import audit_log
from openvna.security.audit import AuditEventId

MAX_LIMIT = 1000


@dataclass(frozen=True)
class AuditRecord:
    """One row of ``audit_log`` as readers see it."""

    seq: int
    recorded_at: float
    event_id: str
    event_action: str
    outcome: int
    user_id: str
    address: str
    study_uids: tuple[str, ...]
    message: str

    @property
    def event_name(self) -> str:
        try:
            return AuditEventId(self.event_id).meaning
        except ValueError:
            return self.event_id

    @property
    def recorded_iso(self) -> str:
        return datetime.fromtimestamp(self.recorded_at, UTC).isoformat(timespec="milliseconds")

    def as_json(self, *, with_message: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "seq": self.seq,
            "recordedAt": self.recorded_iso,
            "eventId": self.event_id,
            "event": self.event_name,
            "action": self.event_action,
            "outcome": self.outcome,
            "userId": self.user_id,
            "address": self.address,
            "studies": list(self.study_uids),
        }
        if with_message:
            data["message"] = self.message
        return data


@dataclass(frozen=True)
class AuditFilter:
    """Which records to list; every field narrows, None/empty means any."""

    since: float | None = None
    until: float | None = None
    event_id: str = ""
    user_id: str = ""
    study_uid: str = ""
    outcome: int | None = None
    after_seq: int = 0
    limit: int = 100
    offset: int = 0


def parse_time(text: str) -> float:
    """A moment given as an ISO 8601 date or date-time (UTC unless it names an offset),
    ``YYYYMMDD``, or seconds since the epoch."""
    value = text.strip()
    try:
        if value.replace(".", "", 1).isdigit() and len(value) != 8:
            return float(value)
        return _iso(value)
    except (ValueError, OverflowError) as error:
        raise ValueError(
            f"{text!r} is not a date or time (e.g. 2025-01-31 or 2025-01-31T08:00:00Z)"
        ) from error


def _iso(value: str) -> float:
    if len(value) == 8 and value.isdigit():
        value = f"{value[:4]}-{value[4:6]}-{value[6:]}"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def resolve_event_id(text: str) -> str:
    """An event ID from its code (``110112``) or its name (``query``, ``Security Alert``)."""
    wanted = text.strip()
    for event_id in AuditEventId:
        if wanted == event_id.value or wanted.casefold() in (
            event_id.meaning.casefold(),
            event_id.name.casefold(),
            event_id.name.replace("_", "-").casefold(),
        ):
            return event_id.value
    raise ValueError(f"unknown audit event {text!r} (a DCM code 110100-110114 or its name)")


def query_records(engine: Engine, where: AuditFilter) -> list[AuditRecord]:
    """Records matching ``where``, in chain order (seq ascending)."""
    statement = select(audit_log).where(audit_log.c.seq > where.after_seq)
    if where.since is not None:
        statement = statement.where(audit_log.c.recorded_at >= where.since)
    if where.until is not None:
        statement = statement.where(audit_log.c.recorded_at < where.until)
    if where.event_id:
        statement = statement.where(audit_log.c.event_id == where.event_id)
    if where.user_id:
        statement = statement.where(audit_log.c.user_id == where.user_id)
    if where.outcome is not None:
        statement = statement.where(audit_log.c.outcome == where.outcome)
    if where.study_uid:
        # study_uids is space-separated: match a whole UID, not a prefix of another
        padded = literal(" ") + audit_log.c.study_uids + literal(" ")
        statement = statement.where(padded.contains(f" {where.study_uid} ", autoescape=True))
    statement = statement.order_by(audit_log.c.seq).offset(max(0, where.offset))
    statement = statement.limit(max(0, min(where.limit, MAX_LIMIT)))
    with engine.connect() as connection:
        return [_record(row) for row in connection.execute(statement)]


def records_after(engine: Engine, seq: int, limit: int = 100) -> list[AuditRecord]:
    """The next ``limit`` records after ``seq`` (forwarding, export)."""
    return query_records(engine, AuditFilter(after_seq=seq, limit=limit))


def _record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        seq=int(row.seq),
        recorded_at=float(row.recorded_at),
        event_id=str(row.event_id),
        event_action=str(row.event_action),
        outcome=int(row.outcome),
        user_id=str(row.user_id),
        address=str(row.address),
        study_uids=tuple(str(row.study_uids).split()),
        message=str(row.message),
    )
