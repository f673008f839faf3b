"""Pre-processing: the volume a model's manifest asks for, made from the assembled one.

Steps, in this order, each only when the manifest's ``[preprocessing]`` names it:

1. ``resample_mm``: resample to the requested (slice, row, column) spacing;
2. ``resize``: resize every slice to (rows, columns);
3. ``window``: clip to the window and scale to 0..1 (the linear VOI LUT function of
   PS3.3 C.11.2.1.2.1, scaled to 0..1 instead of the output range).

Rescale Slope/Intercept are applied (or not) at assembly (``rescale`` of
:func:`openvna.ai.volume.assemble_series`), so a volume rescaled differently from what
the manifest asks is a programming error here.

Interpolation is (tri)linear. Output voxel ``o`` samples the input at ``o * step`` along
each axis, so voxel 0 stays where it was: the origin and orientation are kept and the
affine of the result is exact. Downsampling does not low-pass filter first (a model that
needs anti-aliasing resamples itself from ``ModelInput.native``). Whenever geometry or
values change, the untouched volume goes along as ``ModelInput.native``: results
(segmentation masks, measurements) are given in its geometry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

from openvna.ai.inputs import ModelInput, SourceFrame, Volume
from openvna.ai.manifest import Preprocessing, Window


def prepare(
    volume: Volume,
    preprocessing: Preprocessing,
    parameters: Mapping[str, Any] | None = None,
) -> ModelInput:
    """The model's input: ``volume`` prepared as ``preprocessing`` says.

    Raises
    ------
    ValueError
        ``volume`` was assembled with ``rescale`` other than ``preprocessing.rescale``,
        or ``resample_mm``/``resize`` hold a value that is not positive.
    """
    if volume.rescaled != preprocessing.rescale:
        raise ValueError(
            f"the volume was assembled with rescale={volume.rescaled}, the manifest asks "
            f"for rescale={preprocessing.rescale}"
        )
    prepared = volume
    if preprocessing.resample_mm is not None:
        prepared = resample(prepared, preprocessing.resample_mm)
    if preprocessing.resize is not None:
        prepared = resize(prepared, preprocessing.resize)
    if preprocessing.window is not None:
        prepared = apply_window(prepared, preprocessing.window)
    return ModelInput(
        volume=prepared,
        parameters=dict(parameters or {}),
        native=volume if prepared is not volume else None,
    )


def resample(volume: Volume, spacing_mm: tuple[float, float, float]) -> Volume:
    """``volume`` on a grid of ``spacing_mm`` (slice, row, column); a 2D image keeps its
    one slice whatever the slice spacing asked. The extent never grows: the last voxel
    lies within the original's last voxel along each axis."""
    if any(not (math.isfinite(value) and value > 0) for value in spacing_mm):
        raise ValueError(f"resample_mm must be positive, got {spacing_mm}")
    steps: list[float] = []
    shape: list[int] = []
    new_spacing: list[float] = []
    for axis, (size, old, new) in enumerate(
        zip(volume.shape, volume.spacing, spacing_mm, strict=True)
    ):
        if size == 1 or old <= 0 or (axis == 0 and volume.is_2d):
            steps.append(1.0)
            shape.append(size)
            new_spacing.append(old)
            continue
        step = new / old
        steps.append(step)
        # 1e-6: a spacing that divides the extent exactly must not lose its last voxel.
        shape.append(math.floor((size - 1) / step + 1e-6) + 1)
        new_spacing.append(new)
    if shape == list(volume.shape) and steps == [1.0, 1.0, 1.0]:
        return volume
    voxels = _sample(volume.voxels, steps, shape)
    return _with_grid(volume, voxels, steps, (new_spacing[0], new_spacing[1], new_spacing[2]))


def resize(volume: Volume, size: tuple[int, int]) -> Volume:
    """Every slice resized to ``size`` (rows, columns); the first and last pixel centres
    stay where they were, so the pixel spacing becomes ``old * (n - 1) / (new - 1)``."""
    rows, columns = size
    if rows < 1 or columns < 1:
        raise ValueError(f"resize must be at least 1x1, got {size}")
    slices, old_rows, old_columns = volume.shape
    if (rows, columns) == (old_rows, old_columns):
        return volume
    row_step = (old_rows - 1) / (rows - 1) if rows > 1 else 1.0
    column_step = (old_columns - 1) / (columns - 1) if columns > 1 else 1.0
    voxels = _sample(volume.voxels, [1.0, row_step, column_step], [slices, rows, columns])
    spacing = (volume.spacing[0], volume.spacing[1] * row_step, volume.spacing[2] * column_step)
    return _with_grid(volume, voxels, [1.0, row_step, column_step], spacing)


def apply_window(volume: Volume, window: Window) -> Volume:
    """Values mapped through the linear window (PS3.3 C.11.2.1.2.1) onto 0..1:
    ``((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1]; a width of 1 or less is a
    threshold at the centre."""
    center, width = window.center, window.width
    voxels = volume.voxels.astype(np.float32, copy=True)
    if width <= 1.0:
        np.greater_equal(voxels, np.float32(center - 0.5), out=voxels, casting="unsafe")
        return replace(volume, voxels=voxels)
    voxels -= np.float32(center - 0.5)
    voxels /= np.float32(width - 1.0)
    voxels += np.float32(0.5)
    np.clip(voxels, 0.0, 1.0, out=voxels)
    return replace(volume, voxels=voxels)


def _sample(
    voxels: npt.NDArray[np.float32], steps: list[float], shape: list[int]
) -> npt.NDArray[np.float32]:
    """Linear interpolation of ``voxels`` at ``index * step`` per axis. A diagonal
    affine transform computes the coordinates on the fly: no coordinate arrays (which
    for a 512x512x300 volume would need gigabytes)."""
    output = np.empty(shape, dtype=np.float32)
    ndimage.affine_transform(
        voxels,
        np.asarray(steps, dtype=np.float64),
        offset=0.0,
        output_shape=tuple(shape),
        output=output,
        order=1,
        mode="nearest",
        prefilter=False,
    )
    return output


def _with_grid(
    volume: Volume,
    voxels: npt.NDArray[np.float32],
    steps: list[float],
    spacing: tuple[float, float, float],
) -> Volume:
    """The volume on a new grid: same origin and orientation; each new slice names the
    nearest original slice as its source (results are written in native geometry)."""
    nearest = [
        min(round(index * steps[0]), len(volume.sources) - 1) for index in range(voxels.shape[0])
    ]
    sources: list[SourceFrame] = [volume.sources[i] for i in nearest] if volume.sources else []
    return replace(
        volume,
        voxels=voxels,
        spacing=spacing,
        sources=sources,
        warnings=list(volume.warnings),
    )
