"""Synthetic chest CT volumes with and without a planted lung nodule.

Shared by the training script (``tools/train_onnx_example.py``) and the tests, so the
model is trained and checked on the same kind of data and nothing else: the project's
synthetic CT phantom (:func:`openvna.sample.generator.generate_ct_series`), with thin
"vessels" drawn into the lungs of every volume (so a bright pixel alone does not mean a
nodule) and, when asked, one round soft-tissue nodule spanning 1 to 3 slices.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

from openvna.ai.inputs import SourceFrame, Volume
from openvna.sample.generator import generate_ct_series

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PlantedNodule:
    """Where a nodule was drawn: centre (slice, row, column) and radius in pixels."""

    centre: tuple[int, int, int]
    radius_px: float
    hu: float


def read_ct_volume(files: list[Path]) -> Volume:
    """A :class:`Volume` (HU, slice 0 lowest along the normal) from single-frame CT files.

    A minimal reader for axial series of the synthetic generator; the orchestrator's own
    volume assembly (with its consistency checks) is what production jobs use.
    """
    datasets = [pydicom.dcmread(path) for path in files]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    voxels = np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    ).astype(np.float32)
    first = datasets[0]
    positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    slice_spacing = float(np.median(np.diff(positions))) if len(positions) > 1 else 0.0
    row_spacing, column_spacing = (float(value) for value in first.PixelSpacing)
    headers: list[pydicom.Dataset] = []
    for ds in datasets:
        del ds.PixelData
        headers.append(ds)
    orientation = tuple(float(value) for value in first.ImageOrientationPatient)
    return Volume(
        voxels=voxels,
        spacing=(slice_spacing, row_spacing, column_spacing),
        origin=(
            float(first.ImagePositionPatient[0]),
            float(first.ImagePositionPatient[1]),
            float(first.ImagePositionPatient[2]),
        ),
        orientation=(
            orientation[0],
            orientation[1],
            orientation[2],
            orientation[3],
            orientation[4],
            orientation[5],
        ),
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        modality=str(first.Modality),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sources=[SourceFrame(str(ds.SOPInstanceUID), str(ds.SOPClassUID)) for ds in headers],
        datasets=headers,
    )


def lung_mask(hu: FloatArray) -> npt.NDArray[np.bool_]:
    """Aerated lung: air-like voxels not connected to the air around the body, eroded so
    anything drawn inside stays inside."""
    mask = np.zeros(hu.shape, dtype=bool)
    for index, plane in enumerate(hu):
        air = plane < -600
        labels, _ = ndimage.label(air)
        border = set(
            np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        )
        inside = air & ~np.isin(labels, list(border))
        mask[index] = ndimage.binary_erosion(inside, iterations=2)
    return mask


def draw_vessels(hu: FloatArray, rng: np.random.Generator, count: int = 6) -> None:
    """Thin (1 px) bright lines inside the lungs: the distractors a nodule must beat."""
    lungs = lung_mask(hu)
    for index in range(hu.shape[0]):
        points = np.argwhere(lungs[index])
        if len(points) < 10:
            continue
        for _ in range(int(rng.integers(0, count + 1))):
            start = points[int(rng.integers(len(points)))].astype(float)
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(3, 9)
            value = rng.uniform(-450, -150)
            for step in np.linspace(0, length, int(length * 2) + 1):
                row = round(start[0] + step * np.sin(angle))
                column = round(start[1] + step * np.cos(angle))
                if (
                    0 <= row < hu.shape[1]
                    and 0 <= column < hu.shape[2]
                    and lungs[index, row, column]
                ):
                    hu[index, row, column] = value + rng.normal(0, 12)


def plant_nodule(hu: FloatArray, rng: np.random.Generator) -> PlantedNodule:
    """Draw one round nodule (radius 1.3-2.6 px, -100..+80 HU) centred in a lung; it fades
    over the neighbouring slices like a sphere cut by thick sections."""
    lungs = lung_mask(hu)
    areas = lungs.reshape(lungs.shape[0], -1).sum(axis=1)
    candidates = np.flatnonzero(areas >= max(20, int(areas.max() * 0.4)))
    slice_index = int(rng.choice(candidates))
    radius = float(rng.uniform(1.3, 2.6))
    inner = ndimage.binary_erosion(lungs[slice_index], iterations=int(np.ceil(radius)))
    points = np.argwhere(inner) if inner.any() else np.argwhere(lungs[slice_index])
    row, column = (int(value) for value in points[int(rng.integers(len(points)))])
    value = float(rng.uniform(-100, 80))
    rows, columns = np.ogrid[: hu.shape[1], : hu.shape[2]]
    distance = np.sqrt((rows - row) ** 2 + (columns - column) ** 2)
    for offset, scale in ((0, 1.0), (-1, 0.6), (1, 0.6)):
        index = slice_index + offset
        if not 0 <= index < hu.shape[0] or (offset and rng.random() < 0.5):
            continue
        disc = distance <= radius * scale
        noise = rng.normal(0, 12, size=int(disc.sum()))
        hu[index][disc] = np.maximum(hu[index][disc], value + noise)
    return PlantedNodule((slice_index, row, column), radius, value)


def synthetic_chest(
    seed: int, *, nodule: bool, slices: int = 16, matrix: int = 64
) -> tuple[Volume, PlantedNodule | None]:
    """A synthetic chest CT volume (HU) and the nodule planted in it, if any.

    The phantom comes from the project's DICOM generator (so headers are real DICOM,
    identifying attributes included, all synthetic); vessels and nodule are drawn on its
    Hounsfield units with a generator seeded by ``seed``.
    """
    with tempfile.TemporaryDirectory(prefix="openvna-synthetic-") as folder:
        files = generate_ct_series(
            Path(folder), instances=slices, rows=matrix, columns=matrix, seed=seed
        )
        volume = read_ct_volume(files)
    rng = np.random.default_rng([seed, 0x0D01E])
    draw_vessels(volume.voxels, rng)
    planted = plant_nodule(volume.voxels, rng) if nodule else None
    return volume, planted
