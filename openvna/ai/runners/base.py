"""The runner interface: one per runtime kind (python, onnx, torchscript, kserve).

A runner is built once per job from the model's manifest and called with the prepared
input; it returns whatever the model produced, which the orchestrator then checks with
:func:`openvna.ai.outputs.validate_output`. Runners raise the errors of
:mod:`openvna.ai.errors` (``ModelFailedError`` for an exception inside the model,
``RemoteInferenceError`` for a server that is down or answers an error) so each job ends
with a clear, classified reason.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import ModelOutput

Tensors = dict[str, npt.NDArray[Any]]


class Runner(Protocol):
    def run(self, model_input: ModelInput) -> ModelOutput: ...


class TensorAdapter(Protocol):
    """Translation between OpenVNA's typed input/output and a tensor model's tensors.

    Named in a manifest as ``runtime.adapter = "module:object"`` for the onnx,
    torchscript and kserve runtimes; ``object`` is an instance (or a class with no-arg
    constructor) with these two methods.
    """

    def to_tensors(self, model_input: ModelInput) -> Tensors: ...

    def from_tensors(self, tensors: Tensors, model_input: ModelInput) -> ModelOutput: ...


def as_float32(array: npt.ArrayLike) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(array, dtype=np.float32)
