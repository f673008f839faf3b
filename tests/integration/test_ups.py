"""UPS-RS against a real archive: an external AI engine written with plain HTTP (requests)
and a WebSocket client (websockets) pulls work the standard way (PS3.18 11, PS3.4 CC).

Expectations come from the standard: status codes of PS3.18 Tables 11.x.3-1, Warning
texts of 11.x.3.2, DIMSE statuses of PS3.4 CC.2, event types of CC.2.4.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, insert, select
from websockets.sync.client import ClientConnection, connect

from openvna.index.database import create_index_engine
from openvna.index.schema import ai_jobs
from openvna.ups.service import WorkitemService
from tests.conftest import ArchiveProcess, archive_for_module

pytestmark = pytest.mark.integration

DICOM_JSON = "application/dicom+json"
INCONSISTENT = (
    "299 openvna: The submitted request is inconsistent with the state of the UPS Instance."
)


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    with archive_for_module(tmp_path_factory, "ups") as running:
        yield running


@pytest.fixture(scope="module")
def engine(archive: ArchiveProcess) -> Iterator[Engine]:
    """The running archive's own index, as the AI orchestrator reaches it."""
    index = create_index_engine(f"sqlite:///{(Path(archive.data_dir) / 'index.sqlite').resolve()}")
    yield index
    index.dispose()


def base(archive: ArchiveProcess) -> str:
    return f"{archive.http_url}/dicom-web"


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        "00080100": element("SH", value),
        "00080102": element("SH", scheme),
        "00080104": element("LO", meaning),
    }


def workitem(
    label: str, patient_id: str, station: str, start: str = "20300101120000"
) -> dict[str, Any]:
    study = new_uid()
    return {
        "00741204": element("LO", label),  # ProcedureStepLabel
        "00100020": element("LO", patient_id),
        "00100010": element("PN", {"Alphabetic": "Test^Patient"}),
        "00404005": element("DT", start),  # ScheduledProcedureStepStartDateTime
        "00404025": element("SQ", code(station, "99TEST", "test engine")),
        "00404021": element(
            "SQ", {"0040E020": element("CS", "DICOM"), "0020000D": element("UI", study)}
        ),
    }


def post_json(url: str, payload: Any) -> requests.Response:
    return requests.post(
        url, data=json.dumps(payload), headers={"Content-Type": DICOM_JSON}, timeout=30
    )


def create(archive: ArchiveProcess, payload: dict[str, Any], uid: str) -> requests.Response:
    return post_json(f"{base(archive)}/workitems?{uid}", payload)


def change_state(
    archive: ArchiveProcess, uid: str, state: str, transaction_uid: str | None
) -> requests.Response:
    payload: dict[str, Any] = {"00741000": element("CS", state)}
    if transaction_uid is not None:
        payload["00081195"] = element("UI", transaction_uid)
    return requests.put(
        f"{base(archive)}/workitems/{uid}/state",
        data=json.dumps(payload),
        headers={"Content-Type": DICOM_JSON},
        timeout=30,
    )


def retrieve(archive: ArchiveProcess, uid: str) -> dict[str, Any]:
    response = requests.get(
        f"{base(archive)}/workitems/{uid}", headers={"Accept": DICOM_JSON}, timeout=30
    )
    assert response.status_code == 200, response.text
    found = response.json()
    assert isinstance(found, list) and len(found) == 1
    return dict(found[0])


def first(dataset: dict[str, Any], tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value", [])
    return values[0] if values else None


def progress(percent: int, text: str) -> dict[str, Any]:
    return {
        "00741002": element(
            "SQ", {"00741004": element("DS", percent), "00741006": element("ST", text)}
        )
    }


def performed_procedure() -> dict[str, Any]:
    return {
        "00741216": element(
            "SQ",
            {
                "00404050": element("DT", "20300101120100"),
                "00404051": element("DT", "20300101120500"),
                "00404028": element("SQ", code("ENGINE", "99TEST", "test engine")),
                "00404019": element("SQ", code("110001", "DCM", "Image Processing")),
                "00404033": element("SQ"),
            },
        )
    }


def failure(response: requests.Response) -> tuple[int, str, str]:
    """HTTP status, Warning header and DIMSE status of a refused request."""
    return (
        response.status_code,
        response.headers.get("Warning", ""),
        response.json().get("dicomStatus", ""),
    )


def receive(
    channel: ClientConnection, uid: str, count: int, timeout: float = 15
) -> list[dict[str, Any]]:
    """The next ``count`` event reports about ``uid`` (others are skipped)."""
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(reports) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"only {len(reports)} of {count} event reports for {uid}: {reports}"
            )
        try:
            message = channel.recv(timeout=remaining)
        except TimeoutError:
            continue
        report = json.loads(message)
        if first(report, "00001000") == uid:
            reports.append(report)
    return reports


def summary(reports: list[dict[str, Any]]) -> list[tuple[int, str | None]]:
    """(Event Type ID, Procedure Step State) of each report."""
    return [(first(r, "00001002"), first(r, "00741000")) for r in reports]


def open_channel(archive: ArchiveProcess, aet: str) -> ClientConnection:
    url = archive.http_url.replace("http://", "ws://") + f"/dicom-web/ws/subscribers/{aet}"
    return connect(url, open_timeout=10)


def test_external_engine_claims_updates_and_completes(archive: ArchiveProcess) -> None:
    uid = new_uid()
    patient_id = f"P{uuid.uuid4().hex[:8]}"
    with open_channel(archive, "ENGINE1") as channel:
        created = create(archive, workitem("Lung CAD", patient_id, "ENGINE-X"), uid)
        assert created.status_code == 201, created.text
        assert created.headers["Location"] == f"{base(archive)}/workitems/{uid}"
        # no priority was given: the SCP filled MEDIUM (PS3.18 11.4.3.2)
        assert (
            created.headers["Warning"]
            == "299 openvna: The Workitem was created with modifications."
        )

        found = requests.get(
            f"{base(archive)}/workitems",
            params={
                "ProcedureStepState": "SCHEDULED",
                "ScheduledStationNameCodeSequence.CodeValue": "ENGINE-X",
                "PatientID": patient_id,
                "ScheduledProcedureStepStartDateTime": "20291231-20300102",
                "ScheduledProcedureStepPriority": "MEDIUM",
            },
            headers={"Accept": DICOM_JSON},
            timeout=30,
        )
        assert found.status_code == 200, found.text
        assert [first(w, "00080018") for w in found.json()] == [uid]
        assert first(found.json()[0], "00741000") == "SCHEDULED"
        none = requests.get(
            f"{base(archive)}/workitems",
            params={"PatientID": patient_id, "ScheduledProcedureStepStartDateTime": "2031-"},
            timeout=30,
        )
        assert none.status_code == 204 and none.content == b""

        subscribed = requests.post(
            f"{base(archive)}/workitems/{uid}/subscribers/ENGINE1", timeout=30
        )
        assert subscribed.status_code == 201
        assert subscribed.headers["Content-Location"].endswith("/dicom-web/ws/subscribers/ENGINE1")
        assert subscribed.headers["Content-Location"].startswith("ws://")

        owner = new_uid()
        claimed = change_state(archive, uid, "IN PROGRESS", owner)
        assert claimed.status_code == 200, claimed.text
        second = change_state(archive, uid, "IN PROGRESS", new_uid())
        assert failure(second) == (409, INCONSISTENT, "C302")
        assert "00081195" not in retrieve(archive, uid)  # the owner's lock stays secret

        wrong = post_json(
            f"{base(archive)}/workitems/{uid}?transaction-uid={new_uid()}", progress(50, "half")
        )
        assert failure(wrong) == (
            400,
            "299 openvna: The target URI did not reference a claimed Workitem.",
            "C301",
        )
        missing = post_json(f"{base(archive)}/workitems/{uid}", progress(50, "half"))
        assert failure(missing)[0::2] == (400, "C301")
        updated = post_json(f"{base(archive)}/workitems/{uid}?{owner}", progress(50, "half"))
        assert updated.status_code == 200, updated.text

        early = change_state(archive, uid, "COMPLETED", owner)
        assert failure(early) == (409, INCONSISTENT, "C304")
        wrong_owner = change_state(archive, uid, "COMPLETED", new_uid())
        assert failure(wrong_owner) == (
            400,
            "299 openvna: The Transaction UID is incorrect.",
            "C301",
        )
        assert failure(change_state(archive, uid, "COMPLETED", None)) == (
            400,
            "299 openvna: The Transaction UID is missing.",
            "C301",
        )
        filled = post_json(
            f"{base(archive)}/workitems/{uid}?transaction-uid={owner}", performed_procedure()
        )
        assert filled.status_code == 200, filled.text
        completed = change_state(archive, uid, "COMPLETED", owner)
        assert completed.status_code == 200, completed.text

        reports = receive(channel, uid, 4)
        assert summary(reports) == [
            (1, "SCHEDULED"),
            (1, "IN PROGRESS"),
            (3, None),
            (1, "COMPLETED"),
        ]
        assert first(reports[0], "00000002") == "1.2.840.10008.5.1.4.34.6.4"
        assert first(first(reports[2], "00741002"), "00741004") in (50, "50")
        message_ids = [first(r, "00000110") for r in reports]
        assert message_ids == sorted(message_ids)

    stored = retrieve(archive, uid)
    assert first(stored, "00741000") == "COMPLETED"
    again = change_state(archive, uid, "COMPLETED", owner)
    assert again.status_code == 200
    assert (
        again.headers["Warning"]
        == "299 openvna: The UPS is already in the requested state of COMPLETED."
    )
    assert failure(change_state(archive, uid, "CANCELED", owner)) == (409, INCONSISTENT, "C300")
    cancel = post_json(f"{base(archive)}/workitems/{uid}/cancelrequest", {})
    assert failure(cancel) == (409, INCONSISTENT, "C311")
    late = post_json(f"{base(archive)}/workitems/{uid}?{owner}", progress(90, "late"))
    assert late.status_code == 400 and late.json()["dicomStatus"] == "C300"
    assert first(retrieve(archive, uid), "00741000") == "COMPLETED"


def test_cancel_request_cancels_a_scheduled_workitem(archive: ArchiveProcess) -> None:
    with open_channel(archive, "WATCHER") as channel:
        subscribed = requests.post(
            f"{base(archive)}/workitems/1.2.840.10008.5.1.4.34.5/subscribers/WATCHER",
            params={"deletionlock": "true"},
            timeout=30,
        )
        assert subscribed.status_code == 201
        uid = new_uid()
        assert create(archive, workitem("Triage", "P-CANCEL", "ENGINE-Y"), uid).status_code == 201
        reason = {"00741238": element("LT", "ordered by mistake")}
        accepted = post_json(f"{base(archive)}/workitems/{uid}/cancelrequest", reason)
        assert accepted.status_code == 202, accepted.text
        # the worklist subscription covered the new workitem: SCHEDULED at creation, then
        # IN PROGRESS and CANCELED (the state diagram has no direct edge)
        reports = receive(channel, uid, 3)
        assert summary(reports) == [(1, "SCHEDULED"), (1, "IN PROGRESS"), (1, "CANCELED")]
        assert first(reports[2], "00741238") == "ordered by mistake"

        suspended = requests.post(
            f"{base(archive)}/workitems/1.2.840.10008.5.1.4.34.5/subscribers/WATCHER/suspend",
            timeout=30,
        )
        assert suspended.status_code == 200
        unseen = new_uid()
        assert create(archive, workitem("Later", "P-CANCEL", "ENGINE-Y"), unseen).status_code == 201
        assert (
            requests.post(
                f"{base(archive)}/workitems/{unseen}/cancelrequest", timeout=30
            ).status_code
            == 202
        )
        with pytest.raises(AssertionError):
            receive(channel, unseen, 1, timeout=1.5)

    stored = retrieve(archive, uid)
    assert first(stored, "00741000") == "CANCELED"
    progress_item = first(stored, "00741002")
    assert first(progress_item, "00741238") == "ordered by mistake"
    assert first(progress_item, "00404052")  # Procedure Step Cancellation DateTime
    again = post_json(f"{base(archive)}/workitems/{uid}/cancelrequest", {})
    assert again.status_code == 202
    assert (
        again.headers["Warning"]
        == "299 openvna: The UPS is already in the requested state of CANCELED."
    )
    assert failure(change_state(archive, uid, "IN PROGRESS", new_uid())) == (
        409,
        INCONSISTENT,
        "C300",
    )
    assert failure(change_state(archive, uid, "SCHEDULED", new_uid()))[0::2] == (400, "C303")
    gone = requests.delete(
        f"{base(archive)}/workitems/1.2.840.10008.5.1.4.34.5/subscribers/WATCHER", timeout=30
    )
    assert gone.status_code == 200
    assert (
        requests.delete(
            f"{base(archive)}/workitems/{uid}/subscribers/WATCHER", timeout=30
        ).status_code
        == 404
    )  # unsubscribing from the worklist ended its workitem subscriptions


def test_invalid_requests(archive: ArchiveProcess) -> None:
    unknown = new_uid()
    missing = requests.get(f"{base(archive)}/workitems/{unknown}", timeout=30)
    assert missing.status_code == 404 and missing.json()["dicomStatus"] == "C307"
    assert change_state(archive, unknown, "IN PROGRESS", new_uid()).status_code == 404
    uid = new_uid()
    assert create(archive, workitem("Dup", "P-DUP", "E"), uid).status_code == 201
    duplicate = create(archive, workitem("Dup", "P-DUP", "E"), uid)
    assert duplicate.status_code == 409 and duplicate.json()["dicomStatus"] == "0111"
    not_scheduled = workitem("Bad", "P-DUP", "E") | {"00741000": element("CS", "COMPLETED")}
    refused = create(archive, not_scheduled, new_uid())
    assert refused.status_code == 400 and refused.json()["dicomStatus"] == "C309"
    no_label = workitem("x", "P-DUP", "E")
    del no_label["00741204"]
    assert create(archive, no_label, new_uid()).status_code == 400
    assert (
        requests.post(
            f"{base(archive)}/workitems",
            data="{}",
            headers={"Content-Type": "text/plain"},
            timeout=30,
        ).status_code
        == 415
    )
    bad_range = requests.get(
        f"{base(archive)}/workitems",
        params={"ScheduledProcedureStepStartDateTime": "2031-2030"},
        timeout=30,
    )
    assert bad_range.status_code == 400


# -- the AI orchestrator's workitems ------------------------------------------------------


def insert_job(engine: Engine, service: WorkitemService, model: str) -> tuple[int, str]:
    """An AI job row as the orchestrator writes it, with its workitem, in one transaction.
    Its next attempt lies far ahead, so the archive's own AI worker leaves it alone."""
    job_uid = new_uid()
    study, series = new_uid(), new_uid()
    now = time.time()
    with engine.begin() as connection:
        result = connection.execute(
            insert(ai_jobs).values(
                job_uid=job_uid,
                model_name=model,
                model_version="1.0",
                study_instance_uid=study,
                series_instance_uid=series,
                state="scheduled",
                trigger="api",
                requested_by="test",
                priority=0,
                attempts=0,
                max_attempts=1,
                next_attempt_at=now + 10**9,
                created_at=now,
                worker="",
                error="",
                progress=0,
            )
        )
        primary_key = result.inserted_primary_key
        assert primary_key is not None
        job_pk = int(primary_key[0])
        service.create_for_job(
            connection,
            job_pk=job_pk,
            job_uid=job_uid,
            model_name=model,
            model_version="1.0",
            study_instance_uid=study,
            series_instance_uid=series,
            patient_id="P-AI",
            patient_name="Ai^Patient",
            inputs=[("1.2.840.10008.5.1.4.1.1.2", new_uid())],
            priority="HIGH",
            retrieve_url=f"http://archive/dicom-web/studies/{study}/series/{series}",
        )
    return job_pk, job_uid


def job(engine: Engine, job_pk: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(select(ai_jobs).where(ai_jobs.c.pk == job_pk)).one()


def test_ai_job_follows_an_external_engine(archive: ArchiveProcess, engine: Engine) -> None:
    service = WorkitemService(engine)
    job_pk, job_uid = insert_job(engine, service, "lungcad")
    found = requests.get(
        f"{base(archive)}/workitems",
        params={
            "ScheduledStationNameCodeSequence.CodeValue": "lungcad",
            "ProcedureStepState": "SCHEDULED",
        },
        timeout=30,
    ).json()
    assert [first(w, "00080018") for w in found] == [job_uid]
    listed = found[0]
    assert first(listed, "00741204") == "AI lungcad 1.0"
    assert first(listed, "00741200") == "HIGH"
    inputs = first(listed, "00404021")
    assert first(first(inputs, "0040E025"), "00081190").endswith(
        "/series/" + first(inputs, "0020000E")
    )
    assert len(inputs["00081199"]["Value"]) == 1

    owner = new_uid()
    assert change_state(archive, job_uid, "IN PROGRESS", owner).status_code == 200
    running = job(engine, job_pk)
    assert (running.state, running.worker) == ("running", f"ups:{owner}")
    assert running.started_at is not None
    assert (
        post_json(
            f"{base(archive)}/workitems/{job_uid}?{owner}", progress(40, "segmenting")
        ).status_code
        == 200
    )
    assert job(engine, job_pk).progress == 40
    assert (
        post_json(f"{base(archive)}/workitems/{job_uid}?{owner}", performed_procedure()).status_code
        == 200
    )
    assert change_state(archive, job_uid, "COMPLETED", owner).status_code == 200
    done = job(engine, job_pk)
    assert (done.state, done.progress) == ("completed", 100) and done.finished_at is not None


def test_ai_job_run_by_the_archive(archive: ArchiveProcess, engine: Engine) -> None:
    service = WorkitemService(engine)
    job_pk, job_uid = insert_job(engine, service, "brainseg")
    with engine.begin() as connection:  # the archive's worker claims the job
        connection.execute(
            ai_jobs.update()
            .where(ai_jobs.c.pk == job_pk)
            .values(state="running", worker="openvna-ai-1")
        )
    refused = change_state(archive, job_uid, "IN PROGRESS", new_uid())
    assert failure(refused) == (409, INCONSISTENT, "C302")
    assert first(retrieve(archive, job_uid), "00741000") == "IN PROGRESS"

    asked = post_json(
        f"{base(archive)}/workitems/{job_uid}/cancelrequest",
        {"00741238": element("LT", "wrong series"), "00741236": element("AE", "RADIOLOGIST")},
    )
    assert asked.status_code == 202, asked.text
    cancelled = job(engine, job_pk)
    assert cancelled.state == "cancelled"
    assert cancelled.error == "cancellation requested by RADIOLOGIST: wrong series"
    # the worker kills the model and ends the workitem
    with engine.begin() as connection:
        service.set_job_state(connection, job_uid=job_uid, state="CANCELED", reason="wrong series")
    stored = retrieve(archive, job_uid)
    assert first(stored, "00741000") == "CANCELED"
    assert first(first(stored, "00741002"), "00741238") == "wrong series"
    log = [
        (e.event_type_id, e.information.get("00741000", {}).get("Value", [None])[0])
        for e in service.event_log(job_uid)
    ]
    assert log == [(1, "SCHEDULED"), (1, "IN PROGRESS"), (2, None), (1, "CANCELED")]


def test_archive_completes_its_own_job(archive: ArchiveProcess, engine: Engine) -> None:
    service = WorkitemService(engine)
    _, job_uid = insert_job(engine, service, "nodule")
    study, series, result = new_uid(), new_uid(), new_uid()
    with engine.begin() as connection:
        service.set_job_state(
            connection,
            job_uid=job_uid,
            state="COMPLETED",
            outputs=[("1.2.840.10008.5.1.4.1.1.88.33", result, study, series)],
        )
    stored = retrieve(archive, job_uid)
    assert first(stored, "00741000") == "COMPLETED"
    performed = first(stored, "00741216")
    output = first(performed, "00404033")
    assert (first(output, "0020000D"), first(output, "0020000E")) == (study, series)
    assert first(first(output, "00081199"), "00081155") == result
    assert first(performed, "00404050") and first(performed, "00404051")
    states = [e.information["00741000"]["Value"][0] for e in service.event_log(job_uid)]
    assert states == ["SCHEDULED", "IN PROGRESS", "COMPLETED"]
    with engine.begin() as connection:  # repeating the end state changes nothing
        service.set_job_state(connection, job_uid=job_uid, state="COMPLETED")
    assert failure(change_state(archive, job_uid, "IN PROGRESS", new_uid())) == (
        409,
        INCONSISTENT,
        "C300",
    )
