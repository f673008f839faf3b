"""Rules to jobs, and the human controls over them: stop switch, cancel, reject.

``StudyStable`` (and an on-demand request from the REST API or the CLI) schedules one
job per (enabled model, matching series). A job is a row in the index with a UPS
workitem beside it, created in one transaction, so an external AI engine sees exactly
the queue the archive's own worker takes from. Nothing here runs a model: the AI worker
process (:mod:`openvna.ai.worker`) does, so scheduling costs ingest nothing.

The stop switch (per model, or ``*`` for all AI) takes effect at once: waiting jobs are
cancelled in the same transaction that flips it, and the worker kills running ones
within one poll interval.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Engine

from openvna.ai.errors import ManifestError
from openvna.ai.manifest import ModelManifest, RuntimeKind
from openvna.ai.registry import ModelRegistry
from openvna.ai.rules import mismatch
from openvna.ai.workitems import report_workitem
from openvna.archive.events import StudyStable
from openvna.config import Settings
from openvna.errors import NotFoundError
from openvna.index.ai_repository import (
    GLOBAL_SWITCH,
    WORKER_STATE,
    AiRepository,
    JobRow,
    ModelState,
)
from openvna.index.repository import IndexRepository
from openvna.ups.service import WorkitemService

logger = logging.getLogger(__name__)

TRIGGERS = ("rule", "api", "cli", "ups")


@dataclass(frozen=True)
class ModelStatus:
    manifest: ModelManifest
    enabled: bool
    """Enabled in its manifest and not stopped (by its own or the global switch)."""
    stopped_by: str
    stop_reason: str


class Orchestrator:
    """Schedules jobs and answers for the stop switch; safe to use from any process."""

    def __init__(self, settings: Settings, engine: Engine, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.repository = AiRepository(engine)
        self.workitems = WorkitemService(engine)
        self.engine = engine

    # -- events ----------------------------------------------------------------------------
    def on_study_stable(self, event: StudyStable) -> None:
        jobs = self.schedule(event.study_instance_uid, trigger="rule")
        if jobs:
            logger.info(
                "study %s: %d AI job(s) scheduled (%s)",
                event.study_instance_uid,
                len(jobs),
                ", ".join(f"{job.model_name}" for job in jobs),
            )

    # -- scheduling ------------------------------------------------------------------------
    def schedule(
        self,
        study_uid: str,
        *,
        trigger: str,
        requested_by: str = "",
        series_uid: str | None = None,
        model_names: Sequence[str] = (),
        priority: int = 0,
    ) -> list[JobRow]:
        """Jobs for every matching (model, series) of the study.

        A rule never gives a series to a model version twice; an explicit request
        (``trigger`` api/cli) always creates a new job, and fails with the reason when a
        named model does not match the series.
        """
        explicit = trigger != "rule"
        states = self.repository.model_states()
        if not _switch_on(states, GLOBAL_SWITCH) or not self.settings.ai.enabled:
            if explicit:
                raise ManifestError("AI is stopped (global stop switch)")
            return []
        if model_names:
            models = [self.registry.get(name) for name in model_names]
        else:
            models = list(self.registry)
        candidates = self.repository.study_series(study_uid)
        if series_uid is not None:
            candidates = [c for c in candidates if c.series_instance_uid == series_uid]
            if not candidates:
                raise NotFoundError(f"series {series_uid} is not in study {study_uid}")
        if not candidates and explicit:
            raise NotFoundError(f"study {study_uid} is not in the archive")
        created: list[JobRow] = []
        reasons: list[str] = []
        for manifest in models:
            if not (manifest.enabled and _switch_on(states, manifest.name)):
                if model_names:
                    raise ManifestError(f"model {manifest.name} is stopped")
                continue
            if not explicit and not manifest.run_on_arrival:
                continue
            for candidate in candidates:
                why_not = mismatch(manifest, candidate)
                if why_not is not None:
                    reasons.append(
                        f"{manifest.name}: series {candidate.series_instance_uid}: {why_not}"
                    )
                    continue
                if not explicit and self.repository.has_job(
                    manifest.name, manifest.version, candidate.series_instance_uid
                ):
                    continue
                created.append(
                    self._create_job(
                        manifest,
                        candidate.study_instance_uid,
                        candidate.series_instance_uid,
                        candidate.patient_id,
                        candidate.patient_name,
                        trigger=trigger,
                        requested_by=requested_by,
                        priority=priority,
                    )
                )
        if explicit and not created:
            raise ManifestError("no model matches: " + "; ".join(reasons or ["no model"]))
        return created

    def _create_job(
        self,
        manifest: ModelManifest,
        study_uid: str,
        series_uid: str,
        patient_id: str,
        patient_name: str,
        *,
        trigger: str,
        requested_by: str,
        priority: int,
    ) -> JobRow:
        now = time.time()
        job_uid = str(generate_uid(prefix=None))
        inputs = [(cls, uid) for cls, uid, _ in self.repository.series_inputs(series_uid)]
        with self.engine.begin() as connection:
            pk = self.repository.insert_job(
                connection,
                job_uid=job_uid,
                model_name=manifest.name,
                model_version=manifest.version,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                state="scheduled",
                trigger=trigger,
                requested_by=requested_by,
                priority=priority,
                attempts=0,
                max_attempts=1 + manifest.resources.retries,
                next_attempt_at=now,
                created_at=now,
            )
            self.workitems.create_for_job(
                connection,
                job_pk=pk,
                job_uid=job_uid,
                model_name=manifest.name,
                model_version=manifest.version,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                patient_id=patient_id,
                patient_name=patient_name,
                inputs=inputs,
                priority="HIGH" if priority > 0 else "MEDIUM",
            )
        job = self.repository.job(pk=pk)
        assert job is not None
        return job

    # -- human control ---------------------------------------------------------------------
    def status(self) -> list[ModelStatus]:
        states = self.repository.model_states()
        global_state = states.get(GLOBAL_SWITCH)
        result = []
        for manifest in self.registry:
            own = states.get(manifest.name)
            stopper = own if own is not None and not own.enabled else None
            if stopper is None and global_state is not None and not global_state.enabled:
                stopper = global_state
            result.append(
                ModelStatus(
                    manifest=manifest,
                    enabled=manifest.enabled and stopper is None,
                    stopped_by=stopper.changed_by if stopper else "",
                    stop_reason=stopper.reason if stopper else "",
                )
            )
        return result

    def worker_status(self) -> dict[str, Any] | None:
        """The AI worker's last heartbeat (None: no worker ever ran on this index), with
        ``alive``: whether it beat within the last five seconds."""
        text = IndexRepository(self.engine).get_state(WORKER_STATE)
        if text is None:
            return None
        status: dict[str, Any] = json.loads(text)
        status["alive"] = time.time() - float(status.get("heartbeatAt", 0)) < 5.0
        return status

    def global_enabled(self) -> bool:
        return _switch_on(self.repository.model_states(), GLOBAL_SWITCH)

    def stop(self, model_name: str | None, *, by: str, reason: str = "") -> list[JobRow]:
        """Press the stop switch of one model (or of all AI with None): its waiting jobs
        are cancelled now, its running jobs are killed by the worker within a poll."""
        name = GLOBAL_SWITCH if model_name is None else self.registry.get(model_name).name
        why = f"stopped by {by or 'unknown'}" + (f": {reason}" if reason else "")
        with self.engine.begin() as connection:
            self.repository.set_enabled(connection, name, False, by, reason)
            cancelled = self.repository.cancel_waiting(
                connection, model_name=model_name, reason=why
            )
        for job in cancelled:
            report_workitem(self.engine, job_uid=job.job_uid, state="CANCELED", reason=why)
        logger.warning("AI %s %s; %d waiting job(s) cancelled", name, why, len(cancelled))
        return cancelled

    def start(self, model_name: str | None, *, by: str, reason: str = "") -> None:
        name = GLOBAL_SWITCH if model_name is None else self.registry.get(model_name).name
        with self.engine.begin() as connection:
            self.repository.set_enabled(connection, name, True, by, reason)

    def cancel(self, job_uid: str, *, by: str, reason: str = "") -> JobRow:
        """Cancel one job: at once when waiting, by the worker's kill when running."""
        job = self.repository.job(job_uid=job_uid)
        if job is None:
            raise NotFoundError(f"no AI job {job_uid}")
        why = f"cancelled by {by or 'unknown'}" + (f": {reason}" if reason else "")
        if job.state in ("scheduled", "running"):
            with self.engine.begin() as connection:
                self.repository.set_job(
                    connection, job.pk, state="cancelled", error=why, finished_at=time.time()
                )
        if job.state == "scheduled":
            report_workitem(self.engine, job_uid=job.job_uid, state="CANCELED", reason=why)
        updated = self.repository.job(job_uid=job_uid)
        assert updated is not None
        return updated

    def reject(self, sop_instance_uid: str, *, by: str, reason: str = "") -> None:
        """Record that a human rejected an AI output (it stays stored, marked rejected)."""
        if not self.repository.reject_output(sop_instance_uid, by, reason):
            raise NotFoundError(f"{sop_instance_uid} is not an AI output")


def _switch_on(states: dict[str, ModelState], name: str) -> bool:
    state = states.get(name)
    return state is None or state.enabled


def runs_inside(manifest: ModelManifest) -> bool:
    """Whether the archive's own worker runs this model (external ones are pulled over
    UPS-RS by an outside engine)."""
    return manifest.runtime.kind is not RuntimeKind.EXTERNAL
