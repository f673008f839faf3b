"""The reference models shipped with OpenVNA, measured against phantoms of known truth."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import openvna.ai.models as models_package
from openvna.ai.inputs import ModelInput, SourceFrame, Volume
from openvna.ai.manifest import ModelManifest, load_manifest
from openvna.ai.models import ct_lung, head_ct
from openvna.ai.outputs import LUNG, MILLILITRE, PERCENT, ModelOutput, validate_output
from openvna.sample.phantoms import (
    ChestVolume,
    HeadVolume,
    chest_phantom,
    head_phantom,
)

BUILTIN = Path(models_package.__file__).parent / "builtin"


def small_chest(**arguments: Any) -> ChestVolume:
    """A 96x128x128 chest (3 mm slices): fast, and lungs of adult size."""
    return chest_phantom(**{"slices": 96, "matrix": 128, "slice_spacing_mm": 3.0, **arguments})


def small_head(**arguments: Any) -> HeadVolume:
    """A 64x128x128 head (2.5 mm slices)."""
    return head_phantom(**{"slices": 64, "matrix": 128, "slice_spacing_mm": 2.5, **arguments})


def _volume(
    hu: npt.NDArray[np.float32],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: tuple[float, float, float, float, float, float] = (1, 0, 0, 0, 1, 0),
) -> Volume:
    return Volume(
        voxels=hu,
        spacing=spacing,
        origin=origin,
        orientation=orientation,
        study_instance_uid="2.25.1",
        series_instance_uid="2.25.2",
        modality="CT",
        frame_of_reference_uid="2.25.3",
        sources=[SourceFrame(f"2.25.4{i}", "1.2.840.10008.5.1.4.1.1.2") for i in range(len(hu))],
        datasets=[],
    )


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float(2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


@pytest.fixture(scope="module")
def lung_manifest() -> ModelManifest:
    return load_manifest(BUILTIN / "ct-lung" / "manifest.toml")


@pytest.fixture(scope="module")
def head_manifest() -> ModelManifest:
    return load_manifest(BUILTIN / "head-ct-hyperdensity" / "manifest.toml")


def _run(manifest: ModelManifest, volume: Volume) -> ModelOutput:
    """Call the manifest's entry point with its parameters, as the orchestrator does."""
    assert manifest.runtime.entrypoint is not None
    module, function = manifest.runtime.entrypoint.split(":")
    analyse = getattr(importlib.import_module(module), function)
    output = analyse(ModelInput(volume=volume, parameters=manifest.runtime.parameters))
    return validate_output(output, manifest.outputs, volume.shape)


def test_manifests_load_and_name_the_models(
    lung_manifest: ModelManifest, head_manifest: ModelManifest
) -> None:
    assert lung_manifest.name == "ct-lung" and lung_manifest.input.modalities == ["CT"]
    assert lung_manifest.input.min_instances == 20
    assert lung_manifest.outputs.measurements and lung_manifest.outputs.segmentation
    assert not lung_manifest.outputs.findings and not lung_manifest.outputs.priority
    assert "HEAD" in head_manifest.input.body_parts
    assert head_manifest.outputs.findings and head_manifest.outputs.priority
    # every parameter in a manifest is one the model accepts
    ct_lung.LungParameters.from_mapping(lung_manifest.runtime.parameters)
    head_ct.HeadParameters.from_mapping(head_manifest.runtime.parameters)
    assert lung_manifest.artifact_sha256() and head_manifest.artifact_sha256()


# ---------------------------------------------------------------------------
# ct-lung
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "fraction"), [(0, 0.0), (1, 0.05), (2, 0.25)])
def test_lung_volume_laa_and_mask_match_the_phantom(
    lung_manifest: ModelManifest, seed: int, fraction: float
) -> None:
    chest = small_chest(seed=seed, emphysema_fraction=fraction)
    output = _run(lung_manifest, _volume(chest.hu, chest.spacing, chest.origin))
    by_name = {m.name.value: m for m in output.measurements if m.finding_site == LUNG}
    volume = by_name["118565006"]
    assert volume.unit == MILLILITRE and volume.segment_number == 1
    assert volume.value == pytest.approx(chest.expected_lung_volume_ml, rel=0.03)
    laa = by_name["LAA950"]
    assert laa.unit == PERCENT
    assert laa.value == pytest.approx(chest.expected_laa950_percent, abs=1.0), f"seed {seed}"
    assert _dice(output.segments[0].mask, chest.lung_mask) >= 0.95
    assert output.segments[0].type.value == "39607008"
    assert output.segments[0].category.value == "91723000"
    assert -900.0 < by_name["112181"].value < -700.0  # mean lung density


def test_lung_sides_are_told_apart_whatever_the_slice_order(
    lung_manifest: ModelManifest,
) -> None:
    chest = small_chest(seed=0, emphysema_fraction=0.0)
    forward = _run(lung_manifest, _volume(chest.hu, chest.spacing, chest.origin))
    # the same patient stored head first with columns running to the patient's right
    flipped_hu = np.ascontiguousarray(chest.hu[::-1, :, ::-1])
    flipped = _run(
        lung_manifest,
        _volume(flipped_hu, chest.spacing, (-chest.origin[0], 0.0, 0.0), (-1, 0, 0, 0, 1, 0)),
    )
    for output in (forward, flipped):
        sides = {
            m.finding_site.meaning: m.value
            for m in output.measurements
            if m.finding_site and m.name == ct_lung.VOLUME
        }
        # the heart notches the left lung more than the right
        assert sides["Right lung"] > sides["Left lung"] > 1500.0
        total = sides["Lung"]
        assert sides["Right lung"] + sides["Left lung"] == pytest.approx(total)
    assert np.array_equal(flipped.segments[0].mask[::-1, :, ::-1], forward.segments[0].mask)


def test_airway_removal_separates_the_lungs() -> None:
    chest = small_chest(seed=0, emphysema_fraction=0.0)
    volume = _volume(chest.hu, chest.spacing, chest.origin)
    with_airway = ct_lung.analyse(ModelInput(volume, {"remove_airways": False}))
    without = ct_lung.analyse(ModelInput(volume))
    assert len([m for m in without.measurements if m.finding_site == ct_lung.RIGHT_LUNG]) == 1
    # joined by the trachea: one component, no left/right volumes, airway air included
    assert not any(m.finding_site == ct_lung.RIGHT_LUNG for m in with_airway.measurements)
    trachea = with_airway.segments[0].mask & ~without.segments[0].mask
    assert np.count_nonzero(trachea) * volume.voxel_volume_ml > 5.0
    assert np.all(chest.hu[trachea] < -900)  # what was removed is air, not lung tissue


def test_lung_model_rejects_what_it_cannot_measure() -> None:
    head = small_head()
    with pytest.raises(ValueError, match="no lung found"):
        ct_lung.analyse(ModelInput(_volume(head.hu, head.spacing)))
    chest = small_chest()
    with pytest.raises(ValueError, match="unknown ct-lung parameters: treshold_hu"):
        ct_lung.analyse(ModelInput(_volume(chest.hu, chest.spacing), {"treshold_hu": -400}))
    with pytest.raises(ValueError, match="true or false"):
        ct_lung.analyse(ModelInput(_volume(chest.hu, chest.spacing), {"remove_airways": 1}))
    unscaled = _volume(chest.hu, chest.spacing)
    unscaled.rescaled = False
    with pytest.raises(ValueError, match="Hounsfield"):
        ct_lung.analyse(ModelInput(unscaled))


# ---------------------------------------------------------------------------
# head-ct-hyperdensity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "volume_ml"), [(0, 5.0), (1, 1.0), (2, 20.0)])
def test_planted_hemorrhage_is_found(
    head_manifest: ModelManifest, seed: int, volume_ml: float
) -> None:
    head = small_head(hemorrhage=True, cluster_volume_ml=volume_ml, seed=seed)
    output = _run(head_manifest, _volume(head.hu, head.spacing, head.origin))
    finding = output.findings[0]
    assert finding.present and finding.finding.value == "1386000", f"seed {seed}"
    assert finding.probability is not None and finding.probability > 0.5
    assert output.priority is not None and output.priority >= 0.75
    assert finding.segment_number == 1
    segment = output.segments[0]
    assert segment.category.value == "49755003" and segment.type.value == "50960005"
    assert _dice(segment.mask, head.hemorrhage_mask) >= 0.7
    measured = next(m for m in output.measurements if m.name.value == "118565006")
    assert measured.value == pytest.approx(head.expected_hemorrhage_volume_ml, rel=0.2)


@pytest.mark.parametrize("seed", range(5))
def test_normal_head_gives_no_finding(head_manifest: ModelManifest, seed: int) -> None:
    head = small_head(hemorrhage=False, seed=seed)
    output = _run(head_manifest, _volume(head.hu, head.spacing, head.origin))
    finding = output.findings[0]
    assert not finding.present, f"false positive at seed {seed}: {finding.description}"
    assert finding.probability is not None and finding.probability < 0.5
    assert output.priority is not None and output.priority < 0.1
    assert output.segments == []
    assert [m.value for m in output.measurements] == [0.0]


def test_noisier_normal_head_stays_negative() -> None:
    head = small_head(hemorrhage=False, noise_hu=9.0, seed=7)
    assert not head_ct.analyse(ModelInput(_volume(head.hu, head.spacing))).findings[0].present


def test_skull_margin_is_what_keeps_the_bone_rim_out() -> None:
    head = small_head(hemorrhage=False, seed=0)
    volume = _volume(head.hu, head.spacing)
    output = head_ct.analyse(ModelInput(volume, {"skull_margin_mm": 0}))
    assert output.findings[0].present  # partial volume next to bone is in the blood range


def test_cluster_threshold_is_a_parameter() -> None:
    head = small_head(hemorrhage=True, cluster_volume_ml=5.0, seed=3)
    volume = _volume(head.hu, head.spacing)
    strict = head_ct.analyse(ModelInput(volume, {"min_cluster_ml": 10.0}))
    assert not strict.findings[0].present
    assert 0.2 < (strict.findings[0].probability or 0.0) < 0.5  # V / (V + 10 mL)
    with pytest.raises(ValueError, match="must be a number"):
        head_ct.analyse(ModelInput(volume, {"min_cluster_ml": "1"}))


def test_head_model_rejects_a_volume_without_skull() -> None:
    chest = small_chest()
    with pytest.raises(ValueError, match="head CT"):
        head_ct.analyse(ModelInput(_volume(chest.hu, chest.spacing)))
