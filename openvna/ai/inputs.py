"""What a model receives: a volume (or a single 2D image) with its geometry.

Voxel arrays are indexed ``[slice, row, column]``. Slice 0 is the first position along
the slice normal (row cosine x column cosine), so index order and patient geometry agree
whatever order the instances arrived in. ``sources[i]`` says which stored instance
(and frame of a multi-frame instance) slice ``i`` came from: result writers use it to
reference the source images and to align segmentation frames with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset


@dataclass(frozen=True)
class SourceFrame:
    """Where one slice of a volume came from."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None
    """1-based frame of a multi-frame instance; None for a single-frame instance."""


@dataclass
class Volume:
    """An ordered, rescaled image volume of one series, with patient geometry.

    For a projection image (CR, DX, MG) ``voxels`` has one slice, ``is_2d`` is true and
    ``spacing[0]`` is 0.
    """

    voxels: npt.NDArray[np.float32]
    """[slice, row, column]; Hounsfield units for CT when rescaled."""
    spacing: tuple[float, float, float]
    """(between slice centres, between rows, between columns) in mm."""
    origin: tuple[float, float, float]
    """Image Position (Patient) of slice 0's first pixel, mm."""
    orientation: tuple[float, float, float, float, float, float]
    """Image Orientation (Patient): row direction cosines then column direction cosines."""
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    frame_of_reference_uid: str
    sources: list[SourceFrame]
    datasets: list[Dataset]
    """Headers (no Pixel Data) of the source instances, in slice order for single-frame
    series; for a multi-frame source, its one header."""
    is_2d: bool = False
    rescaled: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        slices, rows, columns = self.voxels.shape
        return int(slices), int(rows), int(columns)

    @property
    def normal(self) -> tuple[float, float, float]:
        row = np.asarray(self.orientation[:3])
        column = np.asarray(self.orientation[3:])
        n = np.cross(row, column)
        return float(n[0]), float(n[1]), float(n[2])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (0 for a 2D image)."""
        return self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0

    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix from (column, row, slice) indices to patient coordinates (mm)."""
        row = np.asarray(self.orientation[:3], dtype=np.float64)
        column = np.asarray(self.orientation[3:], dtype=np.float64)
        normal = np.cross(row, column)
        matrix = np.eye(4)
        matrix[:3, 0] = row * self.spacing[2]
        matrix[:3, 1] = column * self.spacing[1]
        matrix[:3, 2] = normal * self.spacing[0]
        matrix[:3, 3] = self.origin
        return matrix


@dataclass
class ModelInput:
    """Everything a model function gets: the prepared volume, the untouched one (for
    measurements in native geometry) and the manifest's runtime parameters."""

    volume: Volume
    parameters: Mapping[str, Any] = field(default_factory=dict)
    native: Volume | None = None
    """The volume before resampling/windowing/resizing (None when none was applied)."""
