"""SQL of the UPS workitems, their subscriptions and event log (PS3.4 Annex CC).

Every function takes an open :class:`~sqlalchemy.engine.Connection`, so a state change,
its event reports and the linked AI job change commit together (or not at all), whether
the transaction is the UPS-RS handler's or the AI orchestrator's.

Concurrency: :func:`lock_workitem` starts with a write (a no-op UPDATE) on the workitem
row. In SQLite that takes the database write lock before anything is read, so a read-
decide-write sequence never races another process (and never hits SQLITE_BUSY_SNAPSHOT);
in PostgreSQL it takes the row lock. Linked AI job rows are locked first, in the same
order the AI worker uses (job, then workitem), so the two cannot deadlock each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, delete, exists, func, insert, select, update

from openvna.index.schema import ai_jobs, ups_events, ups_subscriptions, ups_workitems


@dataclass(frozen=True)
class WorkitemRow:
    pk: int
    uid: str
    state: str
    transaction_uid: str | None
    dataset: dict[str, Any]
    job_pk: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class EventRow:
    pk: int
    workitem_uid: str
    event_type_id: int
    information: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class SubscriptionRow:
    subscriber_aet: str
    workitem_uid: str
    deletion_lock: bool
    filter_text: str
    suspended: bool


@dataclass(frozen=True)
class JobLink:
    """The AI job behind a workitem, as far as UPS needs to know it."""

    pk: int
    state: str
    worker: str


class DuplicateWorkitemError(Exception):
    """The SOP Instance UID is already a workitem."""


_COLUMNS = (
    ups_workitems.c.pk,
    ups_workitems.c.sop_instance_uid,
    ups_workitems.c.state,
    ups_workitems.c.transaction_uid,
    ups_workitems.c.dataset_json,
    ups_workitems.c.job_pk,
    ups_workitems.c.created_at,
    ups_workitems.c.updated_at,
)


def _workitem(row: Any) -> WorkitemRow:
    return WorkitemRow(
        int(row.pk),
        row.sop_instance_uid,
        row.state,
        row.transaction_uid,
        json.loads(row.dataset_json),
        row.job_pk,
        float(row.created_at),
        float(row.updated_at),
    )


def _dumps(dataset: Mapping[str, Any]) -> str:
    return json.dumps(dataset, ensure_ascii=False, separators=(",", ":"))


# -- workitems ----------------------------------------------------------------------------


def insert_workitem(
    connection: Connection,
    *,
    uid: str,
    dataset: Mapping[str, Any],
    columns: Mapping[str, Any],
    job_pk: int | None,
    now: float,
) -> int:
    """Insert a new workitem; raises :class:`DuplicateWorkitemError` when the UID exists.

    A concurrent insert of the same UID that slips past the check fails the transaction
    with the unique constraint's IntegrityError instead (callers translate it).
    """
    if workitem(connection, uid) is not None:
        raise DuplicateWorkitemError(uid)
    result = connection.execute(
        insert(ups_workitems).values(
            sop_instance_uid=uid,
            transaction_uid=None,
            dataset_json=_dumps(dataset),
            job_pk=job_pk,
            created_at=now,
            updated_at=now,
            **columns,
        )
    )
    primary_key = result.inserted_primary_key
    assert primary_key is not None
    return int(primary_key[0])


def workitem(connection: Connection, uid: str) -> WorkitemRow | None:
    row = connection.execute(
        select(*_COLUMNS).where(ups_workitems.c.sop_instance_uid == uid)
    ).first()
    return _workitem(row) if row is not None else None


def job_pk_of(connection: Connection, uid: str) -> int | None:
    """The linked job (immutable once created), read without a lock."""
    return connection.execute(
        select(ups_workitems.c.job_pk).where(ups_workitems.c.sop_instance_uid == uid)
    ).scalar()


def lock_workitem(connection: Connection, uid: str) -> WorkitemRow | None:
    """Lock the workitem (and its AI job first) for a read-decide-write; see module doc."""
    job_pk = job_pk_of(connection, uid)
    if job_pk is not None:
        connection.execute(update(ai_jobs).where(ai_jobs.c.pk == job_pk).values(pk=ai_jobs.c.pk))
    connection.execute(
        update(ups_workitems)
        .where(ups_workitems.c.sop_instance_uid == uid)
        .values(pk=ups_workitems.c.pk)
    )
    return workitem(connection, uid)


def save_workitem(
    connection: Connection,
    pk: int,
    *,
    dataset: Mapping[str, Any],
    columns: Mapping[str, Any],
    transaction_uid: str | None,
    now: float,
) -> None:
    connection.execute(
        update(ups_workitems)
        .where(ups_workitems.c.pk == pk)
        .values(
            dataset_json=_dumps(dataset),
            transaction_uid=transaction_uid,
            updated_at=now,
            **columns,
        )
    )


_PRIORITY_ORDER = case(
    (ups_workitems.c.priority == "HIGH", 0),
    (ups_workitems.c.priority == "MEDIUM", 1),
    else_=2,
)


def candidates(
    connection: Connection,
    columns: Mapping[str, Sequence[str]],
    *,
    states: Sequence[str] | None = None,
    batch: int = 500,
) -> Iterator[WorkitemRow]:
    """Workitems whose columns hold one of the given values, in worklist order: HIGH
    priority first, then the earliest scheduled start, then the oldest."""
    statement = select(*_COLUMNS)
    for name, accepted in columns.items():
        statement = statement.where(ups_workitems.c[name].in_(list(accepted)))
    if states is not None:
        statement = statement.where(ups_workitems.c.state.in_(list(states)))
    statement = statement.order_by(
        _PRIORITY_ORDER, ups_workitems.c.scheduled_start, ups_workitems.c.pk
    )
    result = connection.execution_options(yield_per=batch).execute(statement)
    for row in result:
        yield _workitem(row)


# -- events -------------------------------------------------------------------------------


def insert_event(
    connection: Connection,
    *,
    workitem_uid: str,
    event_type_id: int,
    information: Mapping[str, Any],
    now: float,
    subscriber_aet: str | None = None,
) -> None:
    connection.execute(
        insert(ups_events).values(
            workitem_uid=workitem_uid,
            event_type_id=event_type_id,
            event_json=_dumps(information),
            subscriber_aet=subscriber_aet,
            created_at=now,
        )
    )


_EVENT_COLUMNS = (
    ups_events.c.pk,
    ups_events.c.workitem_uid,
    ups_events.c.event_type_id,
    ups_events.c.event_json,
    ups_events.c.created_at,
)


def _event_row(row: Any) -> EventRow:
    return EventRow(
        int(row.pk),
        row.workitem_uid,
        int(row.event_type_id),
        json.loads(row.event_json),
        float(row.created_at),
    )


def last_event_pk(connection: Connection) -> int:
    return int(connection.execute(select(func.coalesce(func.max(ups_events.c.pk), 0))).scalar_one())


def events_for(
    connection: Connection, subscriber_aet: str, after_pk: int, limit: int = 200
) -> list[EventRow]:
    """Events after ``after_pk`` for workitems ``subscriber_aet`` subscribed to when the
    event happened, oldest first (a worklist subscription subscribes it to each workitem,
    so one join answers)."""
    subscribed = exists().where(
        ups_subscriptions.c.subscriber_aet == subscriber_aet,
        ups_subscriptions.c.workitem_uid == ups_events.c.workitem_uid,
        ups_subscriptions.c.created_at <= ups_events.c.created_at,
    )
    rows = connection.execute(
        select(*_EVENT_COLUMNS)
        .where(
            ups_events.c.pk > after_pk,
            subscribed,
            (ups_events.c.subscriber_aet.is_(None))
            | (ups_events.c.subscriber_aet == subscriber_aet),
        )
        .order_by(ups_events.c.pk)
        .limit(limit)
    ).all()
    return [_event_row(r) for r in rows]


def events_of(connection: Connection, workitem_uid: str) -> list[EventRow]:
    """The event log of one workitem, oldest first."""
    rows = connection.execute(
        select(*_EVENT_COLUMNS)
        .where(ups_events.c.workitem_uid == workitem_uid)
        .order_by(ups_events.c.pk)
    ).all()
    return [_event_row(r) for r in rows]


# -- subscriptions ------------------------------------------------------------------------


def upsert_subscription(
    connection: Connection,
    *,
    subscriber_aet: str,
    workitem_uid: str,
    deletion_lock: bool,
    filter_text: str,
    now: float,
) -> bool:
    """Create or renew a subscription (renewing resumes a suspended one); true if new."""
    updated = connection.execute(
        update(ups_subscriptions)
        .where(
            ups_subscriptions.c.subscriber_aet == subscriber_aet,
            ups_subscriptions.c.workitem_uid == workitem_uid,
        )
        .values(deletion_lock=deletion_lock, filter_json=filter_text, suspended=False)
    ).rowcount
    if updated:
        return False
    connection.execute(
        insert(ups_subscriptions).values(
            subscriber_aet=subscriber_aet,
            workitem_uid=workitem_uid,
            deletion_lock=deletion_lock,
            filter_json=filter_text,
            suspended=False,
            created_at=now,
        )
    )
    return True


def subscribe_if_absent(
    connection: Connection,
    *,
    subscriber_aet: str,
    workitem_uid: str,
    deletion_lock: bool,
    now: float,
) -> bool:
    """Subscribe to one workitem unless already subscribed; true if new."""
    found = connection.execute(
        select(ups_subscriptions.c.pk).where(
            ups_subscriptions.c.subscriber_aet == subscriber_aet,
            ups_subscriptions.c.workitem_uid == workitem_uid,
        )
    ).first()
    if found is not None:
        return False
    connection.execute(
        insert(ups_subscriptions).values(
            subscriber_aet=subscriber_aet,
            workitem_uid=workitem_uid,
            deletion_lock=deletion_lock,
            filter_json="",
            suspended=False,
            created_at=now,
        )
    )
    return True


def delete_subscription(connection: Connection, subscriber_aet: str, workitem_uid: str) -> int:
    return connection.execute(
        delete(ups_subscriptions).where(
            ups_subscriptions.c.subscriber_aet == subscriber_aet,
            ups_subscriptions.c.workitem_uid == workitem_uid,
        )
    ).rowcount


def delete_all_subscriptions(connection: Connection, subscriber_aet: str) -> int:
    return connection.execute(
        delete(ups_subscriptions).where(ups_subscriptions.c.subscriber_aet == subscriber_aet)
    ).rowcount


def suspend_subscription(connection: Connection, subscriber_aet: str, workitem_uid: str) -> int:
    return connection.execute(
        update(ups_subscriptions)
        .where(
            ups_subscriptions.c.subscriber_aet == subscriber_aet,
            ups_subscriptions.c.workitem_uid == workitem_uid,
        )
        .values(suspended=True)
    ).rowcount


def subscriptions(
    connection: Connection,
    *,
    workitem_uids: Sequence[str] | None = None,
    subscriber_aet: str | None = None,
) -> list[SubscriptionRow]:
    statement = select(
        ups_subscriptions.c.subscriber_aet,
        ups_subscriptions.c.workitem_uid,
        ups_subscriptions.c.deletion_lock,
        ups_subscriptions.c.filter_json,
        ups_subscriptions.c.suspended,
    ).order_by(ups_subscriptions.c.pk)
    if workitem_uids is not None:
        statement = statement.where(ups_subscriptions.c.workitem_uid.in_(list(workitem_uids)))
    if subscriber_aet is not None:
        statement = statement.where(ups_subscriptions.c.subscriber_aet == subscriber_aet)
    return [
        SubscriptionRow(
            r.subscriber_aet,
            r.workitem_uid,
            bool(r.deletion_lock),
            r.filter_json,
            bool(r.suspended),
        )
        for r in connection.execute(statement)
    ]


# -- the linked AI job --------------------------------------------------------------------


def job_link(connection: Connection, job_pk: int) -> JobLink | None:
    row = connection.execute(
        select(ai_jobs.c.pk, ai_jobs.c.state, ai_jobs.c.worker).where(ai_jobs.c.pk == job_pk)
    ).first()
    return JobLink(int(row.pk), row.state, row.worker) if row is not None else None


def update_job(
    connection: Connection, job_pk: int, *, only_in: Sequence[str] | None = None, **values: Any
) -> bool:
    """Update the AI job row (optionally only while in one of ``only_in`` states)."""
    statement = update(ai_jobs).where(ai_jobs.c.pk == job_pk)
    if only_in is not None:
        statement = statement.where(ai_jobs.c.state.in_(list(only_in)))
    return bool(connection.execute(statement.values(**values)).rowcount)


def claim_job(connection: Connection, job_pk: int, *, worker: str, now: float) -> bool:
    """An external performer takes a scheduled job; false when it is no longer scheduled
    (the archive's own worker took it, or it ended)."""
    return update_job(
        connection,
        job_pk,
        only_in=("scheduled",),
        state="running",
        worker=worker,
        started_at=now,
        attempts=ai_jobs.c.attempts + 1,
    )
