"""AI orchestration end to end on a real ``openvna serve``: storescu sends a study, the
study becomes stable, rules schedule jobs, the AI worker runs the test models in killable
child processes, results come back as DICOM in the same study; failures end in the right
state with a clear reason; the stop switch cancels a queue at once.

The test models live in ``ai_models/`` (one folder per manifest, code in
``ai_test_models.py``, put on the server's PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from openvna.sample import GeneratedStudy
from openvna.sample.generator import generate_ct_series
from tests.conftest import ArchiveProcess, free_port, run_tool, wait_until
from tests.integration.test_ups import base, change_state, new_uid, performed_procedure, post_json

pytestmark = pytest.mark.integration

MODELS = Path(__file__).parent / "ai_models"
FINAL = ("completed", "failed", "cancelled")


def http(
    archive: ArchiveProcess, path: str, body: dict[str, Any] | None = None, method: str = "GET"
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{archive.http_url}{path}",
        data=data,
        method=method if body is None else "POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def jobs_of(archive: ArchiveProcess, study: str) -> list[dict[str, Any]]:
    return list(http(archive, f"/api/ai/jobs?study={study}"))


def by_model(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {job["model"]: job for job in jobs}


@pytest.fixture(scope="module")
def ai_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    directory = tmp_path_factory.mktemp("ai")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(MODELS), os.environ.get("PYTHONPATH", "")]),
        "OPENVNA_AI__MODELS_DIR": str(MODELS),
        "OPENVNA_AI__BUILTIN_MODELS": "false",
        "OPENVNA_AI__RETRY_BACKOFF": "0.2",
        "OPENVNA_AI__WORKERS": "3",
    }
    archive = ArchiveProcess(
        directory / "data",
        free_port(),
        "OPENVNA",
        None,
        directory / "log",
        ("--stable-after", "0.5"),
        env=env,
    )
    archive.start()
    try:
        yield archive
    finally:
        archive.stop()


@pytest.fixture(scope="module")
def ct_study(ai_archive: ArchiveProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    paths = generate_ct_series(
        tmp_path_factory.mktemp("ct"), instances=8, rows=64, columns=64, patient_id="AI001"
    )
    run_tool("storescu", "-aec", "OPENVNA", *ai_archive.address, *map(str, paths))
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def wait_final(
    archive: ArchiveProcess, study: str, models: set[str], timeout: float
) -> dict[str, dict[str, Any]]:
    def done() -> bool:
        jobs = by_model(jobs_of(archive, study))
        return models <= set(jobs) and all(jobs[m]["state"] in FINAL for m in models)

    wait_until(done, timeout, f"AI jobs {sorted(models)} of {study} to end")
    return by_model(jobs_of(archive, study))


def test_models_are_listed_with_manifests(ai_archive: ArchiveProcess) -> None:
    listed = http(ai_archive, "/api/ai/models")
    names = {model["name"] for model in listed["models"]}
    assert {"test-dense", "test-raiser", "test-sleeper", "test-malformed", "test-queued"} <= names
    assert listed["aiEnabled"] is True
    dense = next(model for model in listed["models"] if model["name"] == "test-dense")
    assert dense["runtime"] == "python" and dense["input"]["modalities"] == ["CT"]


def test_stable_ct_study_gets_results_and_failures_end_with_reasons(
    ai_archive: ArchiveProcess, ct_study: str
) -> None:
    jobs = wait_final(
        ai_archive,
        ct_study,
        {"test-dense", "test-raiser", "test-sleeper", "test-malformed", "test-remote-down"},
        timeout=90,
    )
    assert "test-queued" not in jobs  # MR-only model: the CT series does not match

    dense = jobs["test-dense"]
    assert dense["state"] == "completed", dense
    assert dense["trigger"] == "rule" and dense["attempts"] == 1

    raiser = jobs["test-raiser"]
    assert raiser["state"] == "failed"
    assert raiser["attempts"] == 2  # one retry (manifest retries = 1)
    assert "RuntimeError: the model crashed on purpose" in raiser["error"]

    sleeper = jobs["test-sleeper"]
    assert sleeper["state"] == "failed" and sleeper["attempts"] == 1
    assert "ModelTimeoutError" in sleeper["error"] and "1.5 s" in sleeper["error"]

    malformed = jobs["test-malformed"]
    assert malformed["state"] == "failed" and malformed["attempts"] == 1  # never retried
    assert "MalformedOutputError" in malformed["error"] and "shape" in malformed["error"]

    remote = jobs["test-remote-down"]
    assert remote["state"] == "failed" and remote["attempts"] == 2  # retried once
    assert "RemoteInferenceError" in remote["error"]
    assert "http://127.0.0.1:9/v2/models/absent" in remote["error"]


def test_results_are_in_the_study_over_dicomweb(ai_archive: ArchiveProcess, ct_study: str) -> None:
    wait_final(ai_archive, ct_study, {"test-dense"}, timeout=90)
    series = http(ai_archive, f"/dicom-web/studies/{ct_study}/series")
    modalities = sorted(item["00080060"]["Value"][0] for item in series)
    assert modalities == ["CT", "SEG", "SR"]
    sr_series = next(item for item in series if item["00080060"]["Value"][0] == "SR")
    assert "test-dense" in sr_series["0008103E"]["Value"][0]


def test_provenance_record_of_a_completed_run(ai_archive: ArchiveProcess, ct_study: str) -> None:
    jobs = wait_final(ai_archive, ct_study, {"test-dense"}, timeout=90)
    job = http(ai_archive, f"/api/ai/jobs/{jobs['test-dense']['jobUID']}")
    (run,) = job["runs"]
    assert run["model"] == "test-dense" and run["modelVersion"] == "1.0"
    assert len(run["artifactSHA256"]) == 64  # the model module's source hash
    assert run["trigger"] == "rule" and run["status"] == "completed"
    assert len(run["inputs"]) == 8 and all(len(i["sha256"]) == 64 for i in run["inputs"])
    assert run["parameters"]["runtime"] == {"threshold": 100.0}
    assert {output["kind"] for output in run["outputs"]} == {"sr", "seg"}
    assert run["host"] and run["pid"] > 0 and run["seconds"] > 0
    assert run["result"]["priority"] == 0.8
    fhir = http(ai_archive, f"/api/ai/runs/{run['run']}/fhir")
    assert fhir["resourceType"] == "Bundle"
    kinds = [entry["resource"]["resourceType"] for entry in fhir["entry"]]
    assert kinds.count("DiagnosticReport") == 1 and kinds.count("Observation") >= 2
    cli = ai_archive.cli("ai", "runs", "--job", job["jobUID"], "--json")
    assert json.loads(cli.stdout)[0]["run"] == run["run"]


def test_rejecting_an_output_is_recorded(ai_archive: ArchiveProcess, ct_study: str) -> None:
    wait_final(ai_archive, ct_study, {"test-dense"}, timeout=90)
    results = http(ai_archive, f"/api/ai/results?study={ct_study}")
    seg = next(result for result in results if result["kind"] == "seg")
    assert seg["rejected"] is False
    answer = http(
        ai_archive,
        f"/api/ai/results/{seg['sopInstanceUID']}/reject",
        {"by": "dr.house", "reason": "segments the table"},
    )
    assert answer == {"rejected": seg["sopInstanceUID"], "by": "dr.house"}
    results = http(ai_archive, f"/api/ai/results?study={ct_study}")
    seg = next(result for result in results if result["kind"] == "seg")
    assert seg["rejected"] is True and seg["rejectedBy"] == "dr.house"
    assert seg["rejectionReason"] == "segments the table"
    with pytest.raises(urllib.error.HTTPError) as raised:
        http(ai_archive, "/api/ai/results/1.2.3.4/reject", {"by": "x"})
    assert raised.value.code == 404


def test_on_demand_run_is_a_new_job(ai_archive: ArchiveProcess, ct_study: str) -> None:
    wait_final(ai_archive, ct_study, {"test-dense"}, timeout=90)
    created = http(
        ai_archive, "/api/ai/jobs", {"study": ct_study, "models": ["test-dense"], "by": "tester"}
    )
    assert len(created) == 1 and created[0]["trigger"] == "api"
    assert created[0]["requestedBy"] == "tester"
    uid = created[0]["jobUID"]
    wait_until(
        lambda: http(ai_archive, f"/api/ai/jobs/{uid}")["state"] == "completed", 60, "re-run"
    )
    with pytest.raises(urllib.error.HTTPError) as raised:  # an MR model on a CT study
        http(ai_archive, "/api/ai/jobs", {"study": ct_study, "models": ["test-queued"]})
    assert raised.value.code == 400
    assert "modality CT not in ['MR']" in raised.value.read().decode()


def test_stop_switch_cancels_running_and_waiting_jobs(
    ai_archive: ArchiveProcess, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    _, studies = sample_studies
    mr_studies = [study for study in studies if study.modality == "MR"][:2]
    for study in mr_studies:
        run_tool("storescu", "-aec", "OPENVNA", *ai_archive.address, *map(str, study.paths))
    uids = [study.study_instance_uid for study in mr_studies]

    def queued() -> list[dict[str, Any]]:
        return [job for uid in uids for job in jobs_of(ai_archive, uid)]

    wait_until(
        lambda: len(queued()) >= 3 and any(job["state"] == "running" for job in queued()),
        60,
        "a queue of MR jobs with one running",
    )
    assert sum(job["state"] == "running" for job in queued()) == 1  # max_concurrency = 1
    answer = http(
        ai_archive, "/api/ai/models/test-queued/stop", {"by": "safety-officer", "reason": "drift"}
    )
    assert len(answer["cancelledJobs"]) >= 2  # the waiting ones, at once
    wait_until(
        lambda: all(job["state"] == "cancelled" for job in queued()), 10, "running job killed"
    )
    for job in queued():
        assert "stopped by safety-officer: drift" in job["error"]
    workitem = http(ai_archive, f"/dicom-web/workitems/{queued()[0]['jobUID']}")
    assert workitem[0]["00741000"]["Value"] == ["CANCELED"]
    models = http(ai_archive, "/api/ai/models")["models"]
    stopped = next(model for model in models if model["name"] == "test-queued")
    assert stopped["enabled"] is False and stopped["stoppedBy"] == "safety-officer"
    http(ai_archive, "/api/ai/models/test-queued/start", {"by": "safety-officer"})
    models = http(ai_archive, "/api/ai/models")["models"]
    assert next(m for m in models if m["name"] == "test-queued")["enabled"] is True


def test_ingest_is_not_blocked_while_models_run(ai_archive: ArchiveProcess, tmp_path: Path) -> None:
    http(ai_archive, "/api/ai/models/test-queued/start", {"by": "test"})
    paths = generate_ct_series(tmp_path, instances=12, rows=64, columns=64, patient_id="AI002")
    started = time.monotonic()
    run_tool("storescu", "-aec", "OPENVNA", *ai_archive.address, *map(str, paths))
    assert time.monotonic() - started < 20
    found = http(ai_archive, "/dicom-web/instances?PatientID=AI002")
    assert len(found) == 12


def test_image_level_model_runs_on_each_radiograph(
    ai_archive: ArchiveProcess, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    _, studies = sample_studies
    study = next(s for s in studies if s.modality in ("CR", "DX") and len(s.paths) == 2)
    run_tool("storescu", "-aec", "OPENVNA", *ai_archive.address, *map(str, study.paths))
    jobs = wait_final(ai_archive, study.study_instance_uid, {"test-xray"}, timeout=60)
    assert jobs["test-xray"]["state"] == "completed", jobs["test-xray"]
    assert not {"test-dense", "test-queued"} & set(jobs)  # CT and MR models left it alone
    (run,) = http(ai_archive, f"/api/ai/jobs/{jobs['test-xray']['jobUID']}")["runs"]
    images = {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in study.paths
    }
    seen = {finding["description"].split()[0] for finding in run["result"]["findings"]}
    assert seen == images  # one call per image, each a 2D volume of its own
    reports = [output for output in run["outputs"] if output["kind"] == "sr"]
    assert len(reports) == 2 and len({r["sopInstanceUID"] for r in reports}) == 2


def test_external_engine_pulls_its_job_over_ups(
    ai_archive: ArchiveProcess, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    """IHE AI Workflow for Imaging: the archive schedules, an outside engine performs."""
    _, studies = sample_studies
    study = next(s for s in studies if s.modality == "US")
    run_tool("storescu", "-aec", "OPENVNA", *ai_archive.address, *map(str, study.paths))
    uid = study.study_instance_uid
    wait_until(lambda: "test-external" in by_model(jobs_of(ai_archive, uid)), 30, "the job")
    job = by_model(jobs_of(ai_archive, uid))["test-external"]
    assert job["state"] == "scheduled"  # the archive's own worker leaves it alone
    found = requests.get(
        f"{base(ai_archive)}/workitems",
        params={
            "ScheduledStationNameCodeSequence.CodeValue": "test-external",
            "ProcedureStepState": "SCHEDULED",
        },
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    assert found.status_code == 200, found.text
    (item,) = [w for w in found.json() if w["00080018"]["Value"][0] == job["jobUID"]]
    inputs = json.dumps(item["00404021"])  # Input Information Sequence
    assert uid in inputs and str(pydicom.dcmread(study.paths[0]).SOPInstanceUID) in inputs

    owner = new_uid()
    assert change_state(ai_archive, job["jobUID"], "IN PROGRESS", owner).status_code == 200
    running = http(ai_archive, f"/api/ai/jobs/{job['jobUID']}")
    assert running["state"] == "running" and running["worker"] == f"ups:{owner}"
    filled = post_json(
        f"{base(ai_archive)}/workitems/{job['jobUID']}?{owner}", performed_procedure()
    )
    assert filled.status_code == 200, filled.text
    assert change_state(ai_archive, job["jobUID"], "COMPLETED", owner).status_code == 200
    assert http(ai_archive, f"/api/ai/jobs/{job['jobUID']}")["state"] == "completed"


def test_a_killed_ai_worker_is_replaced_and_its_attempt_retried(
    ai_archive: ArchiveProcess, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    http(ai_archive, "/api/ai/models/test-queued/start", {"by": "test"})
    wait_until(lambda: (http(ai_archive, "/api/ai/models")["worker"] or {}).get("alive"), 30,
               "an AI worker heartbeat")  # fmt: skip
    worker = http(ai_archive, "/api/ai/models")["worker"]
    _, studies = sample_studies
    mr = next(study for study in studies if study.modality == "MR")
    run_tool("storescu", "-aec", "OPENVNA", *ai_archive.address, *map(str, mr.paths))
    series = str(pydicom.dcmread(mr.paths[0], stop_before_pixels=True).SeriesInstanceUID)
    (job,) = http(
        ai_archive,
        "/api/ai/jobs",
        {"study": mr.study_instance_uid, "series": series, "models": ["test-queued"]},
    )
    uid = job["jobUID"]
    wait_until(
        lambda: [run["status"] for run in http(ai_archive, f"/api/ai/jobs/{uid}")["runs"]]
        == ["running"],
        60,
        "the attempt to start",
    )
    os.kill(worker["pid"], signal.SIGKILL)  # as the OOM killer would

    def replaced() -> bool:
        now = http(ai_archive, "/api/ai/models")["worker"]
        return bool(now and now["alive"] and now["pid"] != worker["pid"])

    wait_until(replaced, 60, "a new AI worker")
    wait_until(lambda: http(ai_archive, f"/api/ai/jobs/{uid}")["attempts"] == 2, 60,
               "the attempt to be retried")  # fmt: skip
    retried = http(ai_archive, f"/api/ai/jobs/{uid}")
    assert retried["state"] in ("scheduled", "running")
    first_run = retried["runs"][-1]  # runs are newest first
    assert first_run["status"] == "failed"
    assert "the AI worker stopped during the attempt" in first_run["error"]
    http(ai_archive, f"/api/ai/jobs/{uid}/cancel", {"by": "test"})
    wait_until(lambda: http(ai_archive, f"/api/ai/jobs/{uid}")["state"] == "cancelled", 10,
               "the retried attempt to be cancelled")  # fmt: skip
