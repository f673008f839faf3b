"""Writes to the index: one transaction per stored instance.

All SQL that changes the index lives here (ARCHITECTURE.md property 3). The duplicate
decision is made inside the transaction that would insert the row, so two associations
sending the same SOP Instance UID at once cannot both win.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine, String, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

from openvna.archive.attributes import (
    INDEXED_ATTRIBUTES,
    Level,
    column_value,
    normalize_person_name,
)
from openvna.config import DuplicatePolicy
from openvna.index.schema import archive_state, instances, patients, series, studies
from openvna.storage.base import StoredObject

logger = logging.getLogger(__name__)


class StoreOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE_SAME = "duplicate-same"
    DUPLICATE_REJECTED = "duplicate-rejected"
    OVERWRITTEN = "overwritten"
    NEW_VERSION = "new-version"


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one stored instance."""

    header: dict[str, Any]
    header_text: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    stored: StoredObject
    calling_aet: str
    received_at: float
    pixel_data_offset: int | None = None
    """Offset of the Pixel Data value in the stored file (None: none, or not addressable)."""
    pixel_data_length: int | None = None
    """Its value length; 0xFFFFFFFF when encapsulated (PS3.5 A.4)."""


class _StoreTicket:
    """One instance waiting for the group commit, and what became of it."""

    __slots__ = ("done", "error", "policy", "record", "result")

    def __init__(self, record: InstanceRecord, policy: DuplicatePolicy) -> None:
        self.record = record
        self.policy = policy
        self.done = False
        self.result: StoreResult | None = None
        self.error: Exception | None = None

    def finish(self, result: StoreResult | None, error: Exception | None) -> None:
        self.result, self.error, self.done = result, error, True


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    obsolete_key: str | None
    """A storage key no longer referenced after this transaction (delete it)."""
    study_is_new: bool = False


def _level_values(header: dict[str, Any], level: Level) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in INDEXED_ATTRIBUTES:
        if attribute.level is level:
            values[attribute.column] = column_value(attribute, header)
    return values


def _clip(table_columns: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Truncate strings to the column length: real-world values overrun their VR limits.

    NUL characters are dropped: no text VR allows them, and PostgreSQL text cannot hold
    them (the stored file keeps the value as received)."""
    for name, value in values.items():
        if isinstance(value, str) and "\x00" in value:
            value = values[name] = value.replace("\x00", "")
        column_type = table_columns[name].type
        if isinstance(value, str) and isinstance(column_type, String) and column_type.length:
            values[name] = value[: column_type.length]
    return values


# Statements of the hot path, built once: constructing and cache-keying a SQLAlchemy
# statement per instance costs more than executing it.
_LATEST_VERSION = select(
    instances.c.pk,
    instances.c.sha256,
    instances.c.storage_key,
    instances.c.version,
    instances.c.size_bytes,
    instances.c.series_pk,
).where(
    instances.c.sop_instance_uid == bindparam("sop_instance_uid"),
    instances.c.is_latest.is_(True),
)
_KNOWN_SERIES = (
    select(series.c.pk, series.c.study_pk, studies.c.sop_classes_in_study)
    .join(studies, studies.c.pk == series.c.study_pk)
    .where(series.c.series_instance_uid == bindparam("series_instance_uid"))
)
_INSERT_INSTANCE = instances.insert()
_COUNT_SERIES_INSTANCE = (
    update(series)
    .where(series.c.pk == bindparam("series_pk_"))
    .values(number_of_instances=series.c.number_of_instances + 1)
)
_COUNT_STUDY_INSTANCE = (
    update(studies)
    .where(studies.c.pk == bindparam("study_pk_"))
    .values(
        number_of_instances=studies.c.number_of_instances + 1,
        size_bytes=studies.c.size_bytes + bindparam("added_bytes"),
        last_received_at=bindparam("received_at_"),
        stable=False,
    )
)


class IndexRepository:
    """Index writes and the bookkeeping queries of ingest and recovery."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_StoreTicket] = []

    def store_instance(self, record: InstanceRecord, policy: DuplicatePolicy) -> StoreResult:
        """Insert (or resolve a duplicate of) ``record``; returns once it is committed.

        Group commit: instances arriving on other threads while a transaction commits
        are written together in the next transaction, so concurrent associations share
        one durable commit (one WAL fsync) instead of queueing for one each. Every caller
        still returns only after the transaction holding its row has committed.
        """
        ticket = _StoreTicket(record, policy)
        with self._pending_lock:
            self._pending.append(ticket)
        with self._write_lock:
            if not ticket.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._store_batch(batch)
        if ticket.error is not None:
            raise ticket.error
        assert ticket.result is not None
        return ticket.result

    def _store_batch(self, batch: list[_StoreTicket]) -> None:
        if len(batch) > 1:
            try:
                with self.engine.begin() as connection:
                    results = [
                        self._store(connection, ticket.record, ticket.policy) for ticket in batch
                    ]
            except Exception:
                logger.debug("batched index write failed; retrying instance by instance")
            else:
                for ticket, result in zip(batch, results, strict=True):
                    ticket.finish(result, None)
                return
        for ticket in batch:
            try:
                ticket.finish(self._store_alone(ticket.record, ticket.policy), None)
            except Exception as error:
                ticket.finish(None, error)

    def _store_alone(self, record: InstanceRecord, policy: DuplicatePolicy) -> StoreResult:
        for attempt in range(3):
            try:
                with self.engine.begin() as connection:
                    return self._store(connection, record, policy)
            except IntegrityError:
                # Another node inserted the same patient/study/series first; retry reads it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _store(
        self, connection: Connection, record: InstanceRecord, policy: DuplicatePolicy
    ) -> StoreResult:
        existing = connection.execute(
            _LATEST_VERSION, {"sop_instance_uid": record.sop_instance_uid}
        ).first()
        if existing is not None:
            if existing.sha256 == record.stored.sha256:
                return StoreResult(StoreOutcome.DUPLICATE_SAME, obsolete_key=record.stored.key)
            if policy is DuplicatePolicy.REJECT:
                return StoreResult(StoreOutcome.DUPLICATE_REJECTED, obsolete_key=record.stored.key)
            instance_values = self._instance_values(record)
            size_delta = record.stored.size - existing.size_bytes
            if policy is DuplicatePolicy.OVERWRITE:
                connection.execute(
                    update(instances).where(instances.c.pk == existing.pk).values(**instance_values)
                )
                outcome, obsolete = StoreOutcome.OVERWRITTEN, existing.storage_key
            else:
                connection.execute(
                    update(instances).where(instances.c.pk == existing.pk).values(is_latest=False)
                )
                connection.execute(
                    instances.insert().values(
                        series_pk=existing.series_pk,
                        version=existing.version + 1,
                        is_latest=True,
                        **instance_values,
                    )
                )
                outcome, obsolete = StoreOutcome.NEW_VERSION, None
            study_pk = connection.execute(
                select(series.c.study_pk).where(series.c.pk == existing.series_pk)
            ).scalar_one()
            connection.execute(
                update(studies)
                .where(studies.c.pk == study_pk)
                .values(
                    size_bytes=studies.c.size_bytes + size_delta,
                    last_received_at=record.received_at,
                    stable=False,
                )
            )
            return StoreResult(outcome, obsolete_key=obsolete)

        known = connection.execute(
            _KNOWN_SERIES, {"series_instance_uid": record.series_instance_uid}
        ).first()
        study_is_new = False
        if known is not None and record.sop_class_uid in known.sop_classes_in_study.split("\\"):
            # The common case: another instance of a series the index already holds.
            series_pk, study_pk = int(known.pk), int(known.study_pk)
        else:
            patient_pk = self._upsert_patient(connection, record)
            study_pk, study_is_new = self._upsert_study(connection, record, patient_pk)
            series_pk = self._upsert_series(connection, record, study_pk)
        values = self._instance_values(record)
        values.update(series_pk=series_pk, version=1, is_latest=True)
        connection.execute(_INSERT_INSTANCE, values)
        connection.execute(_COUNT_SERIES_INSTANCE, {"series_pk_": series_pk})
        connection.execute(
            _COUNT_STUDY_INSTANCE,
            {
                "study_pk_": study_pk,
                "added_bytes": record.stored.size,
                "received_at_": record.received_at,
            },
        )
        return StoreResult(StoreOutcome.STORED, obsolete_key=None, study_is_new=study_is_new)

    def _instance_values(self, record: InstanceRecord) -> dict[str, Any]:
        values = _level_values(record.header, Level.IMAGE)
        values.update(
            sop_instance_uid=record.sop_instance_uid,
            sop_class_uid=record.sop_class_uid,
            transfer_syntax_uid=record.transfer_syntax_uid,
            storage_key=record.stored.key,
            size_bytes=record.stored.size,
            sha256=record.stored.sha256,
            received_at=record.received_at,
            calling_aet=record.calling_aet[:16],
            dicom_json=record.header_text,
            pixel_data_offset=record.pixel_data_offset,
            pixel_data_length=record.pixel_data_length,
        )
        return _clip(instances.c, values)

    def _upsert_patient(self, connection: Connection, record: InstanceRecord) -> int:
        values = _clip(patients.c, _level_values(record.header, Level.PATIENT))
        values["patient_name_norm"] = normalize_person_name(values["patient_name"])
        row = connection.execute(
            select(patients.c.pk).where(
                patients.c.patient_id == values["patient_id"],
                patients.c.issuer_of_patient_id == values["issuer_of_patient_id"],
            )
        ).first()
        if row is not None:
            connection.execute(update(patients).where(patients.c.pk == row.pk).values(**values))
            return int(row.pk)
        return _inserted_pk(connection.execute(patients.insert().values(**values)))

    def _upsert_study(
        self, connection: Connection, record: InstanceRecord, patient_pk: int
    ) -> tuple[int, bool]:
        row = connection.execute(
            select(studies.c.pk, studies.c.sop_classes_in_study).where(
                studies.c.study_instance_uid == record.study_instance_uid
            )
        ).first()
        if row is not None:
            classes = row.sop_classes_in_study.split("\\") if row.sop_classes_in_study else []
            if record.sop_class_uid not in classes:
                classes.append(record.sop_class_uid)
                connection.execute(
                    update(studies)
                    .where(studies.c.pk == row.pk)
                    .values(sop_classes_in_study="\\".join(classes))
                )
            return int(row.pk), False
        values = _clip(studies.c, _level_values(record.header, Level.STUDY))
        values.update(
            patient_pk=patient_pk,
            referring_physician_name_norm=normalize_person_name(values["referring_physician_name"]),
            sop_classes_in_study=record.sop_class_uid,
            first_received_at=record.received_at,
            last_received_at=record.received_at,
            stable=False,
        )
        pk = _inserted_pk(connection.execute(studies.insert().values(**values)))
        connection.execute(
            update(patients)
            .where(patients.c.pk == patient_pk)
            .values(number_of_studies=patients.c.number_of_studies + 1)
        )
        return pk, True

    def _upsert_series(self, connection: Connection, record: InstanceRecord, study_pk: int) -> int:
        row = connection.execute(
            select(series.c.pk).where(series.c.series_instance_uid == record.series_instance_uid)
        ).first()
        if row is not None:
            return int(row.pk)
        values = _clip(series.c, _level_values(record.header, Level.SERIES))
        values["study_pk"] = study_pk
        pk = _inserted_pk(connection.execute(series.insert().values(**values)))
        modality = values["modality"]
        current = connection.execute(
            select(studies.c.modalities_in_study).where(studies.c.pk == study_pk)
        ).scalar_one()
        modalities = current.split("\\") if current else []
        if modality and modality not in modalities:
            modalities.append(modality)
        connection.execute(
            update(studies)
            .where(studies.c.pk == study_pk)
            .values(
                number_of_series=studies.c.number_of_series + 1,
                modalities_in_study="\\".join(sorted(modalities)),
            )
        )
        return pk

    # -- recovery and bookkeeping -------------------------------------------------------

    def is_key_referenced(self, key: str) -> bool:
        with self.engine.connect() as connection:
            return (
                connection.execute(
                    select(instances.c.pk).where(instances.c.storage_key == key)
                ).first()
                is not None
            )

    def iter_stored(self) -> Iterator[tuple[str, str, str]]:
        """(sop_instance_uid, storage_key, sha256) of every stored instance version."""
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=1000).execute(
                select(
                    instances.c.sop_instance_uid, instances.c.storage_key, instances.c.sha256
                ).order_by(instances.c.pk)
            )
            for row in result:
                yield row.sop_instance_uid, row.storage_key, row.sha256

    def count_instances(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(instances)).scalar_one())

    def ping(self) -> None:
        """Raise when the index cannot answer (a trivial query, not a table scan)."""
        with self.engine.connect() as connection:
            connection.execute(select(1)).scalar_one()

    def counts(self) -> dict[str, int]:
        """How many patients, studies, series and instances the index holds."""
        tables = {"patients": patients, "studies": studies, "series": series}
        tables["instances"] = instances
        with self.engine.connect() as connection:
            return {
                name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
                for name, table in tables.items()
            }

    def get_state(self, name: str) -> str | None:
        with self.engine.connect() as connection:
            value = connection.execute(
                select(archive_state.c.value).where(archive_state.c.name == name)
            ).scalar_one_or_none()
            return None if value is None else str(value)

    def set_state(self, name: str, value: str) -> None:
        with self._write_lock, self.engine.begin() as connection:
            updated = connection.execute(
                update(archive_state).where(archive_state.c.name == name).values(value=value)
            ).rowcount
            if not updated:
                connection.execute(archive_state.insert().values(name=name, value=value))

    def unstable_studies_quiet_since(self, cutoff: float) -> list[tuple[int, str]]:
        """Studies not yet stable whose last instance arrived before ``cutoff``."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(studies.c.pk, studies.c.study_instance_uid).where(
                    studies.c.stable.is_(False), studies.c.last_received_at < cutoff
                )
            ).all()
        return [(int(row.pk), str(row.study_instance_uid)) for row in rows]

    def mark_stable(self, study_pk: int, cutoff: float) -> bool:
        """Mark stable unless an instance arrived after ``cutoff`` (then try again later)."""
        with self._write_lock, self.engine.begin() as connection:
            changed = connection.execute(
                update(studies)
                .where(
                    studies.c.pk == study_pk,
                    studies.c.stable.is_(False),
                    studies.c.last_received_at < cutoff,
                )
                .values(stable=True)
            ).rowcount
        return bool(changed)


def _inserted_pk(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database returned no primary key for an insert")
    return int(key[0])


def now() -> float:
    return time.time()
