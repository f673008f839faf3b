"""The ``onnx`` runtime: an ONNX model run in-process by ONNX Runtime.

One :class:`onnxruntime.InferenceSession` is built per runner (loading and optimising a
graph costs far more than one inference). The CUDA execution provider is put first only
when the manifest asks for ``gpu``/``auto``, the orchestrator granted a GPU and this
ONNX Runtime build has CUDA; otherwise the CPU provider runs alone. Intra-op threads are
bounded (:data:`MAX_INTRA_OP_THREADS`) because the archive process also decodes, stores
and serves images: AI must never take every core.

The manifest's adapter turns the :class:`~openvna.ai.inputs.ModelInput` into named input
tensors and the named output tensors into a :class:`~openvna.ai.outputs.ModelOutput`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime  # type: ignore[import-untyped, unused-ignore]

from openvna.ai.errors import ManifestError, ModelFailedError
from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import ModelOutput
from openvna.ai.runners.base import TensorAdapter, Tensors
from openvna.ai.runners.python import model_failures

logger = logging.getLogger(__name__)

MAX_INTRA_OP_THREADS = 2
"""Upper bound on the threads one ONNX inference uses inside an operator."""

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def choose_providers(*, use_gpu: bool, available: list[str] | None = None) -> list[str]:
    """Execution providers in preference order: CUDA then CPU when ``use_gpu`` and CUDA
    is in this build, else CPU alone."""
    available = onnxruntime.get_available_providers() if available is None else available
    if use_gpu and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if use_gpu:
        logger.warning("a GPU was requested but ONNX Runtime has no %s; using CPU", CUDA_PROVIDER)
    return [CPU_PROVIDER]


class OnnxRunner:
    """Runs one ONNX model file with its adapter."""

    def __init__(
        self,
        artifact: Path,
        adapter: TensorAdapter,
        *,
        use_gpu: bool = False,
        intra_op_threads: int = MAX_INTRA_OP_THREADS,
    ) -> None:
        if not artifact.is_file():
            raise ManifestError(f"ONNX model file {artifact} does not exist")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, min(intra_op_threads, os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = onnxruntime.InferenceSession(
                str(artifact), sess_options=options, providers=choose_providers(use_gpu=use_gpu)
            )
        except Exception as error:  # onnxruntime raises its own untyped Fail/InvalidGraph
            raise ManifestError(
                f"ONNX model {artifact} cannot be loaded: {type(error).__name__}: {error}"
            ) from error
        self._adapter = adapter
        self._input_names = [node.name for node in self._session.get_inputs()]
        self._output_names = [node.name for node in self._session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, best first."""
        return list(self._session.get_providers())

    @property
    def intra_op_threads(self) -> int:
        """Threads one operator may use (bounded by :data:`MAX_INTRA_OP_THREADS`)."""
        return int(self._session.get_session_options().intra_op_num_threads)

    def run(self, model_input: ModelInput) -> ModelOutput:
        with model_failures("adapter.to_tensors"):
            feeds = self._adapter.to_tensors(model_input)
        missing = [name for name in self._input_names if name not in feeds]
        if missing:
            raise ModelFailedError(
                f"adapter.to_tensors gave no tensor for model input(s) {', '.join(missing)}; "
                f"it gave {', '.join(sorted(feeds)) or 'none'}"
            )
        with model_failures("inference"):
            results = self._session.run(
                self._output_names, {name: feeds[name] for name in self._input_names}
            )
        outputs: Tensors = dict(zip(self._output_names, results, strict=True))
        with model_failures("adapter.from_tensors"):
            return self._adapter.from_tensors(outputs, model_input)
