"""The ``torchscript`` runtime: a ``torch.jit`` model run in-process by PyTorch.

PyTorch is an optional extra (``pip install 'openvna[torch]'``): it is large, and most
sites run ONNX or remote models. It is imported only when a TorchScript model is built,
and its absence is a :class:`~openvna.ai.errors.ManifestError` that says what to install.

Tensor names: the adapter's input tensors are passed to the module *positionally*, in
the order the adapter returns them. Outputs are named by the module's return value: a
``dict`` keeps its keys; a single tensor or a tuple/list is named by the adapter's
optional ``output_names`` attribute, else ``output`` / ``output_0``, ``output_1``...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openvna.ai.errors import ManifestError, ModelFailedError
from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import ModelOutput
from openvna.ai.runners.base import TensorAdapter, Tensors
from openvna.ai.runners.python import model_failures

MAX_THREADS = 2
"""Upper bound on PyTorch's intra-op threads, as for ONNX: AI never takes every core."""


def import_torch() -> Any:
    """``torch``, or a ManifestError saying how to install it."""
    try:
        import torch
    except ImportError as error:
        raise ManifestError(
            "runtime kind 'torchscript' needs PyTorch, which is not installed: install the "
            "openvna[torch] extra (pip install 'openvna[torch]')"
        ) from error
    return torch


class TorchScriptRunner:
    """Runs one TorchScript file (``torch.jit.save``) with its adapter."""

    def __init__(self, artifact: Path, adapter: TensorAdapter, *, use_gpu: bool = False) -> None:
        torch = import_torch()
        if not artifact.is_file():
            raise ManifestError(f"TorchScript model file {artifact} does not exist")
        self._torch = torch
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        # PyTorch's thread pool is per process; lower it, never raise it.
        limit = max(1, min(MAX_THREADS, os.cpu_count() or 1))
        if torch.get_num_threads() > limit:
            torch.set_num_threads(limit)
        try:
            self._module = torch.jit.load(str(artifact), map_location=self.device)
        except Exception as error:
            raise ManifestError(
                f"TorchScript model {artifact} cannot be loaded: {type(error).__name__}: {error}"
            ) from error
        self._module.eval()
        self._adapter = adapter
        names = getattr(adapter, "output_names", None)
        self._output_names: Sequence[str] | None = list(names) if names is not None else None

    def run(self, model_input: ModelInput) -> ModelOutput:
        torch = self._torch
        with model_failures("adapter.to_tensors"):
            feeds = self._adapter.to_tensors(model_input)
            arguments = [
                torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
                for array in feeds.values()
            ]
        with model_failures("inference"), torch.inference_mode():
            result = self._module(*arguments)
        outputs = self._name_outputs(result)
        with model_failures("adapter.from_tensors"):
            return self._adapter.from_tensors(outputs, model_input)

    def _name_outputs(self, result: Any) -> Tensors:
        torch = self._torch
        if isinstance(result, dict):
            items = list(result.items())
        else:
            values = list(result) if isinstance(result, tuple | list) else [result]
            if self._output_names is not None:
                if len(self._output_names) != len(values):
                    raise ModelFailedError(
                        f"the model returned {len(values)} tensor(s), the adapter names "
                        f"{len(self._output_names)}"
                    )
                names = list(self._output_names)
            elif len(values) == 1:
                names = ["output"]
            else:
                names = [f"output_{index}" for index in range(len(values))]
            items = list(zip(names, values, strict=True))
        tensors: Tensors = {}
        for name, value in items:
            if not isinstance(value, torch.Tensor):
                raise ModelFailedError(f"model output {name!r} is a {type(value).__name__}")
            tensors[str(name)] = value.detach().cpu().numpy()
        return tensors
