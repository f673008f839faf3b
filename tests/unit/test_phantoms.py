"""Synthetic CT phantoms: their ground truth is what the arrays and DICOM files hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from openvna.sample.phantoms import (
    ChestVolume,
    HeadVolume,
    chest_phantom,
    head_phantom,
    write_chest_phantom,
    write_head_phantom,
)


def small_chest(**arguments: Any) -> ChestVolume:
    """A 96x128x128 chest (3 mm slices): fast, and lungs of adult size."""
    return chest_phantom(**{"slices": 96, "matrix": 128, "slice_spacing_mm": 3.0, **arguments})


def small_head(**arguments: Any) -> HeadVolume:
    """A 64x128x128 head (2.5 mm slices)."""
    return head_phantom(**{"slices": 64, "matrix": 128, "slice_spacing_mm": 2.5, **arguments})


def test_chest_phantom_geometry_and_truth() -> None:
    chest = small_chest(lung_volume_ml=4500.0, emphysema_fraction=0.1, seed=3)
    assert chest.hu.shape == (96, 128, 128) and chest.hu.dtype == np.float32
    assert chest.spacing == (3.0, 360.0 / 128, 360.0 / 128)
    voxel_ml = 3.0 * (360.0 / 128) ** 2 / 1000.0
    count = int(chest.lung_mask.sum())
    assert chest.expected_lung_volume_ml == pytest.approx(count * voxel_ml)
    # the target is met to within a few percent; the truth is the voxel count
    assert chest.expected_lung_volume_ml == pytest.approx(4500.0, rel=0.02)
    below = np.count_nonzero(chest.hu[chest.lung_mask] < -950.0)
    assert chest.expected_laa950_percent == pytest.approx(100.0 * below / count)
    # planted at -980 HU with 15 HU noise: a few percent of emphysema voxels rise above
    assert 9.0 <= chest.expected_laa950_percent <= 10.1
    # lungs lie inside the body: never on the in-plane border nor the first/last slice
    assert not chest.lung_mask[[0, -1]].any()
    assert not chest.lung_mask[:, [0, -1], :].any() and not chest.lung_mask[:, :, [0, -1]].any()
    # outside air, body soft tissue, bone
    assert chest.hu[50, 2, 2] < -900
    assert 0 < np.median(chest.hu[50, 64, 60:68]) < 80  # mediastinum
    assert chest.hu.max() > 600  # ribs and spine


def test_chest_phantom_is_reproducible_and_seeded() -> None:
    first = small_chest(seed=1)
    again = small_chest(seed=1)
    other = small_chest(seed=2)
    assert np.array_equal(first.hu, again.hu)
    assert not np.array_equal(first.hu, other.hu)


def test_chest_phantom_without_emphysema_has_no_low_attenuation() -> None:
    chest = small_chest(emphysema_fraction=0.0, seed=0)
    assert chest.expected_laa950_percent < 0.05
    assert np.mean(chest.hu[chest.lung_mask]) == pytest.approx(-850.0, abs=25.0)


@pytest.mark.parametrize(
    "arguments",
    [
        {"lung_volume_ml": 9000.0},  # does not fit in the body
        {"slices": 40},  # scan far too short
        {"emphysema_fraction": 0.9},
        {"fov_mm": 250.0},
    ],
)
def test_chest_phantom_rejects_impossible_requests(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        small_chest(**arguments)


def test_head_phantom_plants_a_cluster_of_the_requested_volume() -> None:
    head = small_head(hemorrhage=True, cluster_volume_ml=6.0, seed=4)
    voxel_ml = 2.5 * (240.0 / 128) ** 2 / 1000.0
    assert head.expected_hemorrhage_volume_ml == pytest.approx(
        head.hemorrhage_mask.sum() * voxel_ml
    )
    assert head.expected_hemorrhage_volume_ml == pytest.approx(6.0, rel=0.25)
    # the cluster's interior is blood-dense, the brain around it is not
    inner = head.hu[head.hemorrhage_mask]
    assert 60.0 <= float(np.median(inner)) <= 75.0
    assert head.hu.max() > 900  # skull
    normal = small_head(hemorrhage=False, seed=4)
    assert not normal.hemorrhage_mask.any()
    assert normal.expected_hemorrhage_volume_ml == 0.0
    brain = normal.hu[32, 30:38, 58:70]  # frontal lobe, in front of the ventricles
    assert 20.0 <= float(np.median(brain)) <= 40.0


def test_head_phantom_rejects_a_cluster_too_big_for_the_brain() -> None:
    with pytest.raises(ValueError):
        small_head(hemorrhage=True, cluster_volume_ml=900.0)


def _read_series(paths: tuple[Path, ...]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def test_write_chest_phantom_writes_a_valid_ct_series(tmp_path: Path) -> None:
    arguments: dict[str, Any] = {"slices": 48, "matrix": 64, "slice_spacing_mm": 6.0, "seed": 5}
    phantom = write_chest_phantom(tmp_path, study_uid="1.2.826.0.1.3680043.2.1125.1", **arguments)
    datasets = _read_series(phantom.paths)
    assert len(datasets) == 48 and phantom.study_uid == "1.2.826.0.1.3680043.2.1125.1"
    assert {ds.StudyInstanceUID for ds in datasets} == {phantom.study_uid}
    assert {ds.SeriesInstanceUID for ds in datasets} == {phantom.series_uid}
    assert len({ds.SOPInstanceUID for ds in datasets}) == 48
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "CT" and ds.BodyPartExamined == "CHEST"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([360 / 64] * 2)
    # instance 1 is the most superior slice, as scanners number them
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 49))
    assert z == sorted(z, reverse=True) and z[0] - z[1] == pytest.approx(6.0)
    # sorted by position, the rescaled pixels are the phantom's voxels
    by_position = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in by_position]
    )
    expected = chest_phantom(**arguments)
    assert np.array_equal(hu, expected.hu)
    assert np.array_equal(phantom.lung_mask, expected.lung_mask)
    assert phantom.expected_lung_volume_ml == expected.expected_lung_volume_ml


def test_write_head_phantom_writes_a_valid_ct_series(tmp_path: Path) -> None:
    phantom = write_head_phantom(
        tmp_path, hemorrhage=True, cluster_volume_ml=4.0, slices=20, matrix=64,
        slice_spacing_mm=8.0, seed=1, patient_id="PH-HEAD-1",
    )  # fmt: skip
    datasets = _read_series(phantom.paths)
    assert len(datasets) == 20 and phantom.hemorrhage_mask.shape == (20, 64, 64)
    assert phantom.expected_hemorrhage_volume_ml > 2.0
    assert {ds.PatientID for ds in datasets} == {"PH-HEAD-1"}
    assert {ds.BodyPartExamined for ds in datasets} == {"HEAD"}
    assert datasets[0].StudyInstanceUID == phantom.study_uid
    by_position = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array.astype(np.float32) - 1024.0 for ds in by_position])
    assert float(np.median(hu[phantom.hemorrhage_mask])) > 55.0
