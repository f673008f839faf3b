"""Resolve a manifest's ``module:attribute`` references (entry points and adapters).

A model may ship as an installed package (``openvna.ai.models.ct_lung:analyse``) or as a
folder holding its manifest, artefact and a small adapter module beside them
(``adapter:NoduleAdapter`` next to ``manifest.toml``). Modules beside the manifest are
loaded *by file path* under a name derived from the folder, never by putting the folder
on ``sys.path``: two model folders may each hold an ``adapter.py``, and neither may
shadow the other or an installed module of the same name.

Every failure (no such module, no such attribute, a module that raises on import, an
object of the wrong shape) is a :class:`~openvna.ai.errors.ManifestError` naming the
reference, so a broken model is reported when it is loaded, not half-way through a job.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from openvna.ai.errors import ManifestError
from openvna.ai.runners.base import TensorAdapter


def load_reference(
    reference: str, *, base_dir: Path | None = None, role: str = "entrypoint"
) -> Any:
    """Return the object named by ``reference`` (``"module:attribute"``).

    Parameters
    ----------
    reference
        ``module:attribute``; ``attribute`` may be dotted (``Class.factory``).
    base_dir
        The manifest's folder. A module whose file lies there (``adapter`` ->
        ``base_dir/adapter.py``, ``pkg.mod`` -> ``base_dir/pkg/mod.py``) is loaded from
        it in preference to an installed module of the same name.
    role
        What the reference is for (``entrypoint``, ``adapter``), used in messages.

    Raises
    ------
    ManifestError
        The module or attribute does not exist, or the module raised on import.
    """
    module_name, separator, attribute_path = reference.partition(":")
    if not separator or not module_name or not attribute_path:
        raise ManifestError(f"{role} {reference!r} is not 'module:attribute'")
    module = _import(module_name, base_dir, role, reference)
    target: Any = module
    for part in attribute_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ManifestError(
                f"{role} {reference!r}: module {module_name!r} has no attribute {attribute_path!r}"
            ) from None
    return target


def load_entrypoint(reference: str, *, base_dir: Path | None = None) -> Callable[..., object]:
    """The model function of a ``python`` runtime; it must be callable."""
    target = load_reference(reference, base_dir=base_dir, role="entrypoint")
    if not callable(target):
        raise ManifestError(f"entrypoint {reference!r} is a {type(target).__name__}, not callable")
    return cast(Callable[..., object], target)


def load_adapter(reference: str, *, base_dir: Path | None = None) -> TensorAdapter:
    """The :class:`TensorAdapter` of a tensor runtime: an instance, or a class that is
    instantiated without arguments."""
    target = load_reference(reference, base_dir=base_dir, role="adapter")
    if isinstance(target, type):
        try:
            target = target()
        except Exception as error:
            raise ManifestError(
                f"adapter {reference!r}: constructing it failed: {type(error).__name__}: {error}"
            ) from error
    missing = [
        method
        for method in ("to_tensors", "from_tensors")
        if not callable(getattr(target, method, None))
    ]
    if missing:
        raise ManifestError(f"adapter {reference!r} has no {' or '.join(missing)} method")
    return cast(TensorAdapter, target)


def _import(module_name: str, base_dir: Path | None, role: str, reference: str) -> ModuleType:
    local = _local_module_file(module_name, base_dir)
    try:
        if local is not None:
            return _import_file(module_name, local)
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        where = f" (nor in {base_dir})" if base_dir is not None else ""
        if error.name == module_name or (error.name and module_name.startswith(f"{error.name}.")):
            raise ManifestError(
                f"{role} {reference!r}: no module named {module_name!r}{where}"
            ) from error
        raise ManifestError(
            f"{role} {reference!r}: importing {module_name!r} needs the missing module "
            f"{error.name!r}"
        ) from error
    except ManifestError:
        raise
    except Exception as error:
        raise ManifestError(
            f"{role} {reference!r}: importing {module_name!r} failed: "
            f"{type(error).__name__}: {error}"
        ) from error


def _local_module_file(module_name: str, base_dir: Path | None) -> Path | None:
    if base_dir is None:
        return None
    relative = Path(*module_name.split("."))
    for candidate in (base_dir / relative.with_suffix(".py"), base_dir / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_file(module_name: str, path: Path) -> ModuleType:
    """Import ``path`` as a module private to its folder; the same file is imported once."""
    folder_key = hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:12]
    unique_name = f"_openvna_model_{folder_key}_{module_name.replace('.', '_')}"
    if unique_name in sys.modules:
        return sys.modules[unique_name]
    spec = importlib.util.spec_from_file_location(unique_name, path)
    if spec is None or spec.loader is None:
        raise ManifestError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing so dataclasses and pickling inside it find the module.
    sys.modules[unique_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[unique_name]
        raise
    return module
