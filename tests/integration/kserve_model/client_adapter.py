"""Archive side: the tensor adapter of the ``mean-hu`` test model (loaded from beside
the test's manifest, as a model folder's adapter would be).

Sends the volume as INT16 Hounsfield units and the first header's Patient's Name as
UINT8 bytes (a stand-in for any header value an adapter might forward); reads back the
mean HU and probability as a coded Finding plus a measurement.
"""

from __future__ import annotations

import numpy as np

from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import (
    HOUNSFIELD_UNIT,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    Code,
    Finding,
    Measurement,
    ModelOutput,
)
from openvna.ai.runners.base import Tensors

MEAN_DENSITY = Code("112031", "DCM", "Attenuation Coefficient")


class MeanHuAdapter:
    def to_tensors(self, model_input: ModelInput) -> Tensors:
        volume = model_input.volume
        name = str(volume.datasets[0].get("PatientName", "") or "").encode()
        return {
            "volume": np.rint(volume.voxels).astype(np.int16),
            "patient_name": np.frombuffer(name, dtype=np.uint8).copy(),
        }

    def from_tensors(self, tensors: Tensors, model_input: ModelInput) -> ModelOutput:
        # MLServer's NumpyCodec returns a 1-D array as shape [n, 1]: flatten first.
        probability = float(np.ravel(tensors["probability"])[0])
        name_length = int(np.ravel(tensors["patient_name_length"])[0])
        shape = tuple(int(size) for size in np.ravel(tensors["shape"]))
        return ModelOutput(
            findings=[
                Finding(
                    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                    present=probability >= 0.5,
                    probability=probability,
                    description=f"name bytes seen by server: {name_length}; shape {shape}",
                )
            ],
            measurements=[
                Measurement(MEAN_DENSITY, float(np.ravel(tensors["mean_hu"])[0]), HOUNSFIELD_UNIT)
            ],
            priority=probability,
        )
