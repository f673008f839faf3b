"""The issue's "done when", through a real ``openvna serve``: CT studies sent with
``storescu`` produce, with no human action, SR and SEG objects in the same study, read
back over DICOMweb with highdicom and checked against the phantoms' ground truth
(voxel-wise for the SEG); a remote model served by a real MLServer (KServe v2) runs on
the same arrival and its SR lands in the study too.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from openvna.ai.models.onnx_example.adapter import PULMONARY_NODULE
from openvna.sample.phantoms import (
    ChestPhantom,
    HeadPhantom,
    write_chest_phantom,
    write_head_phantom,
)
from tests.conftest import ArchiveProcess, free_port, run_tool, wait_until
from tests.integration.test_kserve_runner import MODEL_DIR as KSERVE_MODELS
from tests.integration.test_kserve_runner import MLServer, mlserver  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

FINAL = ("completed", "failed", "cancelled")


@dataclass
class Phantoms:
    archive: ArchiveProcess
    chest: ChestPhantom
    head: HeadPhantom


def api(archive: ArchiveProcess, path: str) -> Any:
    with urllib.request.urlopen(f"{archive.http_url}{path}", timeout=30) as response:
        return json.loads(response.read() or b"null")


def completed_jobs(archive: ArchiveProcess, study: str, models: set[str]) -> dict[str, Any]:
    def done() -> bool:
        jobs = {job["model"]: job for job in api(archive, f"/api/ai/jobs?study={study}")}
        return models <= set(jobs) and all(jobs[name]["state"] in FINAL for name in models)

    wait_until(done, 180, f"AI jobs {sorted(models)} on {study}")
    jobs = {job["model"]: job for job in api(archive, f"/api/ai/jobs?study={study}")}
    for name in models:
        assert jobs[name]["state"] == "completed", jobs[name]
    return jobs


@pytest.fixture(scope="module")
def phantoms(
    tmp_path_factory: pytest.TempPathFactory,
    mlserver: MLServer,  # noqa: F811 - the fixture imported above
) -> Iterator[Phantoms]:
    directory = tmp_path_factory.mktemp("reference")
    models = directory / "models" / "mean-hu-remote"
    models.mkdir(parents=True)
    (models / "manifest.toml").write_text(
        f"""
name = "mean-hu-remote"
version = "1"
description = "Mean HU of the volume, computed by a remote KServe v2 server"
[input]
modalities = ["CT"]
[outputs]
findings = true
measurements = true
priority = true
[runtime]
kind = "kserve"
url = "{mlserver.url}"
model_name = "mean-hu"
model_version = "1"
adapter = "client_adapter:MeanHuAdapter"
"""
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(KSERVE_MODELS), os.environ.get("PYTHONPATH", "")]),
        "OPENVNA_AI__MODELS_DIR": str(directory / "models"),
        "OPENVNA_AI__WORKERS": "2",
    }
    archive = ArchiveProcess(
        directory / "data", free_port(), "OPENVNA", None, directory / "log",
        ("--stable-after", "1"), env=env,
    )  # fmt: skip
    archive.start()
    try:
        chest = write_chest_phantom(
            directory / "chest", slices=60, matrix=256, slice_spacing_mm=5.0, patient_id="PHC"
        )
        head = write_head_phantom(directory / "head", hemorrhage=True, matrix=256, patient_id="PHH")
        for paths in (chest.paths, head.paths):
            run_tool("storescu", "-aec", "OPENVNA", *archive.address, *map(str, paths))
        yield Phantoms(archive, chest, head)
    finally:
        archive.stop()


def in_array_order(paths: tuple[Path, ...]) -> list[str]:
    """SOP Instance UIDs in the phantom arrays' slice order: the phantoms write instance 1
    as the most superior slice, the last of the array."""
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths][::-1]


def retrieve(archive: ArchiveProcess, study: str, modality: str) -> list[pydicom.Dataset]:
    client = DICOMwebClient(url=f"{archive.http_url}/dicom-web")
    found = client.search_for_series(study, search_filters={"Modality": modality})
    assert len(found) == 1, f"one {modality} series expected, got {len(found)}"
    series_uid = found[0]["0020000E"]["Value"][0]
    return list(client.retrieve_series(study, series_uid))


def test_chest_ct_gets_a_lung_seg_aligned_with_the_ground_truth(phantoms: Phantoms) -> None:
    chest = phantoms.chest
    completed_jobs(phantoms.archive, chest.study_uid, {"ct-lung", "mean-hu-remote"})
    (seg_dataset,) = retrieve(phantoms.archive, chest.study_uid, "SEG")
    seg = hd.seg.Segmentation.from_dataset(seg_dataset)
    assert seg.SeriesDescription == "AI ct-lung 1.0.0"
    source_uids = in_array_order(chest.paths)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids, segment_numbers=[1], combine_segments=True
    )
    mask = np.asarray(pixels) > 0  # (slices, rows, columns), slice i on source i
    truth = chest.lung_mask
    assert mask.shape == truth.shape
    dice = 2 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())
    assert dice >= 0.97, f"Dice {dice:.3f} of the stored SEG against the phantom's lungs"
    shifted = np.roll(truth, 1, axis=0)  # one slice off would cost a lot at 5 mm
    assert 2 * np.logical_and(mask, shifted).sum() / (mask.sum() + shifted.sum()) < dice - 0.02


def test_chest_ct_sr_reports_lung_volume_and_references_its_sources(phantoms: Phantoms) -> None:
    chest = phantoms.chest
    completed_jobs(phantoms.archive, chest.study_uid, {"ct-lung", "mean-hu-remote"})
    reports = retrieve_all_sr(phantoms.archive, chest.study_uid)
    lung = next(sr for sr in reports if sr.SeriesDescription == "AI ct-lung 1.0.0")
    report = hd.sr.Comprehensive3DSR.from_dataset(lung)
    tree = json.dumps(lung.to_json_dict())
    assert "ct-lung" in tree and "1.0.0" in tree  # algorithm name and version
    groups = report.content.get_volumetric_roi_measurement_groups()
    volumes = [
        measurement.value
        for group in groups
        for measurement in group.get_measurements()
        if measurement.name.value == "118565006" and measurement.unit.value == "ml"
    ]
    assert volumes, "no lung volume measurement in ml"
    assert max(volumes) == pytest.approx(chest.expected_lung_volume_ml, rel=0.03)
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study in lung.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in chest.paths}  # fmt: skip
    assert sources <= evidence  # every input slice is evidence of the report
    (seg_dataset,) = retrieve(phantoms.archive, chest.study_uid, "SEG")
    assert seg_dataset.SOPInstanceUID in evidence  # and so is the SEG it measures


def retrieve_all_sr(archive: ArchiveProcess, study: str) -> list[pydicom.Dataset]:
    client = DICOMwebClient(url=f"{archive.http_url}/dicom-web")
    found = client.search_for_instances(study, search_filters={"Modality": "SR"})
    return [
        client.retrieve_instance(study, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
        for item in found
    ]


def test_head_ct_with_planted_bleed_is_flagged_with_priority(phantoms: Phantoms) -> None:
    head = phantoms.head
    jobs = completed_jobs(phantoms.archive, head.study_uid, {"head-ct-hyperdensity"})
    assert "ct-lung" not in jobs  # body part HEAD does not match the lung model
    run = api(phantoms.archive, f"/api/ai/jobs/{jobs['head-ct-hyperdensity']['jobUID']}")
    result = run["runs"][0]["result"]
    (finding,) = result["findings"]
    assert finding["present"] is True and finding["finding"]["value"] == "1386000"
    assert result["priority"] >= 0.7
    (seg_dataset,) = retrieve(phantoms.archive, head.study_uid, "SEG")
    seg = hd.seg.Segmentation.from_dataset(seg_dataset)
    uids = in_array_order(head.paths)
    mask = np.asarray(
        seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[1], combine_segments=True
        )
    ) > 0  # fmt: skip
    truth = head.hemorrhage_mask
    dice = 2 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())
    assert dice >= 0.7, f"Dice {dice:.3f} of the candidate region against the planted bleed"


def test_remote_kserve_model_result_is_stored_in_the_study(phantoms: Phantoms) -> None:
    chest = phantoms.chest
    jobs = completed_jobs(phantoms.archive, chest.study_uid, {"mean-hu-remote"})
    job = api(phantoms.archive, f"/api/ai/jobs/{jobs['mean-hu-remote']['jobUID']}")
    (run,) = job["runs"]
    assert run["runtime"] == "kserve" and run["status"] == "completed"
    (measurement,) = run["result"]["measurements"]
    stored_sr = {output["sopInstanceUID"] for output in run["outputs"] if output["kind"] == "sr"}
    assert len(stored_sr) == 1
    reports = retrieve_all_sr(phantoms.archive, chest.study_uid)
    remote = next(sr for sr in reports if sr.SOPInstanceUID in stored_sr)
    assert remote.SeriesDescription == "AI mean-hu-remote 1"
    assert remote.StudyInstanceUID == chest.study_uid
    assert f"{measurement['value']:.1f}"[:4] in json.dumps(remote.to_json_dict())


def test_onnx_example_model_runs_on_demand(phantoms: Phantoms) -> None:
    chest = phantoms.chest
    completed_jobs(phantoms.archive, chest.study_uid, {"ct-lung"})
    request = urllib.request.Request(
        f"{phantoms.archive.http_url}/api/ai/jobs",
        data=json.dumps({"study": chest.study_uid, "models": ["ct-nodule-example"]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        (created,) = json.loads(response.read())
    assert created["trigger"] == "api"  # run_on_arrival = false: never by rule
    jobs = completed_jobs(phantoms.archive, chest.study_uid, {"ct-nodule-example"})
    job = api(phantoms.archive, f"/api/ai/jobs/{jobs['ct-nodule-example']['jobUID']}")
    (run,) = job["runs"]
    assert run["runtime"] == "onnx" and run["status"] == "completed"
    assert len(run["artifactSHA256"]) == 64  # the model.onnx file's hash
    (finding,) = run["result"]["findings"]
    assert finding["finding"]["value"] == PULMONARY_NODULE.value
    assert 0.0 <= finding["probability"] <= 1.0
    assert [output["kind"] for output in run["outputs"]] == ["sr"]
