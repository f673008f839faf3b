"""Reference model: lung segmentation, lung volume and emphysema index on chest CT.

Method (classical image processing, no trained weights, so every step can be audited):

1. Air: voxels below ``threshold_hu`` (-320 HU, between aerated lung ~-850 and soft
   tissue ~40).
2. Outside air: air components that touch the in-plane border of their slice (2D
   connectivity, so the trachea entering through the first or last slice is kept).
3. Airways (``remove_airways``): starting at the cranial slice, small midline air
   components (the trachea) are followed slice by slice towards the feet while they
   stay smaller than ``airway_max_area_mm2``; tracking stops where a bronchus merges
   with lung in the slice (at the hilum). This separates the two lungs; intrapulmonary
   bronchi stay in the lung mask.
4. Lungs: 3D components (6-connectivity); the largest is kept when at least
   ``min_lung_ml``, and the second when it is also at least ``min_lung_ml`` and
   ``second_lung_ratio`` of the first (gastric and bowel gas are smaller).
5. Vessels: holes of each slice of the mask are filled (pulmonary vessels and nodules
   surrounded by lung), as density measurements are reported over the whole lung.

Measurements are over the final mask: volume (mL), LAA-950 (share of voxels below
``laa_threshold_hu``, the emphysema index of Gevenois et al.), Perc15 (15th percentile
of attenuation) and mean lung density; left and right lung volumes when the lungs are
two components. Limits: no lobes or fissures; the lungs are one component when they
touch at the anterior junction line; dense consolidation, effusion or atelectasis above
-320 HU is left out of the lung; thick slices and contrast change the density numbers;
LAA-950 depends on the kernel and dose (use a soft kernel, 1 mm slices). For research
and demonstration, not for diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

from openvna.ai.inputs import ModelInput, Volume
from openvna.ai.models.morphology import IN_PLANE, border_labels, fill_holes_per_slice
from openvna.ai.outputs import (
    ANATOMICAL_STRUCTURE,
    HOUNSFIELD_UNIT,
    LUNG,
    MEAN_ATTENUATION,
    MILLILITRE,
    PERCENT,
    VOLUME,
    Code,
    Measurement,
    ModelOutput,
    Segment,
)

__all__ = ["LAA950", "PERC15", "LungParameters", "analyse", "segment_lungs"]

BoolArray = npt.NDArray[np.bool_]
LabelArray = npt.NDArray[np.int32]

LAA950: Final = Code("LAA950", "99OPENVNA", "Lung volume fraction below -950 HU")
"""No standard concept names the emphysema index; a private code (PS3.16 8.2 coding
scheme designator starting with 99) says exactly what was measured."""
PERC15: Final = Code("PERC15", "99OPENVNA", "15th percentile of lung attenuation")
RIGHT_LUNG: Final = Code("3341006", "SCT", "Right lung")
LEFT_LUNG: Final = Code("44029006", "SCT", "Left lung")


@dataclass(frozen=True)
class LungParameters:
    """Tunable settings, from the manifest's ``[runtime.parameters]``."""

    threshold_hu: float = -320.0
    laa_threshold_hu: float = -950.0
    min_lung_ml: float = 100.0
    second_lung_ratio: float = 0.2
    remove_airways: bool = True
    airway_max_area_mm2: float = 600.0

    @classmethod
    def from_mapping(cls, parameters: Mapping[str, Any]) -> LungParameters:
        """Validate ``parameters``; an unknown key is an error, not silently ignored."""
        known = {field.name: field for field in fields(cls)}
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise ValueError(f"unknown ct-lung parameters: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in parameters.items():
            if isinstance(known[name].default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"ct-lung parameter {name} must be true or false")
                values[name] = value
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values[name] = float(value)
            else:
                raise ValueError(f"ct-lung parameter {name} must be a number")
        return cls(**values)


def analyse(model_input: ModelInput) -> ModelOutput:
    """Segment the lungs of a chest CT and measure volume and emphysema index.

    Works on the native volume (``ModelInput.native`` when pre-processing changed the
    geometry), so the mask lies on the source images.

    Raises
    ------
    ValueError
        If the volume is 2D or not in Hounsfield units, a parameter is invalid, or no
        lung-sized air region is found.
    """
    volume = model_input.native or model_input.volume
    parameters = LungParameters.from_mapping(model_input.parameters)
    _check_volume(volume)
    hu = volume.voxels
    mask, lungs = segment_lungs(volume, parameters)
    values = hu[mask]
    voxel_ml = volume.voxel_volume_ml
    volume_ml = float(values.size * voxel_ml)
    laa = float(100.0 * np.count_nonzero(values < parameters.laa_threshold_hu) / values.size)
    perc15 = float(np.percentile(values, 15.0))
    mean = float(values.mean(dtype=np.float64))
    measurements = [
        Measurement(VOLUME, volume_ml, MILLILITRE, LUNG, 1, "Volume of both lungs"),
        Measurement(
            LAA950, laa, PERCENT, LUNG, 1,
            f"Lung voxels below {parameters.laa_threshold_hu:g} HU",
        ),
        Measurement(PERC15, perc15, HOUNSFIELD_UNIT, LUNG, 1, "15th percentile density"),
        Measurement(MEAN_ATTENUATION, mean, HOUNSFIELD_UNIT, LUNG, 1, "Mean lung density"),
    ]  # fmt: skip
    sides = _sides(volume, lungs)
    for site, count in sides:
        measurements.append(Measurement(VOLUME, count * voxel_ml, MILLILITRE, site))
    segment = Segment(
        label="Lungs",
        category=ANATOMICAL_STRUCTURE,
        type=LUNG,
        mask=mask,
        description="Lungs below threshold, outside air and central airways removed",
    )
    summary = f"Lung volume {volume_ml:.0f} mL, LAA-950 {laa:.1f} %, Perc15 {perc15:.0f} HU"
    if not sides:
        summary += " (lungs not separated: no left/right volumes)"
    return ModelOutput(measurements=measurements, segments=[segment], summary=summary)


def segment_lungs(
    volume: Volume, parameters: LungParameters | None = None
) -> tuple[BoolArray, list[BoolArray]]:
    """The lung mask (vessels filled) and the mask of each kept lung component."""
    parameters = parameters or LungParameters()
    spacing = volume.spacing
    air = volume.voxels < parameters.threshold_hu
    slice_labels, count = ndimage.label(air, structure=IN_PLANE)
    outside = np.zeros(count + 1, dtype=bool)
    outside[border_labels(slice_labels)] = True
    outside[0] = True
    inside = ~outside[slice_labels]
    if parameters.remove_airways:
        cranial = _cranial_index(volume)
        if cranial is not None:
            airway = _track_airway(
                slice_labels, outside, inside, cranial, spacing,
                parameters.airway_max_area_mm2,
            )  # fmt: skip
            inside &= ~airway
    del slice_labels
    components, count = ndimage.label(inside)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:] * volume.voxel_volume_ml
    order = np.argsort(sizes)[::-1]
    kept = [int(i) + 1 for i in order[:2] if sizes[i] >= parameters.min_lung_ml]
    if not kept:
        largest = float(sizes.max()) if sizes.size else 0.0
        raise ValueError(
            f"no lung found: the largest enclosed air region is {largest:.0f} mL "
            f"(at least {parameters.min_lung_ml:g} mL needed); is this a chest CT?"
        )
    if len(kept) == 2 and sizes[kept[1] - 1] < parameters.second_lung_ratio * sizes[kept[0] - 1]:
        kept = kept[:1]
    lungs = [fill_holes_per_slice(components == label) for label in kept]
    mask = lungs[0] if len(lungs) == 1 else lungs[0] | lungs[1]
    return mask, lungs


def _check_volume(volume: Volume) -> None:
    if volume.is_2d or volume.shape[0] < 2:
        raise ValueError("ct-lung needs a CT volume, not a single image")
    if not volume.rescaled:
        raise ValueError("ct-lung needs Hounsfield units: enable rescale in the manifest")


def _cranial_index(volume: Volume) -> int | None:
    """The slice nearest the head (LPS +z), or None for a non-axial series."""
    normal_z = volume.normal[2]
    if abs(normal_z) < 0.5:
        return None
    return volume.shape[0] - 1 if normal_z > 0 else 0


def _track_airway(
    slice_labels: LabelArray,
    outside: BoolArray,
    inside: BoolArray,
    cranial: int,
    spacing: tuple[float, float, float],
    max_area_mm2: float,
) -> BoolArray:
    """Trachea and main bronchi: small midline air followed from the cranial slice."""
    pixel_mm2 = spacing[1] * spacing[2]
    areas = np.bincount(slice_labels.ravel()) * pixel_mm2
    airway = np.zeros(inside.shape, dtype=bool)
    first = slice_labels[cranial]
    body_columns = np.nonzero((~outside[first]).any(axis=0))[0]
    if body_columns.size == 0:
        return airway
    middle = (body_columns[0] + body_columns[-1]) / 2.0
    half_band = 0.15 * (body_columns[-1] - body_columns[0])
    current = []
    for label in np.unique(first[inside[cranial]]):
        columns = np.nonzero(first == label)[1]
        if areas[label] <= max_area_mm2 and abs(columns.mean() - middle) <= half_band:
            current.append(int(label))
    step = -1 if cranial > 0 else 1
    index = cranial
    while current:
        layer = np.isin(slice_labels[index], current)
        airway[index] = layer
        index += step
        if not 0 <= index < inside.shape[0]:
            break
        below = np.unique(slice_labels[index][layer & inside[index]])
        current = [int(label) for label in below if label and areas[label] <= max_area_mm2]
    return airway


def _sides(volume: Volume, lungs: list[BoolArray]) -> list[tuple[Code, int]]:
    """(right or left lung, voxel count) of two separated lungs, from their centroid's
    patient x (LPS: +x is the patient's left); empty for a single component."""
    if len(lungs) != 2:
        return []
    affine = volume.affine()
    located = []
    for lung in lungs:
        slice_, row, column = (float(axis.mean()) for axis in np.nonzero(lung))
        x = float((affine @ np.array([column, row, slice_, 1.0]))[0])
        located.append((x, int(np.count_nonzero(lung))))
    located.sort()
    return [(RIGHT_LUNG, located[0][1]), (LEFT_LUNG, located[1][1])]
