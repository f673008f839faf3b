"""What a model returns: typed findings, measurements, segments, derived images and a
priority score, checked against the model's manifest and input before anything is
written back.

Concepts are coded (SNOMED CT ``SCT``, DICOM ``DCM``, UCUM units ``UCUM``) so the SR and
FHIR documents built from them are machine-readable. Masks are in the geometry of the
*native* volume (``ModelInput.native`` or, when no pre-processing changed the geometry,
``ModelInput.volume``): same ``[slice, row, column]`` shape, so every SEG frame lies on
the source image it references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from openvna.ai.errors import MalformedOutputError
from openvna.ai.manifest import OutputKinds


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 8.8): value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


# Frequently used codes, so models need not spell them out.
MILLILITRE = Code("ml", "UCUM", "milliliter")
PERCENT = Code("%", "UCUM", "percent")
HOUNSFIELD_UNIT = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
LUNG = Code("39607008", "SCT", "Lung")
BRAIN = Code("12738006", "SCT", "Brain")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
VOLUME = Code("118565006", "SCT", "Volume")
MEAN_ATTENUATION = Code("112181", "DCM", "Mean Attenuation Coefficient")


@dataclass(frozen=True)
class Finding:
    """A qualitative result: ``finding`` is present (or not) with a probability."""

    finding: Code
    present: bool
    probability: float | None = None
    finding_site: Code | None = None
    segment_number: int | None = None
    """1-based index into ModelOutput.segments of the region this finding is about."""
    description: str = ""


@dataclass(frozen=True)
class Measurement:
    """A numeric result with UCUM units, optionally of one segmented region."""

    name: Code
    value: float
    unit: Code
    finding_site: Code | None = None
    segment_number: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Segment:
    """One labelled region: a boolean mask over the native volume."""

    label: str
    category: Code
    type: Code
    mask: npt.NDArray[np.bool_]
    description: str = ""


@dataclass(frozen=True)
class DerivedImage:
    """An image made by the model (a heat map, an annotated key image).

    ``pixels``: 2D (rows, columns) grey or (rows, columns, 3) RGB uint8 for a secondary
    capture; 2D/3D float32 for a parametric map aligned with the native volume.
    """

    label: str
    pixels: npt.NDArray[np.generic]
    kind: Literal["secondary-capture", "parametric-map"] = "secondary-capture"
    source_slice: int | None = None
    """Slice of the native volume this image shows (for its source reference)."""


@dataclass
class ModelOutput:
    findings: list[Finding] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    derived_images: list[DerivedImage] = field(default_factory=list)
    priority: float | None = None
    """0 (routine) to 1 (most urgent): how soon a radiologist should read the study."""
    summary: str = ""

    def is_empty(self) -> bool:
        return not (
            self.findings
            or self.measurements
            or self.segments
            or self.derived_images
            or self.priority is not None
        )


def validate_output(
    output: object, kinds: OutputKinds, native_shape: tuple[int, int, int]
) -> ModelOutput:
    """Return ``output`` when it is a valid result for this manifest and input, else raise
    :class:`MalformedOutputError` naming the first problem."""
    if not isinstance(output, ModelOutput):
        raise MalformedOutputError(f"the model returned {type(output).__name__}, not a ModelOutput")
    declared = {
        "findings": (bool(output.findings), kinds.findings),
        "measurements": (bool(output.measurements), kinds.measurements),
        "segmentation": (bool(output.segments), kinds.segmentation),
        "derived_images": (bool(output.derived_images), kinds.derived_images),
        "priority": (output.priority is not None, kinds.priority),
    }
    for name, (returned, allowed) in declared.items():
        if returned and not allowed:
            raise MalformedOutputError(f"the model returned {name} its manifest does not declare")
    segment_count = len(output.segments)
    for finding in output.findings:
        if not isinstance(finding, Finding):
            raise MalformedOutputError(f"findings holds a {type(finding).__name__}")
        if finding.probability is not None and not 0.0 <= finding.probability <= 1.0:
            raise MalformedOutputError(
                f"probability {finding.probability} of {finding.finding.meaning!r} is outside 0..1"
            )
        _check_segment_reference(finding.segment_number, segment_count)
    for measurement in output.measurements:
        if not isinstance(measurement, Measurement):
            raise MalformedOutputError(f"measurements holds a {type(measurement).__name__}")
        if not math.isfinite(measurement.value):
            raise MalformedOutputError(f"measurement {measurement.name.meaning!r} is not finite")
        _check_segment_reference(measurement.segment_number, segment_count)
    for segment in output.segments:
        if not isinstance(segment, Segment):
            raise MalformedOutputError(f"segments holds a {type(segment).__name__}")
        mask = np.asarray(segment.mask)
        if mask.dtype != np.bool_:
            raise MalformedOutputError(f"mask of segment {segment.label!r} is not boolean")
        if mask.shape != native_shape:
            raise MalformedOutputError(
                f"mask of segment {segment.label!r} has shape {mask.shape}, "
                f"the input volume {native_shape}"
            )
    for image in output.derived_images:
        if not isinstance(image, DerivedImage):
            raise MalformedOutputError(f"derived_images holds a {type(image).__name__}")
        if image.pixels.ndim not in (2, 3):
            raise MalformedOutputError(f"derived image {image.label!r} is not 2D or 3D")
    if output.priority is not None and not (
        isinstance(output.priority, int | float) and 0.0 <= float(output.priority) <= 1.0
    ):
        raise MalformedOutputError(f"priority {output.priority!r} is outside 0..1")
    return output


def _check_segment_reference(number: int | None, count: int) -> None:
    if number is not None and not 1 <= number <= count:
        raise MalformedOutputError(f"segment_number {number} names no returned segment")
