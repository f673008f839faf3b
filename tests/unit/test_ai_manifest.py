"""Model manifests, discovery (folder, entry points, built-ins) and input selection."""

from __future__ import annotations

import hashlib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from openvna.ai.errors import ManifestError
from openvna.ai.manifest import load_manifest, manifest_from_dict
from openvna.ai.registry import _from_entry_points, load_registry, manifest_from_object
from openvna.ai.rules import mismatch
from openvna.config import load_settings
from openvna.index.ai_repository import SeriesCandidate

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"

MINIMAL = {"name": "m", "version": "1", "runtime": {"kind": "python", "entrypoint": "a.b:c"}}

# Used by the entry point test below (an entry point may name a mapping).
ENTRY_POINT_MANIFEST = {
    "name": "from-entry-point",
    "version": "2.0",
    "runtime": {"kind": "kserve", "url": "http://x", "model_name": "m", "adapter": "a:b"},
}


def candidate(**overrides: object) -> SeriesCandidate:
    values: dict[str, object] = {
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "modality": "CT",
        "body_part_examined": "CHEST",
        "series_description": "AX 1.25 LUNG",
        "number_of_instances": 120,
        "sop_class_uids": frozenset({CT_IMAGE}),
        "transfer_syntax_uids": frozenset({EXPLICIT_LE}),
        "patient_id": "P",
        "patient_name": "DOE^J",
        "is_ai_output": False,
    }
    values.update(overrides)
    return SeriesCandidate(**values)  # type: ignore[arg-type]


def test_a_minimal_manifest_gets_safe_defaults() -> None:
    manifest = manifest_from_dict(MINIMAL)
    assert manifest.resources.timeout_seconds == 600 and manifest.resources.max_concurrency == 1
    assert manifest.input.require_decodable and manifest.enabled


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Bad Name"}, "model name"),
        ({"runtime": {"kind": "onnx"}}, "needs artifact, adapter"),
        ({"runtime": {"kind": "python", "entrypoint": "no-colon"}}, "module:attribute"),
        ({"input": {"series_description": "("}}, "invalid regular expression"),
        ({"resources": {"timeout_seconds": 0}}, "timeout_seconds"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_manifests_name_the_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict({**MINIMAL, **change}, source="test.toml")


def test_manifest_file_and_artifact_hash(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not really onnx")
    (folder / "manifest.toml").write_text(
        'name = "x"\nversion = "1"\n[runtime]\nkind = "onnx"\nartifact = "model.onnx"\n'
        'adapter = "adapter:Adapter"\n'
    )
    manifest = load_manifest(folder / "manifest.toml")
    assert manifest.artifact_path() == folder / "model.onnx"
    assert manifest.artifact_sha256() == hashlib.sha256(b"not really onnx").hexdigest()
    (folder / "manifest.toml").write_text("name = [")
    with pytest.raises(ManifestError, match="unreadable manifest"):
        load_manifest(folder / "manifest.toml")


def test_registry_reads_builtins_and_the_models_folder(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "good").mkdir(parents=True)
    (models / "good" / "manifest.toml").write_text(
        'name = "ct-lung"\nversion = "9.9"\n[runtime]\nkind = "external"\n'
    )
    (models / "broken").mkdir()
    (models / "broken" / "manifest.toml").write_text('name = "broken"\n')
    registry = load_registry(load_settings(data_dir=tmp_path, **{"ai.models_dir": models}))
    assert registry.get("ct-lung").version == "9.9"  # the site's folder overrides a built-in
    assert "head-ct-hyperdensity" in registry.models  # another built-in stays
    assert any("broken" in problem and "runtime" in problem for problem in registry.problems)
    with pytest.raises(ManifestError, match="no model named"):
        registry.get("missing")
    without = load_registry(
        load_settings(data_dir=tmp_path, **{"ai.models_dir": models, "ai.builtin_models": False})
    )
    assert "head-ct-hyperdensity" not in without.models


def test_entry_points_add_models_and_broken_ones_are_reported() -> None:
    points = [
        EntryPoint("good", f"{__name__}:ENTRY_POINT_MANIFEST", "openvna.models"),
        EntryPoint("missing", "no_such_package_xyz:MODEL", "openvna.models"),
    ]
    found = list(_from_entry_points(points))
    assert found[0].name == "from-entry-point"  # type: ignore[union-attr]
    assert isinstance(found[1], str) and "ModuleNotFoundError" in found[1]
    with pytest.raises(ManifestError, match="not a manifest"):
        manifest_from_object(42, source="x")


def test_selection_matches_and_says_why_not() -> None:
    manifest = manifest_from_dict(
        {
            **MINIMAL,
            "input": {
                "modalities": ["ct"],
                "body_parts": ["chest"],
                "series_description": "lung",
                "min_instances": 20,
            },
        }
    )
    assert mismatch(manifest, candidate()) is None
    assert "modality MR" in (mismatch(manifest, candidate(modality="MR")) or "")
    assert "body part HEAD" in (mismatch(manifest, candidate(body_part_examined="HEAD")) or "")
    assert "does not match" in (mismatch(manifest, candidate(series_description="SCOUT")) or "")
    assert "fewer than 20" in (mismatch(manifest, candidate(number_of_instances=3)) or "")
    assert "AI results" in (mismatch(manifest, candidate(is_ai_output=True)) or "")
    undecodable = candidate(transfer_syntax_uids=frozenset({JPEG_LOSSLESS}))
    assert "cannot be decoded" in (mismatch(manifest, undecodable) or "")
    sr = candidate(sop_class_uids=frozenset({"1.2.840.10008.5.1.4.1.1.88.34"}))
    assert mismatch(manifest, sr) == "series holds no images"
