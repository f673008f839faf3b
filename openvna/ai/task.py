"""One attempt of one AI job, start to finish: the task function.

``execute_job`` takes plain arguments (settings, the job row, the manifest) and records
everything it does in the index, so it does not care who calls it: the embedded AI
worker runs it in a forked child (which it can kill on a timeout or the stop switch),
and the distributed pool of the scale-out work will run the same function on a Celery
worker.

Order: provenance row first (so even a crash leaves a trace), then assemble the input
from the index and storage, prepare it, run the model, check its output against the
manifest, build the DICOM results, store them through the archive's one ingest path
(same durability, same events as a C-STORE), and finally, in one transaction: the
outputs, the completed run, the completed job and its UPS workitem.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine

from openvna.ai.errors import AiError, ManifestError
from openvna.ai.inputs import Volume
from openvna.ai.manifest import InputLevel, ModelManifest
from openvna.ai.outputs import ModelOutput, validate_output
from openvna.ai.workitems import report_workitem
from openvna.archive.ingest import Origin
from openvna.archive.service import Archive
from openvna.errors import DuplicateInstanceError
from openvna.index.ai_repository import AiRepository, JobRow

logger = logging.getLogger(__name__)

AI_CALLING_AET = "OPENVNA_AI"


def execute_job(
    archive: Archive, job: JobRow, manifest: ModelManifest, *, gpu_available: bool
) -> None:
    """Run one attempt of ``job`` (already claimed: state running) and record its end.

    Never raises for a model's failure: the outcome is in the index (job state, run
    status and error). Raises only when the index itself is unreachable.
    """
    repository = AiRepository(archive.engine)
    inputs = repository.series_inputs(job.series_instance_uid)
    run_pk = repository.insert_run(
        job_pk=job.pk,
        attempt=job.attempts,
        model_name=manifest.name,
        model_version=manifest.version,
        artifact_sha256=manifest.artifact_sha256(),
        runtime=manifest.runtime.kind.value,
        trigger=job.trigger,
        requested_by=job.requested_by,
        host=socket.gethostname(),
        pid=os.getpid(),
        study_instance_uid=job.study_instance_uid,
        series_instance_uid=job.series_instance_uid,
        inputs_json=json.dumps([{"sopInstanceUID": uid, "sha256": sha} for _, uid, sha in inputs]),
        parameters_json=json.dumps(
            {
                "runtime": manifest.runtime.parameters,
                "preprocessing": manifest.preprocessing.model_dump(mode="json"),
            }
        ),
        status="running",
        started_at=time.time(),
    )
    try:
        _run(archive, repository, job, manifest, run_pk, gpu_available=gpu_available)
    except AiError as error:
        record_failure(
            archive.engine,
            job,
            run_pk,
            f"{type(error).__name__}: {error}",
            transient=error.transient,
            retry_backoff=archive.settings.ai.retry_backoff,
        )
    except Exception as error:  # a defect in OpenVNA's own code: report, do not retry
        logger.exception("AI job %s failed unexpectedly", job.job_uid)
        record_failure(
            archive.engine,
            job,
            run_pk,
            f"internal error: {type(error).__name__}: {error}",
            transient=False,
        )


@dataclass
class _Unit:
    """One model call: the series (series-level models) or one image (image-level)."""

    native: Volume
    output: ModelOutput
    algorithm: Any
    results: list[Any]


def _run(
    archive: Archive,
    repository: AiRepository,
    job: JobRow,
    manifest: ModelManifest,
    run_pk: int,
    *,
    gpu_available: bool,
) -> None:
    from openvna.ai.preprocess import prepare
    from openvna.ai.results import AlgorithmIdentity, build_result_datasets, to_part10_bytes
    from openvna.ai.results.fhir import diagnostic_report
    from openvna.ai.runners.factory import build_runner
    from openvna.ai.volume import assemble_each_image, assemble_series

    timings = {"assemble": 0.0, "model": 0.0, "build": 0.0}
    started = time.perf_counter()
    rescale = manifest.preprocessing.rescale
    if manifest.input.level is InputLevel.IMAGE:
        volumes = assemble_each_image(archive, job.series_instance_uid, rescale=rescale)
    else:
        volumes = [assemble_series(archive, job.series_instance_uid, rescale=rescale)]
    timings["assemble"] = time.perf_counter() - started
    _progress(archive, job, 20)
    runner = build_runner(manifest, gpu_available=gpu_available)
    units: list[_Unit] = []
    for index, volume in enumerate(volumes):
        step = time.perf_counter()
        model_input = prepare(volume, manifest.preprocessing, dict(manifest.runtime.parameters))
        native = model_input.native or model_input.volume
        timings["assemble"] += time.perf_counter() - step
        step = time.perf_counter()
        output = runner.run(model_input)
        timings["model"] += time.perf_counter() - step
        output = validate_output(output, manifest.outputs, native.shape)
        step = time.perf_counter()
        algorithm = AlgorithmIdentity(
            name=manifest.name,
            version=manifest.version,
            manufacturer=manifest.manufacturer,
            artifact_sha256=manifest.artifact_sha256(),
            # result UIDs derive from this: one set per image of an image-level job
            job_uid=job.job_uid if index == 0 else f"{job.job_uid}.{index + 1}",
        )
        units.append(
            _Unit(native, output, algorithm, build_result_datasets(output, native, algorithm))
        )
        timings["build"] += time.perf_counter() - step
    model_seconds = timings["model"]
    _progress(archive, job, 70)

    store_started = time.perf_counter()
    stored: list[dict[str, Any]] = []
    for result in (result for unit in units for result in unit.results):
        try:
            archive.ingest_file(
                io.BytesIO(to_part10_bytes(result.dataset)),
                origin=Origin("ai", calling_aet=AI_CALLING_AET),
            )
        except DuplicateInstanceError:
            # Result UIDs derive from the job UID: an earlier attempt of this job stored
            # this object before it failed; the archive keeps that copy.
            logger.info("AI job %s: %s already stored", job.job_uid, result.sop_instance_uid)
        stored.append(
            {
                "sop_instance_uid": result.sop_instance_uid,
                "sop_class_uid": result.sop_class_uid,
                "series_instance_uid": result.series_instance_uid,
                "study_instance_uid": job.study_instance_uid,
                "kind": result.kind,
            }
        )
    timings["store"] = time.perf_counter() - store_started
    fhir = _one_bundle(
        [
            diagnostic_report(
                unit.output,
                unit.native,
                unit.algorithm,
                result_instance_uids=[result.sop_instance_uid for result in unit.results],
            )
            for unit in units
        ]
    )
    warnings = [warning for unit in units for warning in unit.native.warnings]
    finished = time.time()
    with archive.engine.begin() as connection:
        repository.insert_outputs(connection, [{**row, "run_pk": run_pk} for row in stored])
        repository.set_run(
            connection,
            run_pk,
            status="completed",
            model_seconds=model_seconds,
            finished_at=finished,
            outputs_json=json.dumps(
                [
                    {
                        "sopInstanceUID": row["sop_instance_uid"],
                        "sopClassUID": row["sop_class_uid"],
                        "seriesInstanceUID": row["series_instance_uid"],
                        "kind": row["kind"],
                    }
                    for row in stored
                ]
            ),
            result_json=json.dumps(
                {
                    **summarise([unit.output for unit in units]),
                    "timings": timings,
                    "warnings": warnings,
                    "fhir": fhir,
                },
                default=str,
            ),
        )
        still = repository.job_states([job.pk]).get(job.pk)
        if still == "running":
            repository.set_job(
                connection,
                job.pk,
                state="completed",
                finished_at=finished,
                progress=100,
                error="",
            )
    if still == "running":
        report_workitem(
            archive.engine,
            job_uid=job.job_uid,
            state="COMPLETED",
            outputs=[
                (
                    row["sop_class_uid"],
                    row["sop_instance_uid"],
                    row["study_instance_uid"],
                    row["series_instance_uid"],
                )
                for row in stored
            ],
        )


def _one_bundle(bundles: list[dict[str, Any]]) -> dict[str, Any]:
    """The FHIR Bundles of an image-level job's images as one collection."""
    merged = dict(bundles[0])
    merged["entry"] = [entry for bundle in bundles for entry in bundle.get("entry", [])]
    return merged


def summarise(outputs: list[ModelOutput]) -> dict[str, Any]:
    """The model's typed results as JSON (masks and pixels left out); for an image-level
    job, every image's results together and the highest priority."""

    def code(value: Any) -> Any:
        return asdict(value) if value is not None else None

    priorities = [output.priority for output in outputs if output.priority is not None]
    return {
        "summary": " ".join(output.summary for output in outputs if output.summary),
        "priority": max(priorities) if priorities else None,
        "findings": [
            {
                "finding": code(item.finding),
                "present": item.present,
                "probability": item.probability,
                "findingSite": code(item.finding_site),
                "segment": item.segment_number,
                "description": item.description,
            }
            for output in outputs
            for item in output.findings
        ],
        "measurements": [
            {
                "name": code(item.name),
                "value": item.value,
                "unit": code(item.unit),
                "findingSite": code(item.finding_site),
                "segment": item.segment_number,
                "description": item.description,
            }
            for output in outputs
            for item in output.measurements
        ],
        "segments": [
            {"label": item.label, "type": code(item.type), "voxels": int(item.mask.sum())}
            for output in outputs
            for item in output.segments
        ],
        "derivedImages": [item.label for output in outputs for item in output.derived_images],
    }


def _progress(archive: Archive, job: JobRow, percent: int) -> None:
    with archive.engine.begin() as connection:
        AiRepository(archive.engine).set_job(connection, job.pk, progress=percent)


def record_failure(
    engine: Engine,
    job: JobRow,
    run_pk: int | None,
    message: str,
    *,
    transient: bool,
    retry_backoff: float = 0.0,
    final_status: str = "failed",
) -> str:
    """End an attempt that did not complete; returns the job's new state.

    A transient error with attempts left puts the job back in the queue after an
    exponential backoff (its UPS workitem stays IN PROGRESS: the archive still performs
    it); otherwise the job ends ``failed`` (or ``final_status``) and its workitem is
    CANCELED with the reason. A job cancelled meanwhile stays cancelled.
    ``retry_backoff`` (``ai.retry_backoff``) is the wait before the first retry.
    """
    repository = AiRepository(engine)
    now = time.time()
    reason = message
    with engine.begin() as connection:
        current = repository.job_states([job.pk]).get(job.pk)
        run_status = "cancelled" if current == "cancelled" else final_status
        if run_pk is not None:
            repository.set_run(
                connection, run_pk, status=run_status, error=message, finished_at=now
            )
        repository.close_open_runs(connection, job.pk, run_status, message)
        if current == "cancelled":
            state = "cancelled"
            job_after = repository.job(pk=job.pk)
            reason = job_after.error if job_after is not None and job_after.error else message
        elif transient and job.attempts < job.max_attempts and final_status == "failed":
            state = "scheduled"
            delay = retry_backoff * (2 ** max(job.attempts - 1, 0))
            repository.set_job(
                connection,
                job.pk,
                state=state,
                next_attempt_at=now + delay,
                error=message,
                worker="",
            )
        else:
            state = final_status
            repository.set_job(connection, job.pk, state=state, finished_at=now, error=message)
    if state in ("cancelled", "failed"):
        report_workitem(engine, job_uid=job.job_uid, state="CANCELED", reason=reason)
    logger.warning("AI job %s (%s): %s -> %s", job.job_uid, job.model_name, message, state)
    return state


def missing_model(job: JobRow) -> ManifestError:
    return ManifestError(
        f"model {job.model_name} {job.model_version} is not installed (or has another version)"
    )
