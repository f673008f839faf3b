"""Build the runner a manifest asks for.

The orchestrator calls :func:`build_runner` once per job with whether it granted the job
a GPU (``gpu_available``); the manifest's ``resources.device`` says whether the model
wants one. Everything that can be wrong with a model's packaging (a missing artefact, an
entry point that does not import, PyTorch not installed) surfaces here as a
:class:`~openvna.ai.errors.ManifestError`, before any input is prepared.
"""

from __future__ import annotations

from pathlib import Path

from openvna.ai.errors import ManifestError
from openvna.ai.manifest import Device, ModelManifest, RuntimeKind
from openvna.ai.runners.base import Runner
from openvna.ai.runners.loading import load_adapter, load_entrypoint


def wants_gpu(manifest: ModelManifest, *, gpu_available: bool) -> bool:
    """True when the model asks for a GPU (``gpu`` or ``auto``) and one was granted.

    A ``gpu`` model without a GPU still runs, on CPU: slower, never silently skipped.
    """
    return gpu_available and manifest.resources.device in (Device.GPU, Device.AUTO)


def build_runner(manifest: ModelManifest, *, gpu_available: bool) -> Runner:
    """A ready-to-call runner for ``manifest``.

    Raises
    ------
    ManifestError
        The model cannot be built (missing artefact or module, optional runtime absent,
        or kind ``external``, whose jobs an outside AI engine claims through UPS).
    """
    runtime = manifest.runtime
    base_dir = manifest.base_dir
    use_gpu = wants_gpu(manifest, gpu_available=gpu_available)
    if runtime.kind is RuntimeKind.PYTHON:
        from openvna.ai.runners.python import PythonRunner

        return PythonRunner(load_entrypoint(_required(runtime.entrypoint), base_dir=base_dir))
    if runtime.kind is RuntimeKind.ONNX:
        from openvna.ai.runners.onnx import OnnxRunner

        return OnnxRunner(
            _artifact(manifest),
            load_adapter(_required(runtime.adapter), base_dir=base_dir),
            use_gpu=use_gpu,
        )
    if runtime.kind is RuntimeKind.TORCHSCRIPT:
        from openvna.ai.runners.torchscript import TorchScriptRunner

        return TorchScriptRunner(
            _artifact(manifest),
            load_adapter(_required(runtime.adapter), base_dir=base_dir),
            use_gpu=use_gpu,
        )
    if runtime.kind is RuntimeKind.KSERVE:
        from openvna.ai.runners.kserve import KServeRunner

        try:
            return KServeRunner(
                _required(runtime.url),
                _required(runtime.model_name),
                load_adapter(_required(runtime.adapter), base_dir=base_dir),
                model_version=runtime.model_version,
                timeout_seconds=manifest.resources.timeout_seconds,
                deidentify=runtime.deidentify,
            )
        except ValueError as error:
            raise ManifestError(f"{manifest.name}: {error}") from error
    raise ManifestError(
        f"{manifest.name}: runtime kind {runtime.kind.value!r} has no in-archive runner; "
        "its jobs are claimed by an outside AI engine"
    )


def _required(value: str | None) -> str:
    # The manifest validator already guarantees these per kind; this narrows the type.
    if not value:
        raise ManifestError("manifest runtime is incomplete")
    return value


def _artifact(manifest: ModelManifest) -> Path:
    path = manifest.artifact_path()
    if path is None or not path.is_file():
        raise ManifestError(f"{manifest.name}: model artefact {path} does not exist")
    return path
