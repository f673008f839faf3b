"""Server side: MLServer models the KServe runner test talks to (run by MLServer, in its
own virtualenv; never imported by the archive).

``mean-hu``: the mean Hounsfield unit of the volume it is sent, a probability that rises
with it (logistic around ``threshold_hu``), and the length of the ``patient_name`` bytes
it was sent, so the test can prove what left the archive was de-identified.
``slow``: answers after ``delay_seconds``, for the client's timeout.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


def _extra(model: MLModel) -> dict[str, object]:
    parameters = model.settings.parameters
    return dict(parameters.extra or {}) if parameters is not None else {}


class MeanHuModel(MLModel):
    async def load(self) -> bool:
        self.threshold_hu = float(_extra(self).get("threshold_hu", -500.0))
        self.scale_hu = float(_extra(self).get("scale_hu", 50.0))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensors = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        volume = tensors["volume"].astype(np.float64)
        mean_hu = float(volume.mean())
        probability = 1.0 / (1.0 + math.exp(-(mean_hu - self.threshold_hu) / self.scale_hu))
        name_length = int(tensors["patient_name"].size) if "patient_name" in tensors else -1
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output("mean_hu", np.array([mean_hu], dtype=np.float64)),
                NumpyCodec.encode_output("probability", np.array([probability], dtype=np.float32)),
                NumpyCodec.encode_output(
                    "patient_name_length", np.array([name_length], dtype=np.int32)
                ),
                NumpyCodec.encode_output("shape", np.array(volume.shape, dtype=np.int64)),
            ],
        )


class SlowModel(MLModel):
    async def load(self) -> bool:
        self.delay_seconds = float(_extra(self).get("delay_seconds", 5.0))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await asyncio.sleep(self.delay_seconds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("done", np.array([1], dtype=np.int32))],
        )
