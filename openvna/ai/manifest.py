"""The model plug-in contract: a manifest (TOML) validated here, plus its artefact.

A manifest says what a model is (name, version, intended use), which series it runs on
(input selection), how its input is prepared (pre-processing), what it may return
(output kinds), how it runs (runtime) and with what resources. The orchestrator never
runs a model whose manifest does not validate; a typo in a key is an error, not a
silently ignored setting.

Example (``models/ct-lung/manifest.toml``)::

    name = "ct-lung"
    version = "1.0.0"
    description = "Lung segmentation, lung volume and emphysema index"
    intended_use = "Research and demonstration; not for diagnosis"

    [input]
    modalities = ["CT"]
    min_instances = 20

    [outputs]
    measurements = true
    segmentation = true

    [runtime]
    kind = "python"
    entrypoint = "openvna.ai.models.ct_lung:analyse"

    [resources]
    timeout_seconds = 120
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from openvna.ai.errors import ManifestError

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class InputLevel(StrEnum):
    """What one job of the model receives."""

    SERIES = "series"
    """The whole series as one volume (CT, MR, PET; a single-image series is 1 slice)."""
    IMAGE = "image"
    """Each image of the series on its own (CR, DX, MG): one job per series, the model
    called once per image with a 2D volume, results written per image."""


class InputSelection(BaseModel):
    """Which series the model runs on; every non-empty criterion must match."""

    model_config = ConfigDict(extra="forbid")

    level: InputLevel = InputLevel.SERIES
    modalities: list[str] = Field(default_factory=list, description="Modality (0008,0060)")
    body_parts: list[str] = Field(
        default_factory=list, description="BodyPartExamined (0018,0015); empty: any"
    )
    sop_classes: list[str] = Field(
        default_factory=list, description="SOP Class UIDs; empty: any image storage class"
    )
    series_description: str | None = Field(
        default=None, description="regular expression searched (case-insensitive) in it"
    )
    min_instances: int = Field(default=1, ge=1, description="fewest slices/images")
    max_instances: int | None = Field(default=None, ge=1)
    require_decodable: bool = Field(
        default=True,
        description="skip series whose transfer syntax this archive cannot decode",
    )

    @field_validator("series_description")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"invalid regular expression: {error}") from error
        return value

    @field_validator("modalities", "body_parts")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [value.strip().upper() for value in values]


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")

    center: float
    width: float = Field(gt=0)


class Preprocessing(BaseModel):
    """How the input volume is prepared before the model sees it."""

    model_config = ConfigDict(extra="forbid")

    rescale: bool = Field(
        default=True, description="apply Rescale Slope/Intercept (CT: Hounsfield units)"
    )
    resample_mm: tuple[float, float, float] | None = Field(
        default=None, description="resample to this (slice, row, column) spacing in mm"
    )
    window: Window | None = Field(default=None, description="clip to the window and scale to 0..1")
    resize: tuple[int, int] | None = Field(
        default=None, description="resize each slice to (rows, columns)"
    )


class OutputKinds(BaseModel):
    """What the model may return; anything else is a malformed output."""

    model_config = ConfigDict(extra="forbid")

    findings: bool = False
    measurements: bool = False
    segmentation: bool = False
    derived_images: bool = False
    priority: bool = False


class RuntimeKind(StrEnum):
    PYTHON = "python"
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    KSERVE = "kserve"
    EXTERNAL = "external"
    """Run by an outside AI engine that claims the job's UPS workitem (IHE AIW-I)."""


class Runtime(BaseModel):
    """How the model runs.

    ``python``: ``entrypoint`` is ``module:function`` taking ``(ModelInput)`` and returning
    a :class:`~openvna.ai.outputs.ModelOutput`.
    ``onnx``/``torchscript``: ``artifact`` is the model file (relative to the manifest);
    ``adapter`` (``module:object``) turns the input into tensors and the tensors into a
    ModelOutput.
    ``kserve``: ``url`` of a KServe v2 / Open Inference Protocol server, ``model_name``
    (and optional ``model_version``) there, with an ``adapter`` as for ONNX.
    """

    model_config = ConfigDict(extra="forbid")

    kind: RuntimeKind
    entrypoint: str | None = None
    artifact: str | None = None
    adapter: str | None = None
    url: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    deidentify: bool = Field(
        default=True, description="kserve: strip identifying attributes before sending"
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="passed to the model as ModelInput.parameters"
    )

    @model_validator(mode="after")
    def _complete(self) -> Runtime:
        needs: dict[RuntimeKind, tuple[str, ...]] = {
            RuntimeKind.PYTHON: ("entrypoint",),
            RuntimeKind.ONNX: ("artifact", "adapter"),
            RuntimeKind.TORCHSCRIPT: ("artifact", "adapter"),
            RuntimeKind.KSERVE: ("url", "model_name", "adapter"),
            RuntimeKind.EXTERNAL: (),
        }
        missing = [key for key in needs[self.kind] if not getattr(self, key)]
        if missing:
            raise ValueError(f"runtime kind {self.kind.value!r} needs {', '.join(missing)}")
        for key in ("entrypoint", "adapter"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
                raise ValueError(f"{key} must be 'module:attribute', got {value!r}")
        return self


class Device(StrEnum):
    CPU = "cpu"
    GPU = "gpu"
    AUTO = "auto"
    """GPU when one is present and a GPU slot is free, else CPU."""


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Device = Device.CPU
    memory_mb: int = Field(default=2048, ge=64, description="address-space limit of the job")
    max_concurrency: int = Field(default=1, ge=1, description="jobs of this model at once")
    timeout_seconds: float = Field(default=600.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10, description="further attempts after a failure")


class ModelManifest(BaseModel):
    """A validated model manifest; ``source`` is the file (or entry point) it came from."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    intended_use: str = ""
    manufacturer: str = "OpenVNA"
    enabled: bool = True
    run_on_arrival: bool = Field(
        default=True,
        description="schedule when a matching study becomes stable; false: on demand only",
    )
    input: InputSelection = Field(default_factory=InputSelection)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    outputs: OutputKinds = Field(default_factory=OutputKinds)
    runtime: Runtime
    resources: Resources = Field(default_factory=Resources)
    base_dir: Path | None = Field(
        default=None, description="set on load: the folder artefacts are relative to"
    )
    source: str = Field(default="", description="set on load: where the manifest came from")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("a model name is 1 to 64 lower-case letters, digits, '.', '_' or '-'")
        return value

    def artifact_path(self) -> Path | None:
        """The artefact file, resolved against the manifest's folder."""
        if self.runtime.artifact is None:
            return None
        path = Path(self.runtime.artifact)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def artifact_sha256(self) -> str:
        """SHA-256 of what defines the model's behaviour, for provenance: the artefact
        file, or for Python models the source file of the entry point's module."""
        path = self.artifact_path()
        if path is None and self.runtime.entrypoint:
            path = _module_file(self.runtime.entrypoint.split(":", 1)[0])
        if path is None or not path.is_file():
            return ""
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(1024 * 1024):
                digest.update(chunk)
        return digest.hexdigest()


def _module_file(module_name: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin)


def load_manifest(path: Path) -> ModelManifest:
    """Read and validate ``path`` (a ``.toml`` manifest)."""
    try:
        with path.open("rb") as stream:
            raw = tomllib.load(stream)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ManifestError(f"{path}: unreadable manifest: {error}") from error
    return manifest_from_dict(raw, base_dir=path.parent, source=str(path))


def manifest_from_dict(
    raw: dict[str, Any], *, base_dir: Path | None = None, source: str = ""
) -> ModelManifest:
    """Validate a manifest given as a mapping (a TOML document or an entry point's dict)."""
    try:
        return ModelManifest.model_validate({**raw, "base_dir": base_dir, "source": source})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise ManifestError(f"{source or 'manifest'}: {problems}") from error
