"""Where each frame of a series lies, and whether the frames make one trustworthy volume.

A model that segments or measures assumes a regular grid: slices parallel, equally
spaced, stacked along their normal, none missing, none twice. Real series break that
(gantry tilt, a slice lost in transfer, two acquisitions in one series, a localizer
mixed in), and a model fed such a stack returns confident nonsense. So the geometry is
checked here, from the attributes of the Image Plane Module (PS3.3 C.7.6.2) or the
Plane Position / Plane Orientation / Pixel Measures functional groups of enhanced
multi-frame images (PS3.3 C.7.6.16.2), and what is wrong is *reported*
(:class:`~openvna.ai.errors.InconsistentSeriesError`), never silently processed.
What is only imperfect (slightly uneven spacing) becomes a warning of the volume.

Slices are ordered along the normal (row cosine x column cosine, PS3.3 C.7.6.2.1.1) by
the dot product of Image Position (Patient) with it; the slice spacing comes from those
positions, not from Slice Thickness (which may overlap or leave gaps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import Dataset

from openvna.ai.errors import InconsistentSeriesError

PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF", "OP"})
"""Modalities whose images are projections (2D), not slices of a volume."""

DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference of direction cosines still counted as the same orientation."""
DUPLICATE_TOLERANCE_MM = 1e-3
GAP_FACTOR = 1.5
"""A step larger than this times the median spacing means slices are missing."""
CROWDED_FACTOR = 0.5
"""A step smaller than this times the median spacing means interleaved stacks."""
UNEVEN_SPACING_WARNING = 0.01
"""Relative spread of the steps above which the volume carries a warning."""
SHEAR_TOLERANCE_MM = 0.01
SHEAR_TOLERANCE_SLOPE = math.tan(math.radians(0.1))
"""Lateral drift per mm along the normal tolerated before a stack counts as sheared."""


@dataclass(frozen=True)
class FramePlane:
    """The geometry and value transform of one frame: one slice to be."""

    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    """(between rows, between columns) in mm: Pixel Spacing, else Imager Pixel Spacing."""
    slice_thickness: float | None
    slope: float
    intercept: float
    frame_of_reference_uid: str


@dataclass(frozen=True)
class Stack:
    """Frames in slice order with the volume's geometry."""

    order: list[int]
    """Indices into the planes given to :func:`order_stack`, slice 0 first."""
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    is_2d: bool
    warnings: list[str] = field(default_factory=list)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(item) for item in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(item) for item in numbers):
        return None
    return numbers


def _number(value: Any, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _macro(groups: Dataset | None, sequence: str) -> Dataset | None:
    """The item of one functional group macro (PS3.3 C.7.6.16), if present."""
    if groups is None:
        return None
    items = groups.get(sequence)
    return items[0] if items else None


def _lookup(per_frame: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    """A functional group attribute: the frame's own, else the shared one."""
    for groups in (per_frame, shared):
        item = _macro(groups, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def single_frame_plane(get: Callable[[str], Any]) -> FramePlane:
    """The plane of a single-frame image from its Image Plane and Image Pixel attributes;
    ``get(keyword)`` answers as ``Dataset.get`` does (None when absent), so the index's
    DICOM JSON headers are read without building a Dataset first."""
    return FramePlane(
        rows=int(get("Rows") or 0),
        columns=int(get("Columns") or 0),
        position=_floats(get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(  # type: ignore[arg-type]
            get("PixelSpacing") or get("ImagerPixelSpacing"), 2
        ),
        slice_thickness=_number(get("SliceThickness"), None),
        slope=_number(get("RescaleSlope"), None) or 1.0,
        intercept=_number(get("RescaleIntercept"), None) or 0.0,
        frame_of_reference_uid=str(get("FrameOfReferenceUID") or ""),
    )


def frame_planes(dataset: Dataset) -> list[FramePlane]:
    """One plane per frame of ``dataset``: a single-frame image has one.

    Enhanced multi-frame images carry geometry in functional groups (per-frame over
    shared, PS3.3 C.7.6.16); other multi-frame images (NM, legacy multi-frame) at most
    one Image Position and Orientation plus Spacing Between Slices, from which the frame
    positions follow along the normal.
    """
    if "NumberOfFrames" not in dataset:
        return [single_frame_plane(dataset.get)]
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    frame_of_reference = str(dataset.get("FrameOfReferenceUID", "") or "")
    top_position = dataset.get("ImagePositionPatient")
    top_orientation = dataset.get("ImageOrientationPatient")
    detector = dataset.get("DetectorInformationSequence")
    if detector and top_position is None:  # NM Image Module (PS3.3 C.8.4.10)
        top_position = detector[0].get("ImagePositionPatient")
        top_orientation = detector[0].get("ImageOrientationPatient")
    top_spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    top_slope = _number(dataset.get("RescaleSlope"), 1.0)
    top_intercept = _number(dataset.get("RescaleIntercept"), 0.0)
    top_thickness = _number(dataset.get("SliceThickness"), None)

    frames = max(1, int(dataset.get("NumberOfFrames") or 1))
    shared_items = dataset.get("SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    per_frame_items = dataset.get("PerFrameFunctionalGroupsSequence") or []
    step = _number(dataset.get("SpacingBetweenSlices"), None)
    planes = []
    for index in range(frames):
        per_frame = per_frame_items[index] if index < len(per_frame_items) else None
        position = _floats(
            _lookup(per_frame, shared, "PlanePositionSequence", "ImagePositionPatient"), 3
        )
        orientation = _floats(
            _lookup(per_frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
        ) or _floats(top_orientation, 6)
        if position is None and index == 0:
            position = _floats(top_position, 3)
        elif position is None and step and orientation is not None:
            origin = _floats(top_position, 3)
            if origin is not None:
                normal = np.cross(orientation[:3], orientation[3:])
                position = tuple(float(v) for v in np.asarray(origin) + index * step * normal)
        spacing = _floats(
            _lookup(per_frame, shared, "PixelMeasuresSequence", "PixelSpacing"), 2
        ) or _floats(top_spacing, 2)
        thickness = _number(
            _lookup(per_frame, shared, "PixelMeasuresSequence", "SliceThickness"), top_thickness
        )
        slope = _number(
            _lookup(per_frame, shared, "PixelValueTransformationSequence", "RescaleSlope"),
            top_slope,
        )
        intercept = _number(
            _lookup(per_frame, shared, "PixelValueTransformationSequence", "RescaleIntercept"),
            top_intercept,
        )
        planes.append(
            FramePlane(
                rows=rows,
                columns=columns,
                position=position,  # type: ignore[arg-type]
                orientation=orientation,  # type: ignore[arg-type]
                pixel_spacing=spacing,  # type: ignore[arg-type]
                slice_thickness=thickness,
                slope=slope if slope is not None else 1.0,
                intercept=intercept if intercept is not None else 0.0,
                frame_of_reference_uid=frame_of_reference,
            )
        )
    return planes


def _distinct(values: Sequence[str], limit: int = 3) -> str:
    unique = list(dict.fromkeys(values))
    shown = ", ".join(unique[:limit])
    return shown + (f" and {len(unique) - limit} more" if len(unique) > limit else "")


def _check_uniform(planes: Sequence[FramePlane], labels: Sequence[str]) -> None:
    sizes = [f"{plane.rows}x{plane.columns}" for plane in planes]
    if len(set(sizes)) > 1:
        raise InconsistentSeriesError(
            f"the series mixes image sizes ({_distinct(sizes)} rows x columns): not one volume"
        )
    references = [plane.frame_of_reference_uid for plane in planes]
    if len(set(references)) > 1:
        raise InconsistentSeriesError(
            "the series mixes Frames of Reference "
            f"({_distinct([ref or '(none)' for ref in references])}): positions of "
            "different frames of reference cannot be stacked"
        )


def _single(plane: FramePlane, projection: bool) -> Stack:
    """A one-frame 'volume': a projection image (2D) or one cross-sectional slice."""
    warnings = []
    spacing = plane.pixel_spacing
    if spacing is None:
        spacing = (1.0, 1.0)
        warnings.append("the image has no Pixel Spacing or Imager Pixel Spacing: 1 mm assumed")
    geometry_known = plane.position is not None and plane.orientation is not None
    if projection or not geometry_known:
        return Stack(
            order=[0],
            spacing=(0.0, spacing[0], spacing[1]),
            origin=plane.position or (0.0, 0.0, 0.0),
            orientation=plane.orientation or DEFAULT_ORIENTATION,
            is_2d=True,
            warnings=warnings,
        )
    assert plane.position is not None and plane.orientation is not None
    thickness = plane.slice_thickness or 0.0
    warnings.append(f"a single slice: slice spacing taken from Slice Thickness ({thickness} mm)")
    return Stack(
        order=[0],
        spacing=(thickness, spacing[0], spacing[1]),
        origin=plane.position,
        orientation=plane.orientation,
        is_2d=False,
        warnings=warnings,
    )


def order_stack(
    planes: Sequence[FramePlane], labels: Sequence[str], *, projection: bool = False
) -> Stack:
    """Sort ``planes`` into slice order and check they form one regular volume.

    ``labels`` name the frames in messages (SOP Instance UID, with the frame number of a
    multi-frame instance). ``projection``: the images are projections (CR, DX, MG), which
    make a 2D image, never a stack.

    Raises
    ------
    InconsistentSeriesError
        Mixed sizes, orientations, pixel spacings or Frames of Reference; missing
        geometry; duplicate positions; a sheared (tilted) stack; missing slices.
    """
    if not planes:
        raise InconsistentSeriesError("the series holds no image frame")
    _check_uniform(planes, labels)
    if len(planes) == 1:
        return _single(planes[0], projection)

    lacking = [
        label
        for plane, label in zip(planes, labels, strict=True)
        if plane.position is None or plane.orientation is None or plane.pixel_spacing is None
    ]
    if lacking:
        hint = " (projection images are analysed one at a time)" if projection else ""
        raise InconsistentSeriesError(
            f"{len(lacking)} of {len(planes)} frames lack Image Position (Patient), Image "
            f"Orientation (Patient) or Pixel Spacing ({_distinct(lacking)}): no volume "
            f"geometry{hint}"
        )
    positions = np.array([plane.position for plane in planes], dtype=np.float64)
    orientations = np.array([plane.orientation for plane in planes], dtype=np.float64)
    spacings = np.array([plane.pixel_spacing for plane in planes], dtype=np.float64)

    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        shown = [" ".join(f"{v:g}" for v in row) for row in orientations]
        raise InconsistentSeriesError(
            f"the series mixes image orientations ({_distinct(shown)}): a localizer or "
            "several planes in one series, not one volume"
        )
    if np.abs(spacings - spacings[0]).max() > 1e-3 * spacings[0].max():
        shown = [f"{row[0]:g}\\{row[1]:g}" for row in spacings]
        raise InconsistentSeriesError(f"the series mixes pixel spacings ({_distinct(shown)})")

    orientation = tuple(float(v) for v in orientations[0])
    row, column = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, column)
    if not math.isclose(float(np.linalg.norm(normal)), 1.0, abs_tol=1e-2):
        raise InconsistentSeriesError(
            f"Image Orientation (Patient) {orientation} is not two orthogonal unit vectors"
        )
    distances = positions @ normal
    order = [int(i) for i in np.argsort(distances, kind="stable")]
    ordered = distances[order]
    steps = np.diff(ordered)

    duplicates = [
        f"{labels[order[i]]} and {labels[order[i + 1]]}"
        for i in np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    ]
    if duplicates:
        raise InconsistentSeriesError(
            f"{len(duplicates)} slice position(s) occur twice ({_distinct(duplicates, 2)}): "
            "several acquisitions, phases or echoes in one series?"
        )

    _check_shear(positions[order], ordered, normal)
    warnings = _check_spacing(ordered, steps)
    slice_spacing = float((ordered[-1] - ordered[0]) / (len(ordered) - 1))
    origin = positions[order[0]]
    return Stack(
        order=order,
        spacing=(slice_spacing, float(spacings[0, 0]), float(spacings[0, 1])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        orientation=orientation,  # type: ignore[arg-type]
        is_2d=False,
        warnings=warnings,
    )


def _check_shear(
    positions: np.ndarray[Any, Any], distances: np.ndarray[Any, Any], normal: np.ndarray[Any, Any]
) -> None:
    """Slice corners must advance along the normal; drifting sideways is a sheared stack
    (CT gantry tilt), whose voxels are not where a regular grid puts them."""
    along = distances - distances[0]
    lateral = positions - positions[0] - np.outer(along, normal)
    drift = np.linalg.norm(lateral, axis=1)
    if np.any(drift > SHEAR_TOLERANCE_MM + SHEAR_TOLERANCE_SLOPE * along):
        angle = math.degrees(math.atan2(float(drift[-1]), float(along[-1])))
        raise InconsistentSeriesError(
            f"slice positions drift {float(drift.max()):.2f} mm sideways over "
            f"{float(along[-1]):.1f} mm: the stack is sheared by about {angle:.1f} degrees "
            "(gantry/detector tilt) and must be resampled to an orthogonal grid first"
        )


def _check_spacing(distances: np.ndarray[Any, Any], steps: np.ndarray[Any, Any]) -> list[str]:
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        first = int(gaps[0])
        missing = sum(max(1, round(float(steps[i]) / median) - 1) for i in gaps)
        raise InconsistentSeriesError(
            f"slices are missing: {gaps.size} gap(s) larger than {GAP_FACTOR} x the median "
            f"spacing of {median:.3g} mm, the first of {float(steps[first]):.3g} mm after "
            f"{float(distances[first]):.2f} mm along the normal (about {missing} slice(s))"
        )
    crowded = np.flatnonzero(steps < CROWDED_FACTOR * median)
    if crowded.size:
        raise InconsistentSeriesError(
            f"{crowded.size} slice step(s) are less than {CROWDED_FACTOR} x the median "
            f"spacing of {median:.3g} mm: interleaved or overlapping stacks"
        )
    spread = float(steps.max() - steps.min()) / median
    if spread > UNEVEN_SPACING_WARNING:
        return [
            f"slice spacing varies from {float(steps.min()):.4g} to "
            f"{float(steps.max()):.4g} mm (median {median:.4g} mm); the volume uses the "
            "mean spacing"
        ]
    return []
