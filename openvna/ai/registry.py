"""Where models come from: the models folder, Python entry points, the built-in models.

* ``<models_dir>/<folder>/manifest.toml``: a model dropped into the archive's models
  folder (its artefacts beside the manifest);
* the ``openvna.models`` entry point group: a pip-installed package adds a model by
  naming an object that is a manifest mapping, a :class:`ModelManifest`, a path to a
  manifest file, or a callable returning one of these;
* the reference and example models shipped in ``openvna/ai/models`` (``ai.builtin_models``).

A manifest that does not validate is reported and left out: one broken model never
stops the others. Two models with one name: the models folder wins over entry points,
which win over the built-ins, so a site can replace a shipped model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from openvna.ai.errors import ManifestError
from openvna.ai.manifest import ModelManifest, load_manifest, manifest_from_dict
from openvna.config import Settings

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "openvna.models"
BUILTIN_DIRS = (
    Path(__file__).parent / "models" / "builtin",  # the reference models
    Path(__file__).parent / "models",  # example models with code beside them (onnx_example)
)


@dataclass
class ModelRegistry:
    models: dict[str, ModelManifest] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Manifests that were found but could not be used, each with its reason."""

    def get(self, name: str) -> ModelManifest:
        try:
            return self.models[name]
        except KeyError:
            raise ManifestError(f"no model named {name!r} is installed") from None

    def __iter__(self) -> Iterator[ModelManifest]:
        return iter(sorted(self.models.values(), key=lambda manifest: manifest.name))

    def __len__(self) -> int:
        return len(self.models)

    def add(self, manifest: ModelManifest) -> None:
        self.models[manifest.name] = manifest


def load_registry(settings: Settings) -> ModelRegistry:
    """Every usable model for these settings (later sources override earlier ones)."""
    registry = ModelRegistry()
    sources: list[Iterable[ModelManifest | str]] = []
    if settings.ai.builtin_models:
        sources.extend(_from_folder(folder) for folder in BUILTIN_DIRS)
    sources.append(_from_entry_points(entry_points(group=ENTRY_POINT_GROUP)))
    sources.append(_from_folder(settings.models_dir))
    for source in sources:
        for item in source:
            if isinstance(item, str):
                logger.warning("model left out: %s", item)
                registry.problems.append(item)
            else:
                registry.add(item)
    return registry


def _from_folder(folder: Path) -> Iterator[ModelManifest | str]:
    if not folder.is_dir():
        return
    for manifest_path in sorted(folder.glob("*/manifest.toml")):
        try:
            yield load_manifest(manifest_path)
        except ManifestError as error:
            yield str(error)


def _from_entry_points(points: Iterable[EntryPoint]) -> Iterator[ModelManifest | str]:
    for point in points:
        source = f"entry point {point.name} ({point.value})"
        try:
            yield manifest_from_object(point.load(), source=source)
        except Exception as error:  # a broken third-party package must not stop the rest
            yield f"{source}: {type(error).__name__}: {error}"


def manifest_from_object(value: Any, *, source: str) -> ModelManifest:
    """A manifest from what an entry point names (see the module docstring)."""
    if callable(value) and not isinstance(value, type | ModelManifest):
        value = value()
    if isinstance(value, ModelManifest):
        return value
    if isinstance(value, str | Path):
        return load_manifest(Path(value))
    if isinstance(value, dict):
        return manifest_from_dict(value, source=source)
    raise ManifestError(f"{source}: names a {type(value).__name__}, not a manifest")
