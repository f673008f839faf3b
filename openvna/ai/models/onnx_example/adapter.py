"""Tensor adapter of the ONNX example model (``ct-nodule-example``).

Input: every slice of the CT volume, in Hounsfield units, clipped to a lung window
(-1000..400 HU), scaled to 0..1 and resized to the 64x64 matrix the network was trained
on -> tensor ``slices`` of shape (slices, 1, 64, 64), float32.

Output: ``logit`` (slices, 1), one score per slice. The study's probability is the
highest slice probability (a nodule is usually on a few slices only); it becomes a
coded Finding (SNOMED CT 786838002 "Pulmonary nodule", site Lung) and the priority.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import LUNG, Code, Finding, ModelOutput
from openvna.ai.runners.base import Tensors, as_float32

MATRIX: Final = 64
WINDOW_HU: Final = (-1000.0, 400.0)
PULMONARY_NODULE: Final = Code("786838002", "SCT", "Pulmonary nodule")


def slices_tensor(voxels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(slices, rows, columns) HU -> (slices, 1, 64, 64) window-scaled float32."""
    low, high = WINDOW_HU
    scaled = (np.clip(voxels.astype(np.float32), low, high) - low) / (high - low)
    _, rows, columns = scaled.shape
    if (rows, columns) != (MATRIX, MATRIX):
        scaled = ndimage.zoom(scaled, (1.0, MATRIX / rows, MATRIX / columns), order=1)
    return as_float32(scaled[:, np.newaxis, :, :])


class NoduleAdapter:
    """Volume -> per-slice tensor; per-slice logits -> Finding + priority."""

    threshold: float = 0.5

    def to_tensors(self, model_input: ModelInput) -> Tensors:
        volume = model_input.volume
        if volume.modality != "CT" or not volume.rescaled:
            raise ValueError(f"needs a rescaled CT volume, got {volume.modality}")
        return {"slices": slices_tensor(volume.voxels)}

    def from_tensors(self, tensors: Tensors, model_input: ModelInput) -> ModelOutput:
        threshold = float(model_input.parameters.get("threshold", self.threshold))
        logits = np.asarray(tensors["logit"], dtype=np.float64).reshape(-1)
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        best = int(np.argmax(probabilities))
        probability = float(probabilities[best])
        present = probability >= threshold
        where = f" (most likely on slice {best + 1} of {len(probabilities)})" if present else ""
        return ModelOutput(
            findings=[
                Finding(
                    finding=PULMONARY_NODULE,
                    present=present,
                    probability=probability,
                    finding_site=LUNG,
                    description=f"synthetic-data demonstration model{where}",
                )
            ],
            priority=probability,
            summary=(
                f"Pulmonary nodule {'suspected' if present else 'not found'}: "
                f"p={probability:.2f}{where}. Demonstration model, not for diagnosis."
            ),
        )
