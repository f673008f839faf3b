"""Tests for the synthetic DICOM sample generator (openvna.sample)."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from openvna.sample import GeneratedStudy, generate_ct_series, generate_samples
from openvna.sample.generator import UID_ROOT

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

SOP_CLASS_BY_MODALITY = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "US": UltrasoundMultiFrameImageStorage,
}

COMMON_ATTRIBUTES = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "InstitutionName",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesDate",
    "SeriesTime",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "AcquisitionDate",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
)
CROSS_SECTIONAL_ATTRIBUTES = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "FrameOfReferenceUID",
    "WindowCenter",
    "WindowWidth",
)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="module")
def studies(sample_dir: Path) -> list[GeneratedStudy]:
    return generate_samples(sample_dir, small=True)


@pytest.fixture(scope="module")
def datasets(studies: list[GeneratedStudy]) -> dict[Path, Dataset]:
    return {path: pydicom.dcmread(path) for study in studies for path in study.paths}


def _all_paths(studies: list[GeneratedStudy]) -> list[Path]:
    return [path for study in studies for path in study.paths]


def _study(studies: list[GeneratedStudy], modality: str) -> GeneratedStudy:
    return next(s for s in studies if s.modality == modality)


def _hu(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# ---------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------


def test_every_file_is_valid_part10_and_reads_back(
    studies: list[GeneratedStudy], datasets: dict[Path, Dataset]
) -> None:
    assert len(datasets) == len(_all_paths(studies)) > 0
    for study in studies:
        for path in study.paths:
            raw = path.read_bytes()
            assert raw[:128] == b"\x00" * 128, path
            assert raw[128:132] == b"DICM", path
            ds = datasets[path]
            meta = ds.file_meta
            assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
            assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
            assert meta.ImplementationClassUID.startswith(UID_ROOT)
            assert ds.PatientID == study.patient_id
            assert ds.StudyInstanceUID == study.study_instance_uid
            assert ds.Modality == study.modality
            assert ds.StudyDate == study.study_date
            # Pixel data decodes with the declared geometry.
            pixels = ds.pixel_array
            assert pixels.shape[-2:] == (ds.Rows, ds.Columns) or pixels.shape[-3:-1] == (
                ds.Rows,
                ds.Columns,
            )


def test_sop_class_per_modality(datasets: dict[Path, Dataset]) -> None:
    for path, ds in datasets.items():
        assert ds.SOPClassUID == SOP_CLASS_BY_MODALITY[ds.Modality], path


def test_all_modalities_are_covered_for_every_patient(studies: list[GeneratedStudy]) -> None:
    by_patient: dict[str, set[str]] = defaultdict(set)
    for study in studies:
        by_patient[study.patient_id].add(study.modality)
    assert len(by_patient) == 4
    for modalities in by_patient.values():
        assert {"CT", "MR", "US"} <= modalities
        assert modalities & {"CR", "DX"}
    all_modalities = set().union(*by_patient.values())
    assert {"CR", "DX"} <= all_modalities


def test_two_transfer_syntaxes(datasets: dict[Path, Dataset]) -> None:
    seen = set()
    for ds in datasets.values():
        syntax = ds.file_meta.TransferSyntaxUID
        seen.add(syntax)
        if ds.Modality in ("CR", "DX"):
            assert syntax == ImplicitVRLittleEndian
        else:
            assert syntax == ExplicitVRLittleEndian
    assert seen == {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def test_required_headers_present(datasets: dict[Path, Dataset]) -> None:
    for path, ds in datasets.items():
        for keyword in COMMON_ATTRIBUTES:
            assert keyword in ds, f"{path}: {keyword} missing"
            assert ds[keyword].value not in (None, ""), f"{path}: {keyword} empty"
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        assert ds.PatientSex in ("F", "M", "O")
        date.fromisoformat(
            f"{ds.PatientBirthDate[:4]}-{ds.PatientBirthDate[4:6]}-{ds.PatientBirthDate[6:]}"
        )
        if ds.Modality in ("CT", "MR"):
            for keyword in CROSS_SECTIONAL_ATTRIBUTES:
                assert keyword in ds, f"{path}: {keyword} missing"
        if ds.Modality == "CT":
            assert float(ds.RescaleSlope) == 1.0
            assert float(ds.RescaleIntercept) == -1024.0
            assert ds.BitsAllocated == 16
            assert ds.PixelRepresentation == 1
        if ds.Modality in ("MR", "CR", "DX"):
            assert ds.BitsStored == 12
            assert ds.HighBit == 11
            assert ds.PixelRepresentation == 0
            assert int(ds.pixel_array.max()) <= 4095
        if ds.Modality in ("CR", "DX"):
            assert "WindowCenter" in ds and "WindowWidth" in ds
            assert ds.ViewPosition in ("PA", "LL")
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"


def test_uids_valid_unique_and_under_root(datasets: dict[Path, Dataset]) -> None:
    sop_uids = set()
    for ds in datasets.values():
        uids = [
            ds.SOPInstanceUID,
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.file_meta.MediaStorageSOPInstanceUID,
            ds.file_meta.ImplementationClassUID,
        ]
        if "FrameOfReferenceUID" in ds:
            uids.append(ds.FrameOfReferenceUID)
        for uid in uids:
            assert len(uid) <= 64, uid
            assert UID_RE.match(uid), uid
            assert uid.startswith(UID_ROOT), uid
        sop_uids.add(ds.SOPInstanceUID)
    assert len(sop_uids) == len(datasets)


def test_file_layout_uses_indices(
    sample_dir: Path, studies: list[GeneratedStudy], datasets: dict[Path, Dataset]
) -> None:
    series_dirs: dict[Path, set[str]] = defaultdict(set)
    patient_dirs: dict[str, set[str]] = defaultdict(set)
    for study in studies:
        study_dirs = {path.parent.parent for path in study.paths}
        assert len(study_dirs) == 1
        for path in study.paths:
            parts = path.relative_to(sample_dir).parts
            assert len(parts) == 4
            assert all(part.isdigit() for part in parts[:3])
            assert re.fullmatch(r"\d{4}\.dcm", parts[3])
            patient_dirs[study.patient_id].add(parts[0])
            series_dirs[path.parent].add(datasets[path].SeriesInstanceUID)
    # One directory per patient and one series per series directory.
    assert all(len(dirs) == 1 for dirs in patient_dirs.values())
    assert len({d for dirs in patient_dirs.values() for d in dirs}) == len(patient_dirs)
    assert all(len(uids) == 1 for uids in series_dirs.values())


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = generate_samples(tmp_path / "a", seed=7, patients=2, small=True)
    second = generate_samples(tmp_path / "b", seed=7, patients=2, small=True)
    assert first and len(first) == len(second)
    for s1, s2 in zip(first, second, strict=True):
        assert s1.study_instance_uid == s2.study_instance_uid
        assert s1.study_date == s2.study_date
        assert len(s1.paths) == len(s2.paths)
        for p1, p2 in zip(s1.paths, s2.paths, strict=True):
            assert p1.relative_to(tmp_path / "a") == p2.relative_to(tmp_path / "b")
            assert p1.read_bytes() == p2.read_bytes(), p1


def test_different_seed_gives_different_uids(tmp_path: Path) -> None:
    first = generate_samples(tmp_path / "a", seed=1, patients=2, small=True)
    second = generate_samples(tmp_path / "b", seed=2, patients=2, small=True)

    def uids(studies: list[GeneratedStudy]) -> set[str]:
        found = set()
        for study in studies:
            found.add(study.study_instance_uid)
            for path in study.paths:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                found.update((ds.SOPInstanceUID, ds.SeriesInstanceUID))
        return found

    assert uids(first).isdisjoint(uids(second))


# ---------------------------------------------------------------------------
# Modality content
# ---------------------------------------------------------------------------


def test_us_is_rgb_multiframe_cine(studies: list[GeneratedStudy]) -> None:
    study = _study(studies, "US")
    assert len(study.paths) == 1
    ds = pydicom.dcmread(study.paths[0])
    assert ds.SOPClassUID == UltrasoundMultiFrameImageStorage
    assert int(ds.NumberOfFrames) == 10
    assert ds.SamplesPerPixel == 3
    assert ds.PhotometricInterpretation == "RGB"
    assert ds.PlanarConfiguration == 0
    assert ds.BitsAllocated == 8
    assert float(ds.FrameTime) > 0
    assert int(ds.CineRate) > 0
    assert ds.FrameIncrementPointer == 0x00181063
    frames = ds.pixel_array
    assert frames.shape == (10, 96, 128, 3)
    assert frames.dtype == np.uint8
    assert len(ds.PixelData) == 10 * 96 * 128 * 3
    # Outside the sector scan is black; inside there is speckle.
    assert not frames[:, -1, 0, :].any()
    inside = frames[:, 30:60, 44:84].astype(np.float64)
    assert inside.mean() > 20
    assert inside.std() > 5
    # The content moves between frames.
    assert not np.array_equal(frames[0], frames[5])


def test_ct_series_geometry(studies: list[GeneratedStudy]) -> None:
    study = _study(studies, "CT")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.paths]
    assert len(headers) == 8
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.FrameOfReferenceUID for h in headers}) == 1
    assert [h.InstanceNumber for h in headers] == list(range(1, 9))
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    steps = np.diff(z)
    assert np.allclose(steps, -float(headers[0].SliceThickness))
    assert [float(v) for v in headers[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert headers[0].Rows == headers[0].Columns == 128


def test_ct_hounsfield_ranges(studies: list[GeneratedStudy]) -> None:
    study = _study(studies, "CT")
    hu = _hu(pydicom.dcmread(study.paths[len(study.paths) // 2]))
    total = hu.size
    air = np.count_nonzero(hu < -950)
    lung = np.count_nonzero((hu > -920) & (hu < -750))
    soft = np.count_nonzero((hu > -20) & (hu < 100))
    fat = np.count_nonzero((hu > -150) & (hu < -50))
    bone = np.count_nonzero(hu > 400)
    assert air > 0.1 * total
    assert lung > 0.05 * total
    assert soft > 0.05 * total
    assert fat > 0.01 * total
    assert bone > 0.002 * total
    assert hu.min() >= -1024
    assert hu.max() < 3072


def test_mr_has_two_series_with_different_contrast(studies: list[GeneratedStudy]) -> None:
    study = _study(studies, "MR")
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for path in study.paths:
        ds = pydicom.dcmread(path)
        by_series[ds.SeriesInstanceUID].append(ds)
    assert len(by_series) == 2
    assert all(len(series) == 6 for series in by_series.values())
    frames = {ds.FrameOfReferenceUID for series in by_series.values() for ds in series}
    assert len(frames) == 1
    first, second = (series[3].pixel_array for series in by_series.values())
    assert first.shape == second.shape == (128, 128)
    assert not np.array_equal(first, second)
    assert first.max() > 500 and second.max() > 500


def test_radiograph_content(studies: list[GeneratedStudy]) -> None:
    xr = [s for s in studies if s.modality in ("CR", "DX")]
    assert all(1 <= len(s.paths) <= 2 for s in xr)
    ds = pydicom.dcmread(xr[0].paths[0])
    pixels = ds.pixel_array
    assert pixels.shape == (256, 256)
    assert pixels.dtype == np.uint16
    # Direct exposure (dark), lungs and dense mediastinum/bone (bright).
    assert np.percentile(pixels, 5) < 500
    assert np.percentile(pixels, 99) > 2000


# ---------------------------------------------------------------------------
# Patients, timeline, character set, size
# ---------------------------------------------------------------------------


def test_patient_timeline_and_demographics(
    studies: list[GeneratedStudy], datasets: dict[Path, Dataset]
) -> None:
    years: dict[str, set[int]] = defaultdict(set)
    demographics: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for study in studies:
        years[study.patient_id].add(int(study.study_date[:4]))
        for path in study.paths:
            ds = datasets[path]
            demographics[study.patient_id].add(
                (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex)
            )
    assert len(years) >= 4
    for patient_years in years.values():
        assert len(patient_years) >= 3
        assert all(2019 <= year <= 2026 for year in patient_years)
    # Patient attributes are consistent within a patient ...
    assert all(len(values) == 1 for values in demographics.values())
    # ... and vary between patients.
    flat = [next(iter(values)) for values in demographics.values()]
    assert len({name for name, _, _ in flat}) == len(flat)
    assert {sex for _, _, sex in flat} >= {"F", "M"}
    assert len({birth for _, birth, _ in flat}) > 1
    # Studies of one patient are listed in chronological order.
    for patient_id in years:
        dates = [s.study_date for s in studies if s.patient_id == patient_id]
        assert dates == sorted(dates)


def test_accented_name_is_latin1_encoded(datasets: dict[Path, Dataset]) -> None:
    accented = {
        path: str(ds.PatientName)
        for path, ds in datasets.items()
        if any(ord(ch) > 127 for ch in str(ds.PatientName))
    }
    assert accented
    for path, name in accented.items():
        name.encode("latin-1")  # representable in ISO_IR 100
        raw = path.read_bytes()
        assert name.encode("latin-1") in raw
        assert name.encode("utf-8") not in raw


def test_small_set_total_size(studies: list[GeneratedStudy]) -> None:
    total = sum(path.stat().st_size for path in _all_paths(studies))
    assert 1_000_000 < total < 10_000_000


def test_full_size_images(tmp_path: Path) -> None:
    studies = generate_samples(tmp_path, seed=3, patients=1, small=False)
    expected = {
        "CT": ((512, 512), 40),
        "MR": ((256, 256), 40),
        "US": ((30, 240, 320, 3), 1),
    }
    for study in studies:
        if study.modality in ("CR", "DX"):
            assert 1 <= len(study.paths) <= 2
            ds = pydicom.dcmread(study.paths[0])
            assert ds.pixel_array.shape == (1024, 1024)
            assert ds.BitsStored == 12
            continue
        shape, count = expected[study.modality]
        assert len(study.paths) == count
        ds = pydicom.dcmread(study.paths[0])
        assert ds.pixel_array.shape == shape
        if study.modality == "CT":
            assert ds.pixel_array.dtype == np.int16


def test_generate_samples_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_samples(tmp_path, patients=0)
    with pytest.raises(ValueError):
        generate_samples(tmp_path, seed=-1)


# ---------------------------------------------------------------------------
# Benchmark CT series
# ---------------------------------------------------------------------------


def test_generate_ct_series(tmp_path: Path) -> None:
    study_uid = f"{UID_ROOT}99.1"
    paths = generate_ct_series(
        tmp_path / "ct",
        instances=20,
        rows=64,
        columns=96,
        patient_id="BENCH042",
        patient_name="BENCH^MÜLLER",
        study_instance_uid=study_uid,
    )
    assert [p.name for p in paths] == [f"{i:04d}.dcm" for i in range(20)]
    assert all(p.parent == tmp_path / "ct" for p in paths)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.StudyInstanceUID for ds in datasets} == {study_uid}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 20
    for i, ds in enumerate(datasets):
        assert ds.SOPClassUID == CTImageStorage
        assert ds.PatientID == "BENCH042"
        assert str(ds.PatientName) == "BENCH^MÜLLER"
        assert ds.InstanceNumber == i + 1
        assert ds.pixel_array.shape == (64, 96)
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert z == sorted(z, reverse=True)
    # Deterministic, and a study UID is derived when none is given.
    again = generate_ct_series(
        tmp_path / "again",
        instances=20,
        rows=64,
        columns=96,
        patient_id="BENCH042",
        patient_name="BENCH^MÜLLER",
        study_instance_uid=study_uid,
    )
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    derived = generate_ct_series(tmp_path / "derived", instances=1, rows=32, columns=32)
    uid = pydicom.dcmread(derived[0]).StudyInstanceUID
    assert UID_RE.match(uid) and len(uid) <= 64 and uid != study_uid


def test_generate_ct_series_default_slice_size(tmp_path: Path) -> None:
    paths = generate_ct_series(tmp_path, instances=2)
    for path in paths:
        # 512 x 512 x 2 bytes of pixels plus a small header: ~0.5 MB.
        assert 512 * 512 * 2 < path.stat().st_size < 512 * 512 * 2 + 8192
    ds = pydicom.dcmread(paths[0])
    hu = _hu(ds)
    assert hu.shape == (512, 512)
    assert (hu < -950).any() and (hu > 400).any()


def test_generate_ct_series_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_ct_series(tmp_path, instances=0)
    with pytest.raises(ValueError):
        generate_ct_series(tmp_path, instances=1, rows=4)
