"""AI results as a FHIR R4 DiagnosticReport bundle.

The bundle is re-validated here with fhir.resources' R4B models (independently of the
validation inside the builder) and its values are checked against the model output.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from openvna.ai.outputs import Code, Finding, ModelOutput
from openvna.ai.results import build_result_datasets, diagnostic_report
from openvna.ai.results.fhir import code_system
from tests.unit.test_ai_results import (
    ALGORITHM,
    NODULE,
    PNEUMOTHORAX,
    ct_output,
    ct_volume,
    dx_volume,
)

ISSUED = datetime(2024, 3, 15, 11, 30, tzinfo=timezone(timedelta(hours=1)))
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def coding(concept: dict[str, Any]) -> tuple[str, str]:
    [first] = concept["coding"]
    return first["system"], first["code"]


@pytest.fixture(scope="module")
def ct_bundle() -> tuple[dict[str, Any], list[str], str]:
    volume = ct_volume()
    output = ct_output(volume)
    uids = [r.sop_instance_uid for r in build_result_datasets(output, volume, ALGORITHM)]
    bundle = diagnostic_report(output, volume, ALGORITHM, result_instance_uids=uids, issued=ISSUED)
    return bundle, uids, volume.study_instance_uid


def test_bundle_is_valid_fhir_r4(ct_bundle: tuple[dict[str, Any], list[str], str]) -> None:
    bundle, _, _ = ct_bundle
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    kinds = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        kinds.append(resource["resourceType"])
        if resource["resourceType"] == "DiagnosticReport":
            DiagnosticReport.model_validate(resource)
        else:
            Observation.model_validate(resource)
        assert entry["fullUrl"].startswith("urn:uuid:")
    assert kinds == ["DiagnosticReport"] + ["Observation"] * 7


def test_report_names_study_patient_and_results(
    ct_bundle: tuple[dict[str, Any], list[str], str],
) -> None:
    bundle, _, study_uid = ct_bundle
    [report] = resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert ("http://loinc.org", "LP29684-5") in {
        (c["system"], c["code"]) for c in report["category"][0]["coding"]
    }
    assert coding(report["code"]) == ("http://loinc.org", "18748-4")
    assert report["subject"]["identifier"]["value"] == "SYN-0042"
    [study] = report["imagingStudy"]
    assert study["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}
    assert report["conclusion"] == "Solid nodule in the left lung."
    assert datetime.fromisoformat(report["issued"]) == ISSUED
    assert report["effectiveDateTime"] == "2024-03-15"
    observation_urls = {
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    }
    assert {r["reference"] for r in report["result"]} == observation_urls
    assert report["identifier"][0]["value"] == f"urn:oid:{ALGORITHM.job_uid}"


def test_observations_carry_values_units_device_and_dicom_sources(
    ct_bundle: tuple[dict[str, Any], list[str], str],
) -> None:
    bundle, uids, _ = ct_bundle
    observations = resources(bundle, "Observation")
    assert len(observations) == 2 + 4 + 1  # findings, measurements, priority

    by_code = {coding(o["code"]): o for o in observations}
    nodule = by_code[(SNOMED, NODULE.value)]
    assert nodule["valueBoolean"] is True
    [probability] = nodule["component"]
    assert coding(probability["code"]) == ("http://dicom.nema.org/resources/ontology/DCM", "122157")
    assert probability["valueQuantity"] == {
        "value": 0.87,
        "unit": "no units",
        "system": UCUM,
        "code": "1",
    }
    assert coding(nodule["bodySite"]) == (SNOMED, "39607008")
    assert by_code[(SNOMED, PNEUMOTHORAX.value)]["valueBoolean"] is False

    volumes = sorted(
        o["valueQuantity"]["value"]
        for o in observations
        if coding(o["code"]) == (SNOMED, "118565006")
    )
    assert volumes == [0.42, 1234.5]
    density = by_code[("http://dicom.nema.org/resources/ontology/DCM", "112031")]
    assert density["valueQuantity"] == {
        "value": -862.0,
        "unit": "Hounsfield unit",
        "system": UCUM,
        "code": "[hnsf'U]",
    }
    priority = by_code[("urn:openvna:coding-scheme:99OPENVNA", "TRIAGE-PRIORITY")]
    assert priority["valueQuantity"]["value"] == 0.8

    for observation in observations:
        assert observation["status"] == "preliminary"
        assert observation["device"]["display"] == "ct-lung 1.2.0 (OpenVNA)"
        assert observation["subject"]["identifier"]["value"] == "SYN-0042"
        assert [d["identifier"]["value"] for d in observation["derivedFrom"]] == [
            f"urn:oid:{uid}" for uid in uids
        ]


def test_dx_finding_report_is_final_when_asked() -> None:
    volume = dx_volume()
    output = ModelOutput(findings=[Finding(PNEUMOTHORAX, True, probability=0.91)])
    bundle = diagnostic_report(
        output, volume, ALGORITHM, result_instance_uids=["2.25.1"], status="final"
    )
    Bundle.model_validate(bundle)
    [report] = resources(bundle, "DiagnosticReport")
    [observation] = resources(bundle, "Observation")
    assert report["status"] == observation["status"] == "final"
    assert "conclusion" not in report
    assert observation["component"][0]["valueQuantity"]["value"] == 0.91
    issued = datetime.fromisoformat(report["issued"])
    assert issued.tzinfo is not None
    assert abs(issued - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("scheme", "system"),
    [
        ("SCT", "http://snomed.info/sct"),
        ("DCM", "http://dicom.nema.org/resources/ontology/DCM"),
        ("UCUM", "http://unitsofmeasure.org"),
        ("LN", "http://loinc.org"),
        ("1.2.840.10008.2.16.4", "urn:oid:1.2.840.10008.2.16.4"),
        ("99ACME", "urn:openvna:coding-scheme:99ACME"),
    ],
)
def test_code_systems(scheme: str, system: str) -> None:
    assert code_system(scheme) == system


def test_unknown_scheme_code_still_validates() -> None:
    volume = dx_volume()
    finding = Finding(Code("X-1", "99ACME", "Acme finding"), True)
    bundle = diagnostic_report(
        ModelOutput(findings=[finding]), volume, ALGORITHM, result_instance_uids=[]
    )
    [observation] = resources(bundle, "Observation")
    assert "derivedFrom" not in observation
    assert coding(observation["code"]) == ("urn:openvna:coding-scheme:99ACME", "X-1")
