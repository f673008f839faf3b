"""The dicomweb-client command-line tool against a real archive: store, search and
retrieve with the reference client's own CLI, as a script or an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, dataset_bytes

Samples = tuple[Path, list[GeneratedStudy]]


def dicomweb_cli(archive: ArchiveProcess, *args: str) -> str:
    program = Path(sys.executable).parent / "dicomweb_client"
    result = subprocess.run(
        [str(program), "--url", f"{archive.http_url}/dicom-web", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"dicomweb_client {args} failed:\n{result.stderr}"
    return result.stdout


def test_store_search_and_retrieve_with_the_cli(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    study = next(s for s in sample_studies[1] if s.modality == "CT")
    dicomweb_cli(archive, "store", "instances", *(str(p) for p in study.paths))

    found = json.loads(
        dicomweb_cli(
            archive, "search", "studies", "--filter", f"PatientID={study.patient_id}", "--prettify"
        )
    )
    assert study.study_instance_uid in {s["0020000D"]["Value"][0] for s in found}

    out = tmp_path / "retrieved"
    out.mkdir()
    dicomweb_cli(
        archive,
        "retrieve",
        "studies",
        "--study",
        study.study_instance_uid,
        "full",
        "--save",
        "--output-dir",
        str(out),
        "--media-type",
        "application/dicom",
        "*",
    )
    originals = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in study.paths}
    saved = sorted(out.rglob("*"))
    received = {}
    for path in saved:
        if path.is_file():
            dataset = dcmread(path)
            received[dataset.SOPInstanceUID] = path
    assert set(received) == set(originals)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(originals[uid])

    first = dcmread(study.paths[0])
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    dicomweb_cli(
        archive,
        "retrieve",
        "instances",
        "--study",
        first.StudyInstanceUID,
        "--series",
        first.SeriesInstanceUID,
        "--instance",
        first.SOPInstanceUID,
        "frames",
        "--numbers",
        "1",
        "--save",
        "--output-dir",
        str(frames_dir),
    )
    frame_files = [p for p in frames_dir.rglob("*") if p.is_file()]
    assert len(frame_files) == 1
    assert frame_files[0].read_bytes() == first.PixelData
