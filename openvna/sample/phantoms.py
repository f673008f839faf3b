"""Synthetic CT studies with known ground truth, for validating the reference AI models.

Each phantom is drawn as a label map in millimetres (so its anatomy does not depend on
the matrix size), turned into Hounsfield units with Gaussian quantum noise, and returned
with the ground truth the model should find: the lung mask of a chest, the planted
hyperdense cluster of a head. Expected values (lung volume, LAA-950, cluster volume) are
counted on the very voxels generated, so they are exact, not the nominal targets.

Arrays follow :class:`openvna.ai.inputs.Volume`: ``[slice, row, column]``, slice 0 the
most inferior (the slice normal of an axial ``1\\0\\0\\0\\1\\0`` orientation points to the
head), rows anterior to posterior, columns patient right to left (DICOM LPS).
``write_*`` functions store the same volume as a CT Image Storage series (Explicit VR
Little Endian, 12-bit unsigned pixels, Rescale Intercept -1024), instance 1 at the head
as scanners number them, so a reader must sort by Image Position (Patient).

Limits: ellipsoidal anatomy without lobes, fissures, skull base or beam hardening; white
noise rather than a CT noise power spectrum. Good for checking that an algorithm measures
what it claims on data whose answer is known, not for estimating clinical accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, time, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

from openvna.sample.generator import (
    _base_dataset,
    _ds,
    _instance_path,
    _Patient,
    _set_pixels,
    _study_start,
    _StudyPlan,
    _uid,
    _write,
)

__all__ = [
    "ChestPhantom",
    "ChestVolume",
    "HeadPhantom",
    "HeadVolume",
    "chest_phantom",
    "head_phantom",
    "write_chest_phantom",
    "write_head_phantom",
]

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
LabelArray = npt.NDArray[np.uint8]
Spacing = tuple[float, float, float]
Point = Sequence[float] | npt.NDArray[np.float64]
"""(z, y, x) in mm."""

_CHUNK: Final = 16
"""Slices drawn at once: bounds temporary memory for 512x512 matrices."""


@dataclass(frozen=True)
class ChestVolume:
    """A chest phantom in memory: HU voxels, geometry and ground truth."""

    hu: FloatArray
    spacing: Spacing
    origin: tuple[float, float, float]
    lung_mask: BoolArray
    """Both lungs, intrapulmonary vessels included, airways outside the lungs excluded."""
    expected_lung_volume_ml: float
    expected_laa950_percent: float
    """Percentage of ``lung_mask`` voxels below -950 HU."""


@dataclass(frozen=True)
class HeadVolume:
    """A non-contrast head CT phantom in memory."""

    hu: FloatArray
    spacing: Spacing
    origin: tuple[float, float, float]
    hemorrhage_mask: BoolArray
    """The planted hyperdense cluster; all false for a normal head."""
    expected_hemorrhage_volume_ml: float


@dataclass(frozen=True)
class ChestPhantom:
    """A chest phantom written as DICOM, with its ground truth.

    ``lung_mask`` is indexed like the phantom array (slice 0 most inferior); ``paths[0]``
    (instance 1) is the most superior slice, i.e. ``lung_mask[-1]``.
    """

    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    spacing: Spacing
    lung_mask: BoolArray
    expected_lung_volume_ml: float
    expected_laa950_percent: float


@dataclass(frozen=True)
class HeadPhantom:
    """A head phantom written as DICOM, with its ground truth (``hemorrhage_mask`` in
    array order: ``paths[0]`` is its last slice, as for :class:`ChestPhantom`)."""

    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    spacing: Spacing
    hemorrhage_mask: BoolArray
    expected_hemorrhage_volume_ml: float


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates (mm) of a volume centred on (0, 0, 0)."""

    z: FloatArray
    y: FloatArray
    x: FloatArray
    spacing: Spacing

    @classmethod
    def make(
        cls, slices: int, matrix: int, fov_mm: float, slice_mm: float, top: float | None = None
    ) -> _Grid:
        """Centred grid; ``top`` (mm) puts the last (most superior) slice there instead."""
        if slices < 8 or matrix < 32:
            raise ValueError("a phantom needs at least 8 slices of 32x32")
        if fov_mm <= 0 or slice_mm <= 0:
            raise ValueError("fov_mm and slice_spacing_mm must be positive")
        pixel = fov_mm / matrix
        first = -(slices - 1) / 2 * slice_mm if top is None else top - (slices - 1) * slice_mm
        return cls(
            z=(first + np.arange(slices) * slice_mm).astype(np.float32),
            y=((np.arange(matrix) - (matrix - 1) / 2) * pixel).astype(np.float32),
            x=((np.arange(matrix) - (matrix - 1) / 2) * pixel).astype(np.float32),
            spacing=(float(slice_mm), float(pixel), float(pixel)),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    @property
    def voxel_ml(self) -> float:
        return self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0

    def origin(self, z_offset: float) -> tuple[float, float, float]:
        return float(self.x[0]), float(self.y[0]), float(self.z[0]) + z_offset

    def box(self, low: Point, high: Point) -> tuple[slice, slice, slice] | None:
        """Index ranges of voxels whose centres lie in the (z, y, x) box, or None."""
        ranges = []
        for axis, lo, hi in zip((self.z, self.y, self.x), low, high, strict=True):
            start = int(np.searchsorted(axis, float(lo), side="left"))
            stop = int(np.searchsorted(axis, float(hi), side="right"))
            if stop <= start:
                return None
            ranges.append(slice(start, stop))
        return ranges[0], ranges[1], ranges[2]

    def axes(self, where: tuple[slice, slice, slice]) -> tuple[FloatArray, FloatArray, FloatArray]:
        return (
            self.z[where[0]].reshape(-1, 1, 1),
            self.y[where[1]].reshape(1, -1, 1),
            self.x[where[2]].reshape(1, 1, -1),
        )


def _ellipsoid(
    z: FloatArray, y: FloatArray, x: FloatArray, centre: Point, semi: Point
) -> BoolArray:
    """Voxels inside the ellipsoid; centre and semi-axes as (z, y, x) in mm."""
    q = ((z - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
    return np.asarray(q + ((x - centre[2]) / semi[2]) ** 2 <= 1.0)


def _paint_ellipsoid(
    labels: LabelArray,
    grid: _Grid,
    centre: Point,
    semi: Point,
    value: int,
    onto: tuple[int, ...] | None = None,
) -> None:
    """Set ``value`` inside the ellipsoid (only over labels in ``onto`` when given)."""
    where = grid.box(np.subtract(centre, semi), np.add(centre, semi))
    if where is None:
        return
    inside = _ellipsoid(*grid.axes(where), centre, semi)
    if onto is not None:
        inside &= np.isin(labels[where], onto)
    labels[where][inside] = value


def _paint_tube(
    labels: LabelArray,
    grid: _Grid,
    start: npt.NDArray[np.float64],
    end: npt.NDArray[np.float64],
    radius: float,
    value: int,
    onto: tuple[int, ...] | None = None,
) -> None:
    """Set ``value`` within ``radius`` mm of the segment start-end ((z, y, x) mm)."""
    low = np.minimum(start, end) - radius
    high = np.maximum(start, end) + radius
    where = grid.box(low, high)
    if where is None:
        return
    z, y, x = grid.axes(where)
    d = end - start
    t = ((z - start[0]) * d[0] + (y - start[1]) * d[1] + (x - start[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    dist2 = (z - start[0] - t * d[0]) ** 2 + (y - start[1] - t * d[1]) ** 2
    inside = dist2 + (x - start[2] - t * d[2]) ** 2 <= radius * radius
    if onto is not None:
        inside &= np.isin(labels[where], onto)
    labels[where][inside] = value


def _to_hu(
    labels: LabelArray, table: FloatArray, noise_hu: float, rng: np.random.Generator
) -> FloatArray:
    """Label map to HU with white Gaussian noise, rounded and clipped like stored CT."""
    hu = np.empty(labels.shape, dtype=np.float32)
    for start in range(0, labels.shape[0], _CHUNK):
        block = table[labels[start : start + _CHUNK]]
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(noise_hu)
        hu[start : start + _CHUNK] = block
    np.rint(hu, out=hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu


# ---------------------------------------------------------------------------
# Chest
# ---------------------------------------------------------------------------

(C_AIR, C_FAT, C_SOFT, C_BONE, C_MARROW, C_TABLE, C_AIRWAY, C_LUNG, C_EMPHYSEMA, C_VESSEL,
 C_HEART, C_AORTA, C_CANAL, C_GAS) = range(14)  # fmt: skip
_CHEST_HU: Final = np.array(
    [-1000, -100, 40, 700, 250, 150, -1000, -850, -980, 40, 45, 45, 20, -1000], np.float32
)
_LUNG_LABELS: Final = (C_LUNG, C_EMPHYSEMA, C_VESSEL)
_BODY: Final = (120.0, 170.0)  # (y, x) semi-axes, mm
_LUNG_SHAPE: Final = (1.0, 0.85, 0.58)  # (z, y, x) semi-axes relative to the z semi-axis
_MEDIASTINUM_HALF_WIDTH: Final = 22.0


def _lung_ellipsoids(scale: float) -> list[tuple[tuple[float, float, float], ...]]:
    semi = (scale * _LUNG_SHAPE[0], scale * _LUNG_SHAPE[1], scale * _LUNG_SHAPE[2])
    cx = _MEDIASTINUM_HALF_WIDTH + semi[2]
    return [((5.0, -5.0, side * cx), semi) for side in (-1.0, 1.0)]


def _heart(scale: float) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    return (5.0 - 0.55 * scale, -35.0, 15.0), (50.0, 45.0, 55.0)


def _lung_scale(lung_volume_ml: float) -> float:
    """Semi-axis scale giving ``lung_volume_ml`` once the heart's notch is cut out:
    analytic for the ellipsoids, corrected by the notch measured on a 2 mm grid."""
    shape_volume = 2 * 4 / 3 * np.pi * float(np.prod(_LUNG_SHAPE))
    scale = (lung_volume_ml * 1000.0 / shape_volume) ** (1 / 3)
    grid = _Grid.make(160, 200, 400.0, 2.0)
    z, y, x = grid.axes((slice(None), slice(None), slice(None)))
    lungs = np.zeros(grid.shape, dtype=bool)
    for centre, semi in _lung_ellipsoids(scale):
        lungs |= _ellipsoid(z, y, x, centre, semi)
    kept = float(np.count_nonzero(lungs & ~_ellipsoid(z, y, x, *_heart(scale))))
    return float(scale * (np.count_nonzero(lungs) / kept) ** (1 / 3))


def _chest_labels(grid: _Grid, scale: float) -> LabelArray:
    """Body, fat, chest wall with ribs, spine, table, trachea, lungs, heart, aorta."""
    labels = np.empty(grid.shape, dtype=np.uint8)
    y = grid.y.reshape(1, -1, 1)
    x = grid.x.reshape(1, 1, -1)
    radius = np.sqrt((y / _BODY[0]) ** 2 + (x / _BODY[1]) ** 2)
    angle = np.arctan2(y, np.abs(x))
    for start in range(0, grid.shape[0], _CHUNK):
        z = grid.z[start : start + _CHUNK].reshape(-1, 1, 1)
        block = np.full((len(z), *grid.shape[1:]), C_AIR, dtype=np.uint8)
        block[:, ((grid.y > _BODY[0] + 8) & (grid.y < _BODY[0] + 20)), :] = C_TABLE
        block[np.broadcast_to(radius <= 1.0, block.shape)] = C_FAT
        block[np.broadcast_to(radius <= 0.93, block.shape)] = C_SOFT
        rib_phase = np.mod(z + 12.0 * angle, 28.0) < 9.0
        ribs = (radius > 0.85) & (radius < 0.91) & (np.abs(angle) < 1.3) & rib_phase
        block[ribs] = C_BONE
        block[np.broadcast_to(((y - 75) ** 2 + x**2) <= 17.0**2, block.shape)] = C_BONE
        block[np.broadcast_to(((y - 75) ** 2 + x**2) <= 13.0**2, block.shape)] = C_MARROW
        block[np.broadcast_to(((y - 100) ** 2 + x**2) <= 8.0**2, block.shape)] = C_CANAL
        labels[start : start + _CHUNK] = block
    lungs = _lung_ellipsoids(scale)
    apex = lungs[0][0][0] + lungs[0][1][0]
    carina = np.array([apex - 45.0, -25.0, 0.0])
    top = np.array([float(grid.z[-1]) + 10.0, -25.0, 0.0])
    _paint_tube(labels, grid, carina, top, 9.0, C_AIRWAY)
    for centre, semi in lungs:
        hilum = np.array([carina[0] - 30.0, -10.0, centre[2] - np.sign(centre[2]) * 0.5 * semi[2]])
        _paint_tube(labels, grid, carina, hilum, 6.0, C_AIRWAY)
        _paint_ellipsoid(labels, grid, centre, semi, C_LUNG)
    _paint_ellipsoid(labels, grid, *_heart(scale), C_HEART)
    _paint_tube(
        labels, grid, np.array([grid.z[0] - 5.0, 45.0, 18.0]),
        np.array([carina[0] + 10.0, 45.0, 18.0]), 13.0, C_AORTA,
    )  # fmt: skip
    left_base = lungs[1][0][0] - lungs[1][1][0]
    _paint_ellipsoid(labels, grid, (left_base - 22.0, -20.0, 60.0), (12.0, 20.0, 25.0), C_GAS)
    return labels


def _add_vessels(labels: LabelArray, grid: _Grid, scale: float, rng: np.random.Generator) -> None:
    """Pulmonary vessels radiating from each hilum, kept inside the lung (they end
    well within it, so a per-slice hole fill can recover them)."""
    for centre, semi in _lung_ellipsoids(scale):
        c = np.asarray(centre, dtype=np.float64)
        s = np.asarray(semi, dtype=np.float64)
        hilum = c + np.array([0.1, 0.0, -np.sign(c[2]) * 0.45]) * s
        for _ in range(24):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            end = c + direction * s * rng.uniform(0.45, 0.75)
            _paint_tube(labels, grid, hilum, end, rng.uniform(1.5, 3.5), C_VESSEL, (C_LUNG,))


def _add_emphysema(
    labels: LabelArray, grid: _Grid, fraction: float, rng: np.random.Generator
) -> None:
    """Mark ``fraction`` of the parenchyma as emphysema: the highest values of a smooth
    random field (~1-2 cm blobs) with an upper-lobe gradient, as in centrilobular
    emphysema."""
    if fraction <= 0.0:
        return
    cell = 6.0
    coarse_shape = tuple(int(np.ceil(n * sp / cell)) + 2 for n, sp in zip(
        grid.shape, grid.spacing, strict=True))  # fmt: skip
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma=1.0)
    field /= field.std()
    field += 0.8 * np.linspace(-1.0, 1.0, coarse_shape[0]).reshape(-1, 1, 1)
    index = np.nonzero(labels == C_LUNG)
    coords = [idx * sp / cell for idx, sp in zip(index, grid.spacing, strict=True)]
    values = ndimage.map_coordinates(field, coords, order=1)
    chosen = values > np.quantile(values, 1.0 - fraction)
    labels[tuple(axis[chosen] for axis in index)] = C_EMPHYSEMA


def chest_phantom(
    *,
    slices: int = 300,
    matrix: int = 512,
    fov_mm: float = 360.0,
    slice_spacing_mm: float = 1.0,
    lung_volume_ml: float = 4800.0,
    emphysema_fraction: float = 0.05,
    noise_hu: float = 15.0,
    seed: int = 0,
) -> ChestVolume:
    """Draw a chest CT phantom with known lung mask, volume and LAA-950.

    Two ellipsoidal lungs (parenchyma -850 HU, vessels, a heart notch, a fraction of
    -980 HU emphysema) inside a body with fat, chest wall and ribs, spine, aorta, heart,
    trachea and main bronchi (air, outside the lungs), a gastric air bubble below the
    left lung and the patient table. The default is a realistic 300x512x512 scan at
    1 mm; use e.g. ``slices=96, matrix=128, slice_spacing_mm=3.0`` in unit tests.

    Parameters
    ----------
    lung_volume_ml : float
        Target of both lungs together; the exact value is ``expected_lung_volume_ml``.
    emphysema_fraction : float
        Share (0..0.6) of parenchyma voxels planted at -980 HU.

    Raises
    ------
    ValueError
        If an argument is out of range or the lungs do not fit in the body and scan.
    """
    if not 0.0 <= emphysema_fraction <= 0.6:
        raise ValueError("emphysema_fraction must be within 0..0.6")
    if noise_hu < 0 or seed < 0:
        raise ValueError("noise_hu and seed must be non-negative")
    grid = _Grid.make(slices, matrix, fov_mm, slice_spacing_mm)
    scale = _lung_scale(lung_volume_ml)
    (centre, semi) = _lung_ellipsoids(scale)[1]
    if centre[2] + semi[2] > 0.88 * _BODY[1] or semi[1] - centre[1] > 0.85 * _BODY[0]:
        raise ValueError(f"lungs of {lung_volume_ml} ml do not fit in the phantom's body")
    if centre[0] + semi[0] + 15 > grid.z[-1] or centre[0] - semi[0] - 35 < grid.z[0]:
        raise ValueError("the scan is too short for the lungs: add slices or spacing")
    if fov_mm < 2 * _BODY[1] + 10:
        raise ValueError("fov_mm must hold the body (at least 350 mm)")
    rng = np.random.default_rng([seed, 0xC4E57])
    labels = _chest_labels(grid, scale)
    _add_vessels(labels, grid, scale, rng)
    _add_emphysema(labels, grid, emphysema_fraction, rng)
    hu = _to_hu(labels, _CHEST_HU, noise_hu, rng)
    lung_mask = np.isin(labels, _LUNG_LABELS)
    count = int(np.count_nonzero(lung_mask))
    below = int(np.count_nonzero(hu[lung_mask] < -950.0))
    return ChestVolume(
        hu=hu,
        spacing=grid.spacing,
        origin=grid.origin(-150.0),
        lung_mask=lung_mask,
        expected_lung_volume_ml=count * grid.voxel_ml,
        expected_laa950_percent=100.0 * below / count,
    )


# ---------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------

(H_AIR, H_SCALP, H_SKULL, H_CSF, H_GREY, H_WHITE, H_CALCIFICATION, H_BLOOD,
 H_EDEMA) = range(9)  # fmt: skip
_HEAD_SEMI: Final = (85.0, 95.0, 75.0)  # (z, y, x) mm, centre at the origin
_LAYERS: Final = ((H_SCALP, 0.0), (H_SKULL, 5.0), (H_CSF, 12.0), (H_GREY, 14.0), (H_WHITE, 18.0))
"""(label, depth in mm below the scalp surface at which it starts)."""
_BRAIN_DEPTH: Final = 14.0


def _head_labels(grid: _Grid) -> LabelArray:
    """Scalp, skull, CSF rim, cortex, white matter, lateral ventricles, calcifications."""
    labels = np.full(grid.shape, H_AIR, dtype=np.uint8)
    z, y, x = grid.axes((slice(None), slice(None), slice(None)))
    for label, depth in _LAYERS:
        semi = np.subtract(_HEAD_SEMI, depth)
        labels[_ellipsoid(z, y, x, (0.0, 0.0, 0.0), semi)] = label
    for side in (-1.0, 1.0):
        _paint_ellipsoid(labels, grid, (15.0, -5.0, side * 12.0), (12.0, 25.0, 6.0), H_CSF)
        _paint_ellipsoid(labels, grid, (15.0, 25.0, side * 15.0), (2.5, 2.5, 2.5), H_CALCIFICATION)
    _paint_ellipsoid(labels, grid, (5.0, 28.0, 0.0), (3.0, 3.0, 3.0), H_CALCIFICATION)
    return labels


def _plant_hemorrhage(
    labels: LabelArray, grid: _Grid, volume_ml: float, rng: np.random.Generator
) -> None:
    """A two-lobed hyperdense cluster of about ``volume_ml`` in the brain parenchyma,
    about 8 mm or more from the brain surface, with a 3 mm rim of oedema."""
    radius = (volume_ml * 1000.0 * 3 / (4 * np.pi)) ** (1 / 3)
    inner = np.asarray(_HEAD_SEMI) - _BRAIN_DEPTH - 8.0 - 1.3 * radius
    lowest = float(grid.z[0]) + 1.3 * radius + 8.0
    if np.any(inner <= 0) or lowest > inner[0]:
        raise ValueError(f"a cluster of {volume_ml} ml does not fit in the brain")
    for _ in range(200):
        centre = rng.uniform(-1.0, 1.0, 3) * inner
        if np.sum((centre / inner) ** 2) > 1.0 or centre[0] < lowest:
            continue
        ratios = rng.uniform(0.75, 1.3, 3)
        semi = radius * ratios / np.prod(ratios) ** (1 / 3)
        lobe = centre + rng.uniform(-0.5, 0.5, 3) * semi
        trial = labels.copy()
        _paint_ellipsoid(trial, grid, centre, semi, H_BLOOD)
        _paint_ellipsoid(trial, grid, lobe, 0.6 * semi, H_BLOOD)
        blood = trial == H_BLOOD
        # no overlap with ventricles or calcifications, and something was drawn
        if np.any(blood & np.isin(labels, (H_CSF, H_CALCIFICATION))) or not blood.any():
            continue
        distance = ndimage.distance_transform_edt(~blood, sampling=grid.spacing)
        rim = (distance <= 3.0) & ~blood & np.isin(labels, (H_GREY, H_WHITE))
        trial[rim] = H_EDEMA
        labels[...] = trial
        return
    raise ValueError("could not place the cluster inside the white matter")


def head_phantom(
    *,
    slices: int = 48,
    matrix: int = 512,
    fov_mm: float = 240.0,
    slice_spacing_mm: float = 3.0,
    hemorrhage: bool = False,
    cluster_volume_ml: float = 8.0,
    hemorrhage_hu: float = 70.0,
    noise_hu: float = 5.0,
    seed: int = 0,
) -> HeadVolume:
    """Draw a non-contrast head CT phantom, optionally with a planted hyperdense cluster.

    Scalp, a closed 7 mm skull (1100 HU), CSF (6 HU), cortex (38 HU), white matter
    (28 HU), lateral ventricles, pineal and choroid-plexus calcifications (the usual
    false-positive bait) and, when ``hemorrhage``, a two-lobed ``hemorrhage_hu`` cluster
    of about ``cluster_volume_ml`` ringed by oedema. The label map is blurred by a
    Gaussian of half a voxel (partial volume at the skull, as a scanner's point-spread
    function makes it) before noise is added. Tests can use
    ``slices=64, matrix=128, slice_spacing_mm=2.5``.
    """
    if noise_hu < 0 or seed < 0 or cluster_volume_ml <= 0:
        raise ValueError("noise_hu, seed and cluster_volume_ml must be positive")
    # head centre at z = 0, the last slice just above the vertex
    grid = _Grid.make(slices, matrix, fov_mm, slice_spacing_mm, top=_HEAD_SEMI[0] + 5.0)
    if fov_mm < 2 * max(_HEAD_SEMI[1:]) + 10:
        raise ValueError("fov_mm must hold the head (at least 200 mm)")
    rng = np.random.default_rng([seed, 0x4EAD])
    labels = _head_labels(grid)
    if hemorrhage:
        _plant_hemorrhage(labels, grid, cluster_volume_ml, rng)
    table = np.array([-1000, 35, 1100, 6, 38, 28, 250, hemorrhage_hu, 20], np.float32)
    hu = ndimage.gaussian_filter(table[labels], sigma=0.5)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    np.rint(hu, out=hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    mask = labels == H_BLOOD
    return HeadVolume(
        hu=hu,
        spacing=grid.spacing,
        origin=grid.origin(0.0),
        hemorrhage_mask=mask,
        expected_hemorrhage_volume_ml=int(np.count_nonzero(mask)) * grid.voxel_ml,
    )


# ---------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------


def _write_ct(
    out_dir: Path,
    hu: FloatArray,
    spacing: Spacing,
    origin: tuple[float, float, float],
    *,
    kind: str,
    seed: int,
    patient_id: str,
    study_uid: str | None,
    window: tuple[str, str],
) -> tuple[tuple[Path, ...], str, str]:
    """Write ``hu`` as an axial CT series; returns (paths, study UID, series UID)."""
    description, body_part, name = {
        "CHEST": ("CT CHEST WITHOUT CONTRAST", "CHEST", "PHANTOM^CHEST"),
        "HEAD": ("CT HEAD WITHOUT CONTRAST", "HEAD", "PHANTOM^HEAD"),
    }[kind]
    seed_parts = ("phantom", kind, str(seed), patient_id, str(hu.shape))
    uid = study_uid or _uid(*seed_parts, "study")
    parts = (*seed_parts, uid)
    patient = _Patient(0, patient_id, name, "O", date(1960, 1, 1), 75.0)
    plan = _StudyPlan(
        patient=patient, index=0, kind="CT", modality="CT", study_uid=uid,
        study_date=date(2025, 1, 2) + timedelta(days=seed % 300), study_time=time(9, 30),
        accession=f"PH{int(uid.rsplit('.', 1)[-1]) % 10**8:08d}", study_id="1",
        description=description, body_part=body_part, referring="PHANTOM^REFERRER",
        uid_parts=parts,
    )  # fmt: skip
    series_uid = _uid(*parts, "series")
    frame_uid = _uid(*parts, "frame-of-reference")
    series_start = _study_start(plan) + timedelta(minutes=1)
    slices, rows, columns = hu.shape
    paths: list[Path] = []
    for number in range(1, slices + 1):
        index = slices - number  # instance 1 is the most superior slice
        z = origin[2] + index * spacing[0]
        ds = _base_dataset(
            plan, sop_class=CTImageStorage, sop_uid=_uid(*parts, "instance", number),
            series_uid=series_uid, series_number=1,
            series_description=f"AX {spacing[0]:g}MM PHANTOM", series_start=series_start,
            instance_number=number, content=series_start + timedelta(milliseconds=100 * number),
            model="OpenVNA Phantom",
        )  # fmt: skip
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness = _ds(spacing[0])
        ds.KVP = "120"
        ds.GantryDetectorTilt = "0"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [_ds(origin[0]), _ds(origin[1]), _ds(z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[2])]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = window
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        stored = np.clip(hu[index] + 1024.0, 0, 4095).astype(np.uint16)
        _set_pixels(ds, stored, 16)
        paths.append(_write(_instance_path(out_dir, number - 1), ds, ExplicitVRLittleEndian))
    return tuple(paths), uid, series_uid


def write_chest_phantom(
    out_dir: Path,
    *,
    slices: int = 300,
    matrix: int = 512,
    slice_spacing_mm: float = 1.0,
    lung_volume_ml: float = 4800.0,
    emphysema_fraction: float = 0.05,
    seed: int = 0,
    patient_id: str = "PHANTOM-CHEST",
    study_uid: str | None = None,
) -> ChestPhantom:
    """Write :func:`chest_phantom` as a CT series into ``out_dir`` (``0000.dcm``...)."""
    volume = chest_phantom(
        slices=slices, matrix=matrix, slice_spacing_mm=slice_spacing_mm,
        lung_volume_ml=lung_volume_ml, emphysema_fraction=emphysema_fraction, seed=seed,
    )  # fmt: skip
    paths, uid, series_uid = _write_ct(
        Path(out_dir), volume.hu, volume.spacing, volume.origin, kind="CHEST", seed=seed,
        patient_id=patient_id, study_uid=study_uid, window=("-600", "1500"),
    )  # fmt: skip
    return ChestPhantom(
        paths=paths,
        study_uid=uid,
        series_uid=series_uid,
        spacing=volume.spacing,
        lung_mask=volume.lung_mask,
        expected_lung_volume_ml=volume.expected_lung_volume_ml,
        expected_laa950_percent=volume.expected_laa950_percent,
    )


def write_head_phantom(
    out_dir: Path,
    *,
    hemorrhage: bool,
    cluster_volume_ml: float = 8.0,
    slices: int = 48,
    matrix: int = 512,
    slice_spacing_mm: float = 3.0,
    seed: int = 0,
    patient_id: str = "PHANTOM-HEAD",
    study_uid: str | None = None,
) -> HeadPhantom:
    """Write :func:`head_phantom` as a CT series into ``out_dir`` (``0000.dcm``...)."""
    volume = head_phantom(
        slices=slices, matrix=matrix, slice_spacing_mm=slice_spacing_mm,
        hemorrhage=hemorrhage, cluster_volume_ml=cluster_volume_ml, seed=seed,
    )  # fmt: skip
    paths, uid, series_uid = _write_ct(
        Path(out_dir), volume.hu, volume.spacing, volume.origin, kind="HEAD", seed=seed,
        patient_id=patient_id, study_uid=study_uid, window=("40", "80"),
    )  # fmt: skip
    return HeadPhantom(
        paths=paths,
        study_uid=uid,
        series_uid=series_uid,
        spacing=volume.spacing,
        hemorrhage_mask=volume.hemorrhage_mask,
        expected_hemorrhage_volume_ml=volume.expected_hemorrhage_volume_ml,
    )
