"""Pre-processing: resampling, resizing and windowing keep the geometry exact and the
values right (linear interpolation reproduces a linear ramp exactly)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from openvna.ai.inputs import SourceFrame, Volume
from openvna.ai.manifest import Preprocessing, Window
from openvna.ai.preprocess import apply_window, prepare, resample, resize

OBLIQUE = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: the affine is not diagonal


def ramp_volume(
    shape: tuple[int, int, int] = (11, 21, 31),
    spacing: tuple[float, float, float] = (2.0, 0.5, 0.75),
    *,
    is_2d: bool = False,
) -> Volume:
    """Voxel value = a linear function of its patient position, so resampled values
    are known exactly at every new voxel."""
    volume = Volume(
        voxels=np.zeros(shape, dtype=np.float32),
        spacing=spacing,
        origin=(5.0, -7.0, 12.0),
        orientation=OBLIQUE,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        modality="CT",
        frame_of_reference_uid="1.2.3.5",
        sources=[SourceFrame(f"1.2.3.4.{i}", "1.2.840.10008.5.1.4.1.1.2") for i in range(shape[0])],
        datasets=[],
        is_2d=is_2d,
    )
    volume.voxels[...] = _ramp_at(volume, np.indices(shape).astype(np.float64))
    return volume


def _ramp_at(volume: Volume, indices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """3x + 2y - z + 10 at the patient position of (slice, row, column) ``indices``."""
    slices, rows, columns = indices
    affine = volume.affine()
    points = [
        affine[axis, 0] * columns
        + affine[axis, 1] * rows
        + affine[axis, 2] * slices
        + affine[axis, 3]
        for axis in range(3)
    ]
    value: npt.NDArray[np.float64] = 3 * points[0] + 2 * points[1] - points[2] + 10
    return value


def test_resampling_keeps_origin_and_gives_exact_linear_values() -> None:
    volume = ramp_volume()
    model_input = prepare(volume, Preprocessing(resample_mm=(1.0, 1.0, 1.0)))
    prepared = model_input.volume
    # extents 20, 10, 22.5 mm: 21, 11 and 23 voxels of 1 mm
    assert prepared.shape == (21, 11, 23)
    assert prepared.spacing == (1.0, 1.0, 1.0)
    assert prepared.origin == volume.origin and prepared.orientation == volume.orientation
    expected = _ramp_at(prepared, np.indices(prepared.shape).astype(np.float64))
    np.testing.assert_allclose(prepared.voxels, expected, atol=1e-3)
    assert model_input.native is volume
    assert len(prepared.sources) == 21
    assert prepared.sources[4] == volume.sources[2]  # 4 mm: native slice 2


def test_resampling_a_2d_image_keeps_its_one_slice() -> None:
    volume = ramp_volume((1, 21, 31), (0.0, 0.5, 0.75), is_2d=True)
    prepared = resample(volume, (3.0, 0.25, 0.25))
    assert prepared.shape == (1, 41, 91)
    assert prepared.spacing == (0.0, 0.25, 0.25)
    expected = _ramp_at(prepared, np.indices(prepared.shape).astype(np.float64))
    np.testing.assert_allclose(prepared.voxels, expected, atol=1e-3)


def test_resize_keeps_the_corner_pixels_and_scales_the_spacing() -> None:
    volume = ramp_volume()
    prepared = resize(volume, (41, 16))
    assert prepared.shape == (11, 41, 16)
    assert prepared.spacing == pytest.approx((2.0, 0.25, 1.5))
    np.testing.assert_allclose(prepared.voxels[:, 0, 0], volume.voxels[:, 0, 0], atol=1e-4)
    np.testing.assert_allclose(prepared.voxels[:, -1, -1], volume.voxels[:, -1, -1], atol=1e-4)
    expected = _ramp_at(prepared, np.indices(prepared.shape).astype(np.float64))
    np.testing.assert_allclose(prepared.voxels, expected, atol=1e-3)


def test_window_follows_the_dicom_linear_function_scaled_to_0_1() -> None:
    volume = ramp_volume((1, 1, 7), (0.0, 1.0, 1.0), is_2d=True)
    volume.voxels[0, 0] = [-2000.0, -160.5, -160.0, 40.0, 239.5, 240.0, 3000.0]
    prepared = apply_window(volume, Window(center=40, width=401))
    # (x - 39.5) / 400 + 0.5, clipped (PS3.3 C.11.2.1.2.1)
    expected = np.clip((volume.voxels[0, 0] - 39.5) / 400 + 0.5, 0, 1)
    np.testing.assert_allclose(prepared.voxels[0, 0], expected, atol=1e-6)
    assert prepared.voxels[0, 0, 0] == 0.0 and prepared.voxels[0, 0, -1] == 1.0
    assert volume.voxels[0, 0, 0] == -2000.0, "the native volume is untouched"


def test_all_steps_in_order_with_native_kept() -> None:
    volume = ramp_volume()
    steps = Preprocessing(
        resample_mm=(4.0, 1.0, 1.0), resize=(8, 8), window=Window(center=0, width=100)
    )
    model_input = prepare(volume, steps, {"threshold": 0.5})
    assert model_input.volume.shape == (6, 8, 8)
    assert model_input.volume.voxels.min() >= 0.0
    assert model_input.volume.voxels.max() <= 1.0
    assert model_input.native is volume
    assert model_input.parameters == {"threshold": 0.5}


def test_nothing_to_do_hands_the_volume_through_without_native() -> None:
    volume = ramp_volume()
    model_input = prepare(volume, Preprocessing())
    assert model_input.volume is volume and model_input.native is None
    same_grid = prepare(volume, Preprocessing(resample_mm=volume.spacing, resize=(21, 31)))
    assert same_grid.volume is volume and same_grid.native is None


def test_a_volume_rescaled_otherwise_than_the_manifest_asks_is_refused() -> None:
    volume = ramp_volume()
    with pytest.raises(ValueError, match="rescale=True"):
        prepare(volume, Preprocessing(rescale=False))
