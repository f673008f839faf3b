"""Model runners: reference loading, python/onnx/torchscript runners, the factory, the
KServe tensor codec and the de-identification hook. The ONNX example model is run end
to end on fresh synthetic volumes. KServe against a real server: tests/integration."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from openvna.ai.errors import ManifestError, ModelFailedError, RemoteInferenceError
from openvna.ai.inputs import ModelInput, SourceFrame, Volume
from openvna.ai.manifest import ModelManifest, load_manifest, manifest_from_dict
from openvna.ai.models.onnx_example.adapter import PULMONARY_NODULE
from openvna.ai.models.onnx_example.synthetic import synthetic_chest
from openvna.ai.outputs import Finding, ModelOutput, validate_output
from openvna.ai.privacy import deidentify_input
from openvna.ai.runners.base import Tensors
from openvna.ai.runners.factory import build_runner, wants_gpu
from openvna.ai.runners.kserve import KServeRunner, decode_tensor, encode_tensor
from openvna.ai.runners.loading import load_adapter, load_entrypoint, load_reference
from openvna.ai.runners.onnx import CPU_PROVIDER, CUDA_PROVIDER, OnnxRunner, choose_providers
from openvna.ai.runners.python import PythonRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "openvna/ai/models/onnx_example/manifest.toml"


def small_volume(voxels: np.ndarray | None = None) -> Volume:
    voxels = np.zeros((2, 4, 4), np.float32) if voxels is None else voxels.astype(np.float32)
    header = Dataset()
    header.PatientName = "DOE^JANE"
    header.PatientID = "MRN-123"
    return Volume(
        voxels=voxels,
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        modality="CT",
        frame_of_reference_uid="1.2.3.5",
        sources=[SourceFrame(f"1.2.3.4.{i}", "1.2.840.10008.5.1.4.1.1.2") for i in range(2)],
        datasets=[header],
    )


def write_module(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def python_manifest(entrypoint: str, base_dir: Path | None = None, **runtime: Any) -> ModelManifest:
    return manifest_from_dict(
        {
            "name": "test-model",
            "version": "1",
            "runtime": {"kind": "python", "entrypoint": entrypoint, **runtime},
        },
        base_dir=base_dir,
    )


# --- loading ---------------------------------------------------------------------------


def test_load_reference_from_installed_module() -> None:
    assert load_reference("openvna.ai.outputs:validate_output") is validate_output


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("openvna.no_such_module:run", "no module named 'openvna.no_such_module'"),
        ("openvna.ai.outputs:no_such_function", "has no attribute 'no_such_function'"),
        ("no_colon", "is not 'module:attribute'"),
    ],
)
def test_load_reference_failures_are_manifest_errors(reference: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load_reference(reference)


def test_module_beside_manifest_wins_and_folders_do_not_collide(tmp_path: Path) -> None:
    for label in ("first", "second"):
        write_module(tmp_path / label, "adapter", f"MODEL = {label!r}\n")
    first = load_reference("adapter:MODEL", base_dir=tmp_path / "first")
    second = load_reference("adapter:MODEL", base_dir=tmp_path / "second")
    assert (first, second) == ("first", "second")
    assert "adapter" not in sys.modules  # nothing leaked under the bare name


def test_module_raising_on_import_is_reported(tmp_path: Path) -> None:
    write_module(tmp_path, "broken", "raise RuntimeError('weights missing')\n")
    with pytest.raises(ManifestError, match="RuntimeError: weights missing"):
        load_reference("broken:run", base_dir=tmp_path)


def test_missing_dependency_of_model_module_is_named(tmp_path: Path) -> None:
    write_module(tmp_path, "needs", "import openvna_not_installed_dependency\n")
    with pytest.raises(ManifestError, match="missing module 'openvna_not_installed_dependency'"):
        load_reference("needs:run", base_dir=tmp_path)


def test_adapter_class_is_instantiated_and_checked(tmp_path: Path) -> None:
    write_module(
        tmp_path,
        "adapters",
        """
        class Good:
            def to_tensors(self, model_input): return {}
            def from_tensors(self, tensors, model_input): return None
        class Half:
            def to_tensors(self, model_input): return {}
        """,
    )
    assert type(load_adapter("adapters:Good", base_dir=tmp_path)).__name__ == "Good"
    with pytest.raises(ManifestError, match="has no from_tensors method"):
        load_adapter("adapters:Half", base_dir=tmp_path)
    with pytest.raises(ManifestError, match="not callable"):
        load_entrypoint("openvna.ai.outputs:PERCENT")


# --- python runner -----------------------------------------------------------------------


def test_python_runner_returns_the_model_output(tmp_path: Path) -> None:
    write_module(
        tmp_path,
        "mean_model",
        """
        from openvna.ai.outputs import ModelOutput
        def analyse(model_input):
            return ModelOutput(priority=float(model_input.volume.voxels.mean()))
        """,
    )
    runner = build_runner(python_manifest("mean_model:analyse", tmp_path), gpu_available=False)
    assert isinstance(runner, PythonRunner)
    output = runner.run(ModelInput(small_volume(np.full((2, 4, 4), 0.25))))
    assert output.priority == pytest.approx(0.25)


def test_python_runner_wraps_model_exceptions_with_cause() -> None:
    def failing(model_input: ModelInput) -> ModelOutput:
        raise ValueError("no lungs found")

    with pytest.raises(ModelFailedError, match=r"^ValueError: no lungs found$") as caught:
        PythonRunner(failing).run(ModelInput(small_volume()))
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.transient


def test_python_runner_passes_classified_errors_through() -> None:
    def remote(model_input: ModelInput) -> ModelOutput:
        raise RemoteInferenceError("server down")

    with pytest.raises(RemoteInferenceError, match="server down"):
        PythonRunner(remote).run(ModelInput(small_volume()))


# --- factory -----------------------------------------------------------------------------


def test_factory_rejects_external_and_missing_artefacts(tmp_path: Path) -> None:
    external = manifest_from_dict({"name": "ext", "version": "1", "runtime": {"kind": "external"}})
    with pytest.raises(ManifestError, match="outside AI engine"):
        build_runner(external, gpu_available=False)
    onnx = manifest_from_dict(
        {
            "name": "gone",
            "version": "1",
            "runtime": {"kind": "onnx", "artifact": "model.onnx", "adapter": "a:B"},
        },
        base_dir=tmp_path,
    )
    with pytest.raises(ManifestError, match=r"model artefact .*model.onnx does not exist"):
        build_runner(onnx, gpu_available=True)


@pytest.mark.parametrize(
    ("device", "granted", "expected"),
    [("cpu", True, False), ("gpu", True, True), ("auto", True, True), ("gpu", False, False)],
)
def test_gpu_is_used_only_when_wanted_and_granted(
    device: str, granted: bool, expected: bool
) -> None:
    manifest = manifest_from_dict(
        {
            "name": "m",
            "version": "1",
            "runtime": {"kind": "external"},
            "resources": {"device": device},
        }
    )
    assert wants_gpu(manifest, gpu_available=granted) is expected


# --- onnx --------------------------------------------------------------------------------


def test_provider_choice() -> None:
    both = [CUDA_PROVIDER, CPU_PROVIDER]
    assert choose_providers(use_gpu=True, available=both) == both
    assert choose_providers(use_gpu=False, available=both) == [CPU_PROVIDER]
    assert choose_providers(use_gpu=True, available=[CPU_PROVIDER]) == [CPU_PROVIDER]


def test_onnx_example_model_answers_right_on_fresh_volumes() -> None:
    manifest = load_manifest(EXAMPLE)
    runner = build_runner(manifest, gpu_available=False)
    assert isinstance(runner, OnnxRunner)
    assert runner.providers == [CPU_PROVIDER]
    assert 1 <= runner.intra_op_threads <= 2
    right = 0
    seeds = range(200_000, 200_010)  # never used in training (seeds < 100000)
    for seed in seeds:
        volume, nodule = synthetic_chest(seed, nodule=seed % 2 == 1)
        model_input = ModelInput(volume, parameters=manifest.runtime.parameters)
        output = validate_output(runner.run(model_input), manifest.outputs, volume.shape)
        (finding,) = output.findings
        assert finding.finding == PULMONARY_NODULE
        assert output.priority == finding.probability
        right += finding.present == (nodule is not None)
    assert right >= 9, f"{right}/10 right on seeds {seeds}"


def test_onnx_runner_classifies_adapter_and_inference_failures(tmp_path: Path) -> None:
    model = EXAMPLE.parent / "model.onnx"

    class Adapter:
        def __init__(self, tensors: Tensors) -> None:
            self.tensors = tensors

        def to_tensors(self, model_input: ModelInput) -> Tensors:
            return self.tensors

        def from_tensors(self, tensors: Tensors, model_input: ModelInput) -> ModelOutput:
            return ModelOutput()

    model_input = ModelInput(small_volume())
    with pytest.raises(ModelFailedError, match="no tensor for model input"):
        OnnxRunner(model, Adapter({"wrong": np.zeros(1, np.float32)})).run(model_input)
    with pytest.raises(ModelFailedError, match=r"^inference: "):
        OnnxRunner(model, Adapter({"slices": np.zeros((4, 4), np.float32)})).run(model_input)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ManifestError, match="cannot be loaded"):
        OnnxRunner(garbage, Adapter({}))


# --- torchscript -------------------------------------------------------------------------


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        message = "torch is not installed (pip install torch==2.13.0: the torch extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return torch


class SumAdapter:
    output_names = ("total", "peak")

    def to_tensors(self, model_input: ModelInput) -> Tensors:
        return {"volume": model_input.volume.voxels, "scale": np.asarray([2.0], np.float32)}

    def from_tensors(self, tensors: Tensors, model_input: ModelInput) -> ModelOutput:
        return ModelOutput(
            findings=[Finding(PULMONARY_NODULE, present=True, probability=float(tensors["peak"]))],
            summary=f"{float(tensors['total']):.1f}",
        )


def test_torchscript_runner_runs_a_scripted_module(tmp_path: Path) -> None:
    torch = require_torch()

    class Model(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, volume: Any, scale: Any) -> tuple[Any, Any]:
            return (volume.sum() * scale[0], volume.max())

    artifact = tmp_path / "model.pt"
    example = (torch.zeros(2, 4, 4), torch.ones(1))
    torch.jit.save(torch.jit.trace(Model(), example), str(artifact))
    manifest = manifest_from_dict(
        {
            "name": "ts",
            "version": "1",
            "runtime": {
                "kind": "torchscript",
                "artifact": "model.pt",
                "adapter": f"{__name__}:SumAdapter",
            },
            "resources": {"device": "auto"},
        },
        base_dir=tmp_path,
    )
    runner = build_runner(manifest, gpu_available=False)
    voxels = np.zeros((2, 4, 4), np.float32)
    voxels[1, 2, 3] = 0.75
    voxels[0, 0, 0] = 0.5
    output = runner.run(ModelInput(small_volume(voxels)))
    assert output.summary == "2.5"  # (0.75 + 0.5) * 2
    assert output.findings[0].probability == pytest.approx(0.75)


def test_torchscript_without_torch_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "model.pt").write_bytes(b"")
    manifest = manifest_from_dict(
        {
            "name": "ts",
            "version": "1",
            "runtime": {"kind": "torchscript", "artifact": "model.pt", "adapter": "a:B"},
        },
        base_dir=tmp_path,
    )
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    write_module(
        tmp_path,
        "a",
        "class B:\n    def to_tensors(self, i): ...\n    def from_tensors(self, t, i): ...\n",
    )
    with pytest.raises(ManifestError, match=r"openvna\[torch\] extra"):
        build_runner(manifest, gpu_available=False)


# --- kserve codec and connection errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        ("float32", "FP32"),
        ("int16", "INT16"),
        ("uint8", "UINT8"),
        ("bool", "BOOL"),
        ("float64", "FP64"),
        ("int64", "INT64"),
    ],
)
def test_tensor_codec_round_trip(dtype: str, datatype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    encoded = encode_tensor("volume", array)
    assert encoded["datatype"] == datatype
    assert encoded["shape"] == [2, 3, 4]
    assert encoded["data"][:5] == array.ravel().tolist()[:5]  # row-major
    name, decoded = decode_tensor(encoded)
    assert name == "volume"
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, array)


def test_tensor_codec_rejects_bad_tensors() -> None:
    with pytest.raises(ValueError, match="KServe v2 lacks"):
        encode_tensor("x", np.zeros(2, np.complex64))
    with pytest.raises(ValueError, match="3 values for shape"):
        decode_tensor({"name": "y", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]})
    nested = decode_tensor(
        {"name": "z", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}
    )[1]
    assert nested.tolist() == [[1, 2], [3, 4]]


def test_kserve_connection_refused_names_the_url() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = KServeRunner(f"http://127.0.0.1:{port}", "m", SumAdapter(), timeout_seconds=2)
    with pytest.raises(RemoteInferenceError, match=rf"127.0.0.1:{port}/v2/models/m.*refused"):
        runner.run(ModelInput(small_volume()))


# --- de-identification hook ---------------------------------------------------------------


def test_deidentify_input_strips_identifiers_and_leaves_original() -> None:
    volume, _ = synthetic_chest(3, nodule=False, slices=2)
    header = volume.datasets[0]
    header.OtherPatientIDs = "OLD-1"
    header.add_new(0x00091001, "LO", "private secret")
    item = Dataset()
    item.PatientName = "NESTED^NAME"
    item.InstitutionName = "Nested Hospital"
    header.ReferencedStudySequence = DicomSequence([item])
    original_name = str(header.PatientName)
    model_input = ModelInput(volume, parameters={"threshold": 0.4})

    clean = deidentify_input(model_input)

    scrubbed = clean.volume.datasets[0]
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
    ):
        assert keyword in scrubbed and not scrubbed.get(keyword), keyword
    for keyword in ("OtherPatientIDs", "InstitutionName", "PatientAge"):
        assert keyword not in scrubbed, keyword
    assert 0x00091001 not in scrubbed
    nested = scrubbed.ReferencedStudySequence[0]
    assert not nested.PatientName and "InstitutionName" not in nested
    assert scrubbed.PatientIdentityRemoved == "YES"
    assert scrubbed.StudyInstanceUID == header.StudyInstanceUID  # UIDs kept by this hook
    assert clean.volume.voxels is volume.voxels
    assert clean.parameters == {"threshold": 0.4}
    assert str(header.PatientName) == original_name and "InstitutionName" in header
