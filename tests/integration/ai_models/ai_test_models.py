"""Small Python models for the orchestration tests: one that works and one for each way
a model can fail (raise, hang, return garbage, queue behind a slow one)."""

from __future__ import annotations

import time

import numpy as np

from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import (
    ANATOMICAL_STRUCTURE,
    HOUNSFIELD_UNIT,
    MILLILITRE,
    Code,
    Finding,
    Measurement,
    ModelOutput,
    Segment,
)

DENSE = Code("dense-region", "99OPENVNATEST", "Dense region")
MEAN_DENSITY = Code("mean-density", "99OPENVNATEST", "Mean density")
VOLUME = Code("118565006", "SCT", "Volume")


def dense_region(model_input: ModelInput) -> ModelOutput:
    """Voxels above ``threshold`` HU (default 100) as a segment, with their volume, the
    mean density of the volume, a finding and a priority."""
    volume = model_input.native or model_input.volume
    threshold = float(model_input.parameters.get("threshold", 100.0))
    mask = volume.voxels > threshold
    region_ml = float(mask.sum()) * volume.voxel_volume_ml
    return ModelOutput(
        findings=[Finding(DENSE, present=bool(mask.any()), probability=0.9, segment_number=1)],
        measurements=[
            Measurement(MEAN_DENSITY, float(np.mean(volume.voxels)), HOUNSFIELD_UNIT),
            Measurement(VOLUME, region_ml, MILLILITRE, segment_number=1),
        ],
        segments=[Segment("Dense", ANATOMICAL_STRUCTURE, DENSE, mask)],
        priority=0.8,
        summary=f"{region_ml:.1f} ml above {threshold:g} HU",
    )


def raises(model_input: ModelInput) -> ModelOutput:
    raise RuntimeError("the model crashed on purpose")


def hangs(model_input: ModelInput) -> ModelOutput:
    time.sleep(600)
    return ModelOutput()


def malformed(model_input: ModelInput) -> ModelOutput:
    return ModelOutput(
        segments=[Segment("Wrong", ANATOMICAL_STRUCTURE, DENSE, np.zeros((2, 2, 2), bool))]
    )


def slow(model_input: ModelInput) -> ModelOutput:
    time.sleep(float(model_input.parameters.get("seconds", 3.0)))
    return ModelOutput(priority=0.1)


PROJECTION = Code("projection-seen", "99OPENVNATEST", "Projection image seen")


def projection(model_input: ModelInput) -> ModelOutput:
    """One finding per image, saying what the model was given."""
    volume = model_input.volume
    assert volume.is_2d and volume.shape[0] == 1
    return ModelOutput(
        findings=[
            Finding(
                PROJECTION,
                present=True,
                probability=1.0,
                description=f"{volume.sources[0].sop_instance_uid} {volume.shape[1:]} "
                f"spacing {volume.spacing[1]:.3f}",
            )
        ],
        priority=0.3,
    )


class NoTensors:
    """Adapter of the KServe model whose server is down: never gets to run."""

    def to_tensors(self, model_input: ModelInput) -> dict[str, np.ndarray]:
        return {"input": np.zeros((1,), np.float32)}

    def from_tensors(self, tensors: dict[str, np.ndarray], model_input: ModelInput) -> ModelOutput:
        return ModelOutput()
