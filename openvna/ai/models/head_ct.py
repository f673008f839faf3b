"""Reference model: hyperdensity triage of non-contrast head CT (suspected haemorrhage).

Acute blood is denser than brain (about 50-90 HU against 20-40 HU), so a cluster of
such voxels inside the brain is a reason to read the study first. Method (classical
image processing, every threshold a parameter):

1. Skull: voxels above ``bone_hu``; its interior is found per slice by filling the
   skull's holes (slices where the skull is not closed, such as the skull base, have
   no interior and are not analysed).
2. Brain: interior voxels within ``brain_low_hu``..``brain_high_hu`` (parenchyma and
   CSF), largest 3D component, holes filled per slice (so denser blood and
   calcifications inside stay in it).
3. Core: brain voxels deeper than ``skull_margin_mm`` from the skull's interior surface
   (3D Euclidean distance in mm). This discards the partial-volume rim next to bone,
   whose values fall in the blood range on every scan.
4. Candidates: core voxels whose in-plane Gaussian-smoothed value
   (``smoothing_mm``, to suppress noise) lies in ``candidate_low_hu``..``candidate_high_hu``;
   3D clusters (26-connectivity) of at least ``min_cluster_ml`` are reported.

The finding is present when the largest cluster reaches ``min_cluster_ml``; its
probability is the transparent heuristic ``V / (V + min_cluster_ml)`` of the largest
cluster's volume V (0.5 at the threshold, 0.9 at nine times it), not a calibrated
probability. Priority: ``0.75 + 0.25 p`` when present, ``0.2 p`` otherwise.

Limits: extra-axial (subdural, epidural) and subarachnoid blood within the skull margin
is missed, as are bleeds in slices with an open skull ring; calcifications and
beam-hardening streaks can cause false positives, iodinated contrast makes the result
meaningless, and chronic (isodense or hypodense) blood is not sought. For triage
research and demonstration, not for diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

from openvna.ai.inputs import ModelInput, Volume
from openvna.ai.models.morphology import fill_holes_per_slice
from openvna.ai.outputs import (
    BRAIN,
    HOUNSFIELD_UNIT,
    MEAN_ATTENUATION,
    MILLILITRE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    VOLUME,
    Code,
    Finding,
    Measurement,
    ModelOutput,
    Segment,
)

__all__ = ["HEMORRHAGE", "INTRACRANIAL_HEMORRHAGE", "HeadParameters", "Triage", "analyse"]

BoolArray = npt.NDArray[np.bool_]

INTRACRANIAL_HEMORRHAGE: Final = Code("1386000", "SCT", "Intracranial hemorrhage")
HEMORRHAGE: Final = Code("50960005", "SCT", "Hemorrhage")


@dataclass(frozen=True)
class HeadParameters:
    """Tunable settings, from the manifest's ``[runtime.parameters]``."""

    bone_hu: float = 300.0
    brain_low_hu: float = 0.0
    brain_high_hu: float = 80.0
    candidate_low_hu: float = 50.0
    candidate_high_hu: float = 90.0
    min_cluster_ml: float = 0.5
    skull_margin_mm: float = 4.0
    smoothing_mm: float = 1.0

    @classmethod
    def from_mapping(cls, parameters: Mapping[str, Any]) -> HeadParameters:
        """Validate ``parameters``; an unknown key or a non-number is an error."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(parameters) - known)
        if unknown:
            raise ValueError(f"unknown head-ct parameters: {', '.join(unknown)}")
        values: dict[str, float] = {}
        for name, value in parameters.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"head-ct parameter {name} must be a number")
            values[name] = float(value)
        result = cls(**values)
        if result.min_cluster_ml <= 0 or result.skull_margin_mm < 0 or result.smoothing_mm < 0:
            raise ValueError("min_cluster_ml must be positive, margins and smoothing >= 0")
        return result


@dataclass(frozen=True)
class Triage:
    """What the detector found, before it is turned into a ModelOutput."""

    candidates: BoolArray
    """Union of the clusters of at least ``min_cluster_ml``."""
    cluster_volumes_ml: list[float]
    """Every cluster, largest first, including those below the threshold."""
    brain_volume_ml: float

    @property
    def largest_ml(self) -> float:
        return self.cluster_volumes_ml[0] if self.cluster_volumes_ml else 0.0


def analyse(model_input: ModelInput) -> ModelOutput:
    """Flag a head CT with an intracranial hyperdense cluster, with its volume and mask.

    Raises
    ------
    ValueError
        If the volume is 2D or not in Hounsfield units, a parameter is invalid, or no
        skull-enclosed brain is found.
    """
    volume = model_input.native or model_input.volume
    parameters = HeadParameters.from_mapping(model_input.parameters)
    if volume.is_2d or volume.shape[0] < 2:
        raise ValueError("head-ct needs a CT volume, not a single image")
    if not volume.rescaled:
        raise ValueError("head-ct needs Hounsfield units: enable rescale in the manifest")
    triage = detect(volume, parameters)
    threshold = parameters.min_cluster_ml
    probability = triage.largest_ml / (triage.largest_ml + threshold)
    present = triage.largest_ml >= threshold
    kept = [v for v in triage.cluster_volumes_ml if v >= threshold]
    total_ml = float(sum(kept))
    finding = Finding(
        finding=INTRACRANIAL_HEMORRHAGE,
        present=present,
        probability=round(probability, 4),
        finding_site=BRAIN,
        segment_number=1 if present else None,
        description=(
            f"{len(kept)} hyperdense cluster(s), largest {triage.largest_ml:.2f} mL"
            if present
            else f"no hyperdense cluster of {threshold:g} mL or more"
        ),
    )
    output = ModelOutput(
        findings=[finding],
        priority=round(0.75 + 0.25 * probability if present else 0.2 * probability, 4),
    )
    if present:
        mean = float(volume.voxels[triage.candidates].mean(dtype=np.float64))
        output.segments.append(
            Segment(
                label="Hyperdense candidates",
                category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                type=HEMORRHAGE,
                mask=triage.candidates,
                description="Intracranial voxels in the acute blood range",
            )
        )
        output.measurements += [
            Measurement(VOLUME, total_ml, MILLILITRE, BRAIN, 1, "Hyperdense volume"),
            Measurement(MEAN_ATTENUATION, mean, HOUNSFIELD_UNIT, BRAIN, 1, "Mean density"),
        ]
        output.summary = f"Suspected intracranial hyperdensity: {total_ml:.1f} mL"
    else:
        output.measurements.append(
            Measurement(VOLUME, 0.0, MILLILITRE, BRAIN, None, "Hyperdense volume")
        )
        output.summary = "No intracranial hyperdense cluster found"
    return output


def detect(volume: Volume, parameters: HeadParameters | None = None) -> Triage:
    """Run steps 1-4 of the method on ``volume`` (HU)."""
    parameters = parameters or HeadParameters()
    hu = volume.voxels
    bone = hu >= parameters.bone_hu
    interior = fill_holes_per_slice(bone) & ~bone
    in_range = interior & (hu >= parameters.brain_low_hu) & (hu <= parameters.brain_high_hu)
    components, count = ndimage.label(in_range)
    if count == 0:
        raise ValueError("no brain inside a closed skull was found; is this a head CT?")
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    brain = fill_holes_per_slice(components == int(sizes.argmax())) & interior
    voxel_ml = volume.voxel_volume_ml
    # from here on, work on the bounding box of the skull's interior with one voxel of
    # margin: it holds the surrounding bone, from which the depth is measured
    box = tuple(
        slice(max(int(axis.min()) - 1, 0), int(axis.max()) + 2) for axis in np.nonzero(interior)
    )
    depth = ndimage.distance_transform_edt(interior[box], sampling=volume.spacing)
    core = brain[box] & (depth > parameters.skull_margin_mm)
    sigma = (0.0, parameters.smoothing_mm / volume.spacing[1],
             parameters.smoothing_mm / volume.spacing[2])  # fmt: skip
    smooth = ndimage.gaussian_filter(hu[box], sigma=sigma) if parameters.smoothing_mm else hu[box]
    hits = core & (smooth >= parameters.candidate_low_hu) & (smooth <= parameters.candidate_high_hu)
    clusters, count = ndimage.label(hits, structure=np.ones((3, 3, 3), dtype=bool))
    volumes = np.bincount(clusters.ravel(), minlength=count + 1)[1:] * voxel_ml
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = volumes >= parameters.min_cluster_ml
    candidates = np.zeros(hu.shape, dtype=bool)
    candidates[box] = keep[clusters]
    return Triage(
        candidates=candidates,
        cluster_volumes_ml=sorted((float(v) for v in volumes), reverse=True),
        brain_volume_ml=float(np.count_nonzero(brain) * voxel_ml),
    )
