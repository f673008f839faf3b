"""Index access for AI orchestration: jobs, provenance runs, outputs, the stop switch.

Jobs live in the index rather than in a broker so that every process and node sees one
queue: a worker claims a job with a conditional UPDATE (``state = 'scheduled'``), which
only one claimant can win, and the job's history survives restarts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update

from openvna.index.schema import (
    ai_jobs,
    ai_model_state,
    ai_outputs,
    ai_runs,
    instances,
    patients,
    series,
    studies,
)

GLOBAL_SWITCH = "*"
WORKER_STATE = "ai_worker"
"""archive_state row holding the AI worker's heartbeat (JSON)."""
ACTIVE_STATES = ("scheduled", "running")
FINAL_STATES = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class SeriesCandidate:
    """What rules match a model's input selection against (all from the index)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    number_of_instances: int
    sop_class_uids: frozenset[str]
    transfer_syntax_uids: frozenset[str]
    patient_id: str
    patient_name: str
    is_ai_output: bool


@dataclass(frozen=True)
class JobRow:
    pk: int
    job_uid: str
    model_name: str
    model_version: str
    study_instance_uid: str
    series_instance_uid: str
    state: str
    trigger: str
    requested_by: str
    priority: int
    attempts: int
    max_attempts: int
    next_attempt_at: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker: str
    error: str
    progress: int

    def as_json(self) -> dict[str, Any]:
        return {
            "jobUID": self.job_uid,
            "model": self.model_name,
            "modelVersion": self.model_version,
            "studyInstanceUID": self.study_instance_uid,
            "seriesInstanceUID": self.series_instance_uid,
            "state": self.state,
            "trigger": self.trigger,
            "requestedBy": self.requested_by,
            "priority": self.priority,
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "worker": self.worker,
            "error": self.error,
            "progress": self.progress,
        }


@dataclass(frozen=True)
class ModelState:
    model_name: str
    enabled: bool
    changed_at: float
    changed_by: str
    reason: str


class AiRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- the stop switch -----------------------------------------------------------------
    def model_states(self) -> dict[str, ModelState]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(ai_model_state)).all()
        return {row.model_name: ModelState(*row) for row in rows}

    def set_enabled(
        self, connection: Connection, model_name: str, enabled: bool, by: str, reason: str
    ) -> None:
        values = {"enabled": enabled, "changed_at": time.time(), "changed_by": by, "reason": reason}
        changed = connection.execute(
            update(ai_model_state).where(ai_model_state.c.model_name == model_name).values(values)
        ).rowcount
        if not changed:
            connection.execute(insert(ai_model_state).values(model_name=model_name, **values))

    # -- what rules look at ----------------------------------------------------------------
    def study_series(self, study_uid: str) -> list[SeriesCandidate]:
        """Every series of the study with what input selection needs to know."""
        output_series = select(ai_outputs.c.series_instance_uid).where(
            ai_outputs.c.study_instance_uid == study_uid
        )
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    series.c.pk,
                    series.c.series_instance_uid,
                    series.c.modality,
                    series.c.body_part_examined,
                    series.c.series_description,
                    patients.c.patient_id,
                    patients.c.patient_name,
                    series.c.series_instance_uid.in_(output_series).label("is_output"),
                )
                .join(studies, series.c.study_pk == studies.c.pk)
                .join(patients, studies.c.patient_pk == patients.c.pk)
                .where(studies.c.study_instance_uid == study_uid)
                .order_by(series.c.series_number, series.c.pk)
            ).all()
            candidates = []
            for row in rows:
                kinds = connection.execute(
                    select(
                        instances.c.sop_class_uid,
                        instances.c.transfer_syntax_uid,
                        func.count(),
                    )
                    .where(instances.c.series_pk == row.pk, instances.c.is_latest.is_(True))
                    .group_by(instances.c.sop_class_uid, instances.c.transfer_syntax_uid)
                ).all()
                candidates.append(
                    SeriesCandidate(
                        study_instance_uid=study_uid,
                        series_instance_uid=row.series_instance_uid,
                        modality=row.modality,
                        body_part_examined=row.body_part_examined,
                        series_description=row.series_description,
                        number_of_instances=sum(int(kind[2]) for kind in kinds),
                        sop_class_uids=frozenset(kind[0] for kind in kinds),
                        transfer_syntax_uids=frozenset(kind[1] for kind in kinds),
                        patient_id=row.patient_id,
                        patient_name=row.patient_name,
                        is_ai_output=bool(row.is_output),
                    )
                )
        return candidates

    def study_of_series(self, series_uid: str) -> str | None:
        with self.engine.connect() as connection:
            found = connection.execute(
                select(studies.c.study_instance_uid)
                .join(series, series.c.study_pk == studies.c.pk)
                .where(series.c.series_instance_uid == series_uid)
            ).scalar()
        return str(found) if found is not None else None

    def series_inputs(self, series_uid: str) -> list[tuple[str, str, str]]:
        """(SOP Class UID, SOP Instance UID, SHA-256) of the series' latest instances."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(instances.c.sop_class_uid, instances.c.sop_instance_uid, instances.c.sha256)
                .join(series, instances.c.series_pk == series.c.pk)
                .where(series.c.series_instance_uid == series_uid, instances.c.is_latest.is_(True))
                .order_by(instances.c.instance_number, instances.c.pk)
            ).all()
        return [(row[0], row[1], row[2]) for row in rows]

    def has_job(self, model_name: str, model_version: str, series_uid: str) -> bool:
        """Whether a rule already gave this series to this model version (waiting,
        running or done): a study becoming stable again does not run it twice."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(ai_jobs.c.pk)
                .where(
                    ai_jobs.c.model_name == model_name,
                    ai_jobs.c.model_version == model_version,
                    ai_jobs.c.series_instance_uid == series_uid,
                    ai_jobs.c.state.in_((*ACTIVE_STATES, "completed")),
                )
                .limit(1)
            ).first()
        return found is not None

    # -- jobs ----------------------------------------------------------------------------
    def insert_job(self, connection: Connection, **values: Any) -> int:
        result = connection.execute(insert(ai_jobs).values(**values))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def job(self, *, pk: int | None = None, job_uid: str | None = None) -> JobRow | None:
        condition = ai_jobs.c.pk == pk if pk is not None else ai_jobs.c.job_uid == job_uid
        with self.engine.connect() as connection:
            row = connection.execute(select(ai_jobs).where(condition)).first()
        return JobRow(*row) if row is not None else None

    def jobs(
        self,
        *,
        states: Sequence[str] = (),
        model_name: str | None = None,
        study_uid: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[JobRow]:
        statement = select(ai_jobs).order_by(ai_jobs.c.pk.desc()).limit(limit).offset(offset)
        if states:
            statement = statement.where(ai_jobs.c.state.in_(states))
        if model_name:
            statement = statement.where(ai_jobs.c.model_name == model_name)
        if study_uid:
            statement = statement.where(ai_jobs.c.study_instance_uid == study_uid)
        with self.engine.connect() as connection:
            return [JobRow(*row) for row in connection.execute(statement)]

    def due_jobs(self, now: float, limit: int = 50) -> list[JobRow]:
        """Scheduled jobs whose (re)try time has come, most urgent first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ai_jobs)
                .where(ai_jobs.c.state == "scheduled", ai_jobs.c.next_attempt_at <= now)
                .order_by(ai_jobs.c.priority.desc(), ai_jobs.c.next_attempt_at, ai_jobs.c.pk)
                .limit(limit)
            ).all()
        return [JobRow(*row) for row in rows]

    def claim(self, connection: Connection, pk: int, worker: str, now: float) -> bool:
        """Take a scheduled job for ``worker``; false when someone else was quicker (or
        it was cancelled meanwhile)."""
        return bool(
            connection.execute(
                update(ai_jobs)
                .where(ai_jobs.c.pk == pk, ai_jobs.c.state == "scheduled")
                .values(
                    state="running",
                    worker=worker,
                    started_at=now,
                    attempts=ai_jobs.c.attempts + 1,
                )
            ).rowcount
        )

    def set_job(self, connection: Connection, pk: int, **values: Any) -> None:
        connection.execute(update(ai_jobs).where(ai_jobs.c.pk == pk).values(**values))

    def job_states(self, pks: Sequence[int]) -> dict[int, str]:
        if not pks:
            return {}
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ai_jobs.c.pk, ai_jobs.c.state).where(ai_jobs.c.pk.in_(pks))
            ).all()
        return {int(row[0]): str(row[1]) for row in rows}

    def cancel_waiting(
        self, connection: Connection, *, model_name: str | None, reason: str
    ) -> list[JobRow]:
        """Cancel every scheduled job (of one model, or all); returns them."""
        condition = ai_jobs.c.state == "scheduled"
        if model_name is not None:
            condition = and_(condition, ai_jobs.c.model_name == model_name)
        rows = connection.execute(select(ai_jobs).where(condition)).all()
        if rows:
            connection.execute(
                update(ai_jobs)
                .where(ai_jobs.c.pk.in_([row.pk for row in rows]), ai_jobs.c.state == "scheduled")
                .values(state="cancelled", error=reason, finished_at=time.time())
            )
        return [JobRow(*row) for row in rows]

    def running_on(self, worker_prefix: str) -> list[JobRow]:
        """Jobs marked running by workers whose name starts with ``worker_prefix``."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ai_jobs).where(
                    ai_jobs.c.state == "running", ai_jobs.c.worker.startswith(worker_prefix)
                )
            ).all()
        return [JobRow(*row) for row in rows]

    # -- provenance ------------------------------------------------------------------------
    def insert_run(self, **values: Any) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(insert(ai_runs).values(**values))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def set_run(self, connection: Connection, pk: int, **values: Any) -> None:
        connection.execute(update(ai_runs).where(ai_runs.c.pk == pk).values(**values))

    def close_open_runs(self, connection: Connection, job_pk: int, status: str, error: str) -> None:
        """End the job's runs still marked running (its process died or was killed)."""
        connection.execute(
            update(ai_runs)
            .where(ai_runs.c.job_pk == job_pk, ai_runs.c.status == "running")
            .values(status=status, error=error, finished_at=time.time())
        )

    def runs(
        self,
        *,
        model_name: str | None = None,
        study_uid: str | None = None,
        job_uid: str | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        statement = (
            select(ai_runs, ai_jobs.c.job_uid)
            .join(ai_jobs, ai_runs.c.job_pk == ai_jobs.c.pk)
            .order_by(ai_runs.c.pk.desc())
            .limit(limit)
            .offset(offset)
        )
        if model_name:
            statement = statement.where(ai_runs.c.model_name == model_name)
        if study_uid:
            statement = statement.where(ai_runs.c.study_instance_uid == study_uid)
        if job_uid:
            statement = statement.where(ai_jobs.c.job_uid == job_uid)
        if since is not None:
            statement = statement.where(ai_runs.c.started_at >= since)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [_run_json(row) for row in rows]

    def run(self, pk: int) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = (
                connection.execute(
                    select(ai_runs, ai_jobs.c.job_uid)
                    .join(ai_jobs, ai_runs.c.job_pk == ai_jobs.c.pk)
                    .where(ai_runs.c.pk == pk)
                )
                .mappings()
                .first()
            )
        return _run_json(row) if row is not None else None

    def purge_before(self, cutoff: float) -> int:
        """Delete provenance (and finished jobs) older than ``cutoff``; the retention."""
        with self.engine.begin() as connection:
            removed = connection.execute(
                delete(ai_runs).where(ai_runs.c.started_at < cutoff)
            ).rowcount
            connection.execute(
                delete(ai_jobs).where(
                    ai_jobs.c.state.in_(FINAL_STATES),
                    ai_jobs.c.created_at < cutoff,
                    ~ai_jobs.c.pk.in_(select(ai_runs.c.job_pk)),
                )
            )
        return int(removed or 0)

    # -- outputs ---------------------------------------------------------------------------
    def insert_outputs(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            connection.execute(insert(ai_outputs), list(rows))

    def outputs(
        self, *, study_uid: str | None = None, run_pk: int | None = None
    ) -> list[dict[str, Any]]:
        statement = select(ai_outputs, ai_runs.c.model_name, ai_runs.c.model_version).join(
            ai_runs, ai_outputs.c.run_pk == ai_runs.c.pk
        )
        if study_uid:
            statement = statement.where(ai_outputs.c.study_instance_uid == study_uid)
        if run_pk is not None:
            statement = statement.where(ai_outputs.c.run_pk == run_pk)
        with self.engine.connect() as connection:
            rows = connection.execute(statement.order_by(ai_outputs.c.pk)).mappings().all()
        return [
            {
                "sopInstanceUID": row["sop_instance_uid"],
                "sopClassUID": row["sop_class_uid"],
                "seriesInstanceUID": row["series_instance_uid"],
                "studyInstanceUID": row["study_instance_uid"],
                "kind": row["kind"],
                "run": row["run_pk"],
                "model": row["model_name"],
                "modelVersion": row["model_version"],
                "rejected": row["rejected_at"] is not None,
                "rejectedAt": row["rejected_at"],
                "rejectedBy": row["rejected_by"],
                "rejectionReason": row["rejection_reason"],
            }
            for row in rows
        ]

    def reject_output(self, sop_instance_uid: str, by: str, reason: str) -> bool:
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    update(ai_outputs)
                    .where(ai_outputs.c.sop_instance_uid == sop_instance_uid)
                    .values(rejected_at=time.time(), rejected_by=by, rejection_reason=reason)
                ).rowcount
            )


def _run_json(row: Any) -> dict[str, Any]:
    started = row["started_at"]
    finished = row["finished_at"]
    return {
        "run": row["pk"],
        "jobUID": row["job_uid"],
        "attempt": row["attempt"],
        "model": row["model_name"],
        "modelVersion": row["model_version"],
        "artifactSHA256": row["artifact_sha256"],
        "runtime": row["runtime"],
        "trigger": row["trigger"],
        "requestedBy": row["requested_by"],
        "host": row["host"],
        "pid": row["pid"],
        "studyInstanceUID": row["study_instance_uid"],
        "seriesInstanceUID": row["series_instance_uid"],
        "inputs": json.loads(row["inputs_json"]),
        "parameters": json.loads(row["parameters_json"]),
        "outputs": json.loads(row["outputs_json"]),
        "result": json.loads(row["result_json"]),
        "status": row["status"],
        "error": row["error"],
        "startedAt": started,
        "finishedAt": finished,
        "seconds": (finished - started) if finished is not None else None,
        "modelSeconds": row["model_seconds"],
    }
