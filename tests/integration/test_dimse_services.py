"""C-STORE, C-FIND, C-GET and C-MOVE against a real archive process with dcmtk's tools.

Expectations are computed from the files that were sent (read with pydicom), so every
assertion compares what the archive answers with what a client gave it.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, StoreSCP, dataset_bytes, run_tool

Samples = tuple[Path, list[GeneratedStudy]]


def _headers(samples: Samples) -> list[Any]:
    root, _studies = samples
    return [dcmread(path, stop_before_pixels=True) for path in sorted(root.rglob("*.dcm"))]


def _store_folder(archive: ArchiveProcess, folder: Path) -> subprocess.CompletedProcess[str]:
    return run_tool(
        "storescu",
        "-v",
        "+sd",
        "+r",
        "-aec",
        archive.ae_title,
        *archive.address,
        str(folder),
        timeout=300,
    )


def find(archive: ArchiveProcess, tmp_path: Path, *keys: str, model: str = "-S") -> list[Any]:
    """Run findscu, extracting every response identifier to a file (-X), return them."""
    out = tmp_path / f"find{len(list(tmp_path.glob('find*')))}"
    out.mkdir()
    args = ["findscu", model, "-X", "-od", str(out), "-aec", archive.ae_title]
    for key in keys:
        args += ["-k", key]
    result = run_tool(*args, *archive.address)
    assert "Error" not in result.stderr, result.stderr
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def _values(dataset: Any, keyword: str) -> set[str]:
    value = dataset[keyword].value
    return {value} if isinstance(value, str) else {str(v) for v in value}


@pytest.fixture
def stored(archive: ArchiveProcess, sample_studies: Samples) -> ArchiveProcess:
    result = _store_folder(archive, sample_studies[0])
    files = len(list(sample_studies[0].rglob("*.dcm")))
    assert (result.stdout + result.stderr).count("Received Store Response (Success)") == files
    return archive


def test_store_find_at_every_level_with_every_matching_type(
    stored: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    headers = _headers(sample_studies)
    by_patient: dict[str, set[str]] = defaultdict(set)
    study_date: dict[str, str] = {}
    study_modalities: dict[str, set[str]] = defaultdict(set)
    series_of_study: dict[str, set[str]] = defaultdict(set)
    instances_of_series: dict[str, set[str]] = defaultdict(set)
    names = {}
    for ds in headers:
        by_patient[ds.PatientID].add(ds.StudyInstanceUID)
        study_date[ds.StudyInstanceUID] = ds.StudyDate
        study_modalities[ds.StudyInstanceUID].add(ds.Modality)
        series_of_study[ds.StudyInstanceUID].add(ds.SeriesInstanceUID)
        instances_of_series[ds.SeriesInstanceUID].add(ds.SOPInstanceUID)
        names[ds.PatientID] = str(ds.PatientName)

    # PATIENT level, Patient Root, universal matching.
    patients = find(
        stored,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        "PatientID=",
        "PatientName=",
        "NumberOfPatientRelatedStudies=",
        model="-P",
    )
    assert {p.PatientID for p in patients} == set(by_patient)
    for patient in patients:
        assert int(patient.NumberOfPatientRelatedStudies) == len(by_patient[patient.PatientID])

    # STUDY level: single value on PatientID.
    patient_id = sorted(by_patient)[0]
    studies = find(
        stored,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        f"PatientID={patient_id}",
        "StudyInstanceUID=",
        "StudyDate=",
        "ModalitiesInStudy=",
        "NumberOfStudyRelatedSeries=",
        "NumberOfStudyRelatedInstances=",
    )
    assert {s.StudyInstanceUID for s in studies} == by_patient[patient_id]
    for study in studies:
        uid = study.StudyInstanceUID
        assert study.StudyDate == study_date[uid]
        assert _values(study, "ModalitiesInStudy") == study_modalities[uid]
        assert int(study.NumberOfStudyRelatedSeries) == len(series_of_study[uid])
        assert int(study.NumberOfStudyRelatedInstances) == sum(
            len(instances_of_series[s]) for s in series_of_study[uid]
        )

    # Wildcard, case-insensitive PN.
    name = names[patient_id]
    pattern = name[:3].lower() + "*"
    wildcard = find(
        stored, tmp_path, "QueryRetrieveLevel=STUDY", f"PatientName={pattern}", "StudyInstanceUID="
    )
    expected = {
        uid
        for pid, uids in by_patient.items()
        if names[pid].upper().startswith(name[:3].upper())
        for uid in uids
    }
    assert {s.StudyInstanceUID for s in wildcard} == expected
    single_char = find(
        stored,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        f"PatientName={name[0]}?{name[2:]}",
        "StudyInstanceUID=",
    )
    assert {s.StudyInstanceUID for s in single_char} >= by_patient[patient_id]

    # Date range matching, open and closed ranges.
    dates = sorted(set(study_date.values()))
    low, high = dates[1], dates[-2]
    ranged = find(
        stored, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyDate={low}-{high}", "StudyInstanceUID="
    )
    assert {s.StudyInstanceUID for s in ranged} == {
        uid for uid, date in study_date.items() if low <= date <= high
    }
    open_low = find(
        stored, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyDate=-{low}", "StudyInstanceUID="
    )
    assert {s.StudyInstanceUID for s in open_low} == {
        uid for uid, date in study_date.items() if date <= low
    }

    # List of UID matching.
    two = sorted(study_date)[:2]
    listed = find(
        stored, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={two[0]}\\{two[1]}"
    )
    assert {s.StudyInstanceUID for s in listed} == set(two)

    # ModalitiesInStudy matching (any series of the study).
    mr = find(
        stored, tmp_path, "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR", "StudyInstanceUID="
    )
    assert {s.StudyInstanceUID for s in mr} == {
        uid for uid, mods in study_modalities.items() if "MR" in mods
    }

    # SERIES level under a study, and Modality single value.
    study_uid = next(uid for uid, mods in study_modalities.items() if "MR" in mods)
    series = find(
        stored,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study_uid}",
        "SeriesInstanceUID=",
        "Modality=",
        "NumberOfSeriesRelatedInstances=",
    )
    assert {s.SeriesInstanceUID for s in series} == series_of_study[study_uid]
    for item in series:
        assert int(item.NumberOfSeriesRelatedInstances) == len(
            instances_of_series[item.SeriesInstanceUID]
        )

    # IMAGE level under a series.
    series_uid = sorted(series_of_study[study_uid])[0]
    images = find(
        stored,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study_uid}",
        f"SeriesInstanceUID={series_uid}",
        "SOPInstanceUID=",
        "InstanceNumber=",
    )
    assert {i.SOPInstanceUID for i in images} == instances_of_series[series_uid]

    # Patient Root at IMAGE level too.
    patient_images = find(
        stored,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"PatientID={patient_id}",
        f"StudyInstanceUID={study_uid}",
        f"SeriesInstanceUID={series_uid}",
        "SOPInstanceUID=",
        model="-P",
    )
    if study_uid in by_patient[patient_id]:
        assert {i.SOPInstanceUID for i in patient_images} == instances_of_series[series_uid]


def test_non_indexed_return_key_comes_from_stored_header(
    stored: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    headers = _headers(sample_studies)
    ct = next(ds for ds in headers if ds.Modality == "CT")
    images = find(
        stored,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={ct.StudyInstanceUID}",
        f"SeriesInstanceUID={ct.SeriesInstanceUID}",
        f"SOPInstanceUID={ct.SOPInstanceUID}",
        "SliceThickness=",
        "PixelSpacing=",
    )
    assert len(images) == 1
    assert float(images[0].SliceThickness) == float(ct.SliceThickness)


def test_invalid_query_gets_a_failure_status(stored: ArchiveProcess, tmp_path: Path) -> None:
    result = run_tool(
        "findscu",
        "-v",
        "-S",
        "-aec",
        stored.ae_title,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyDate=2020",
        *stored.address,
        check=False,
    )
    assert "DataSetDoesNotMatchSOPClass" in result.stderr + result.stdout
    bad_level = run_tool(
        "findscu",
        "-v",
        "-S",
        "-aec",
        stored.ae_title,
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=",
        *stored.address,
        check=False,
    )
    assert "Error" in bad_level.stderr + bad_level.stdout  # PATIENT is not in Study Root


def _originals(samples: Samples) -> dict[str, Path]:
    return {
        dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in samples[0].rglob("*.dcm")
    }


def test_get_returns_byte_identical_instances(
    stored: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    originals = _originals(sample_studies)
    study = sample_studies[1][0]
    out = tmp_path / "get"
    out.mkdir()
    run_tool(
        "getscu",
        "-S",
        "-aec",
        stored.ae_title,
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study.study_instance_uid}",
        *stored.address,
    )
    received = list(out.iterdir())
    assert len(received) == len(study.paths)
    for path in received:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(path) == dataset_bytes(originals[uid])


def test_move_to_peer_returns_byte_identical_instances(
    stored: ArchiveProcess, sample_studies: Samples, storescp: StoreSCP
) -> None:
    stored.cli("peers", "add", storescp.ae_title, "127.0.0.1", str(storescp.port))
    originals = _originals(sample_studies)
    study = sample_studies[1][1]
    series_uid = dcmread(study.paths[0], stop_before_pixels=True).SeriesInstanceUID
    result = run_tool(
        "movescu",
        "-v",
        "-S",
        "-aec",
        stored.ae_title,
        "-aem",
        storescp.ae_title,
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={study.study_instance_uid}",
        "-k",
        f"SeriesInstanceUID={series_uid}",
        *stored.address,
    )
    assert "Received Final Move Response (Success)" in result.stderr + result.stdout
    received = list(storescp.out_dir.iterdir())
    expected = [
        p
        for p in study.paths
        if dcmread(p, stop_before_pixels=True).SeriesInstanceUID == series_uid
    ]
    assert len(received) == len(expected)
    for path in received:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(path) == dataset_bytes(originals[uid])


def test_move_to_unknown_destination_is_refused(
    stored: ArchiveProcess, sample_studies: Samples
) -> None:
    study = sample_studies[1][0]
    result = run_tool(
        "movescu",
        "-v",
        "-S",
        "-aec",
        stored.ae_title,
        "-aem",
        "NOSUCHAE",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study.study_instance_uid}",
        *stored.address,
        check=False,
    )
    assert "MoveDestinationUnknown" in result.stderr + result.stdout


# (pydicom test file, storescu option proposing its transfer syntax)
TRANSFER_SYNTAX_FILES = [
    ("CT_small.dcm", "-xe"),  # Explicit VR Little Endian
    ("MR_small_implicit.dcm", "-xi"),  # Implicit VR Little Endian
    ("ExplVR_BigEnd.dcm", "-xb"),  # Explicit VR Big Endian
    ("image_dfl.dcm", "-xd"),  # Deflated Explicit VR Little Endian
    ("SC_jpeg_no_color_transform.dcm", "-xy"),  # JPEG Baseline
    ("JPEG-lossy.dcm", "-xx"),  # JPEG Extended
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS Lossless
    ("693_J2KI.dcm", "-xw"),  # JPEG 2000
    ("GDCMJ2K_TextGBR.dcm", "-xv"),  # JPEG 2000 Lossless
    ("MR_small_RLE.dcm", "-xr"),  # RLE Lossless
]


@pytest.mark.parametrize(("name", "propose"), TRANSFER_SYNTAX_FILES)
def test_store_keeps_transfer_syntax_as_sent_and_moves_back_the_same_bytes(
    archive: ArchiveProcess, storescp: StoreSCP, name: str, propose: str
) -> None:
    source = Path(get_testdata_file(name))
    sent = dcmread(source, stop_before_pixels=True)
    run_tool("storescu", propose, "-aec", archive.ae_title, *archive.address, str(source))
    with sqlite3.connect(archive.data_dir / "index.sqlite") as connection:
        syntax, key = connection.execute(
            "SELECT transfer_syntax_uid, storage_key FROM instances WHERE sop_instance_uid = ?",
            (sent.SOPInstanceUID,),
        ).fetchone()
    assert syntax == sent.file_meta.TransferSyntaxUID
    stored_bytes = dataset_bytes(archive.data_dir / "storage" / key)

    archive.cli("peers", "add", storescp.ae_title, "127.0.0.1", str(storescp.port))
    run_tool(
        "movescu",
        "-S",
        "-aec",
        archive.ae_title,
        "-aem",
        storescp.ae_title,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={sent.StudyInstanceUID}",
        "-k",
        f"SeriesInstanceUID={sent.SeriesInstanceUID}",
        "-k",
        f"SOPInstanceUID={sent.SOPInstanceUID}",
        *archive.address,
    )
    (moved,) = list(storescp.out_dir.iterdir())
    assert dcmread(moved, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    assert dataset_bytes(moved) == stored_bytes


def test_move_with_invalid_identifier_gets_its_failure_status(
    stored: ArchiveProcess, storescp: StoreSCP
) -> None:
    """A known destination and a SERIES-level move without SeriesInstanceUID: 0xA900,
    not the "destination unreachable" status of a failed sub-association."""
    stored.cli("peers", "add", storescp.ae_title, "127.0.0.1", str(storescp.port))
    result = run_tool(
        "movescu",
        "-v",
        "-S",
        "-aec",
        stored.ae_title,
        "-aem",
        storescp.ae_title,
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        "StudyInstanceUID=1.2.3",
        *stored.address,
        check=False,
    )
    output = result.stderr + result.stdout
    assert "Final Move Response (Error: DataSetDoesNotMatchSOPClass)" in output, output  # 0xA900
    assert list(storescp.out_dir.iterdir()) == []


# Stored compressed, retrieved by a peer that accepts only uncompressed syntaxes: the
# archive decodes (pylibjpeg-openjpeg, pyjpegls, pylibjpeg-rle) and sends the pixels.
DECOMPRESSED_ON_RETRIEVE = [
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS Lossless
    ("MR_small_jp2klossless.dcm", "-xv"),  # JPEG 2000 Lossless
    ("MR_small_RLE.dcm", "-xr"),  # RLE Lossless
]


@pytest.mark.parametrize(("name", "propose"), DECOMPRESSED_ON_RETRIEVE)
def test_get_decompresses_for_a_peer_that_accepts_only_uncompressed(
    archive: ArchiveProcess, tmp_path: Path, name: str, propose: str
) -> None:
    source = Path(get_testdata_file(name))
    sent = dcmread(source)
    run_tool("storescu", propose, "-aec", archive.ae_title, *archive.address, str(source))
    out = tmp_path / "got"
    out.mkdir()
    run_tool(
        "getscu",  # proposes the uncompressed transfer syntaxes only (its default)
        "-S",
        "-aec",
        archive.ae_title,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={sent.StudyInstanceUID}",
        "-k",
        f"SeriesInstanceUID={sent.SeriesInstanceUID}",
        "-k",
        f"SOPInstanceUID={sent.SOPInstanceUID}",
        "-od",
        str(out),
        *archive.address,
    )
    (received_path,) = list(out.iterdir())
    received = dcmread(received_path)
    assert not received.file_meta.TransferSyntaxUID.is_compressed
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    assert (received.pixel_array == sent.pixel_array).all()  # lossless: the same pixels
