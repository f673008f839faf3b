"""The REST API under /api, its OpenAPI description, and the DICOMweb capabilities
document, against a real archive holding the sample studies."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, archive_for_module

Samples = tuple[Path, list[GeneratedStudy]]


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples
) -> Iterator[ArchiveProcess]:
    with archive_for_module(tmp_path_factory, "api") as archive:
        archive.cli("import", str(sample_studies[0]))
        yield archive


def call(archive: ArchiveProcess, path: str, method: str = "GET", **headers: str) -> Any:
    request = urllib.request.Request(f"{archive.http_url}{path}", method=method, headers=headers)
    return urllib.request.urlopen(request, timeout=30)


def test_study_list_links_to_the_viewer_and_dicomweb(
    loaded: ArchiveProcess, sample_studies: Samples
):
    studies = json.loads(call(loaded, "/api/studies?limit=1000").read())
    expected = {s.study_instance_uid: s for s in sample_studies[1]}
    assert {s["studyInstanceUID"] for s in studies} == set(expected)
    for study in studies:
        generated = expected[study["studyInstanceUID"]]
        assert study["patientId"] == generated.patient_id
        assert study["studyDate"] == generated.study_date
        assert study["instances"] == len(generated.paths)
        assert generated.modality in study["modalities"]
        assert study["viewerUrl"] == (
            f"{loaded.http_url}/viewer/viewer?StudyInstanceUIDs={study['studyInstanceUID']}"
        )
        retrieve = call(loaded, study["dicomwebUrl"].removeprefix(loaded.http_url) + "/metadata")
        assert len(json.loads(retrieve.read())) == len(generated.paths)


def test_study_list_filters_and_pages(loaded: ArchiveProcess, sample_studies: Samples):
    some = sample_studies[1][0]
    mine = json.loads(call(loaded, f"/api/studies?PatientID={some.patient_id}").read())
    assert {s["studyInstanceUID"] for s in mine} == {
        s.study_instance_uid for s in sample_studies[1] if s.patient_id == some.patient_id
    }
    name = str(dcmread(some.paths[0], stop_before_pixels=True).PatientName).split("^")[0]
    by_name = json.loads(call(loaded, f"/api/studies?PatientName={name[:2].lower()}*").read())
    assert some.study_instance_uid in {s["studyInstanceUID"] for s in by_name}
    assert len(json.loads(call(loaded, "/api/studies?limit=2").read())) == 2
    with pytest.raises(urllib.error.HTTPError) as raised:
        call(loaded, "/api/studies?StudyDate=20201340")
    assert raised.value.code == 400


def test_openapi_describes_every_api_route(loaded: ArchiveProcess):
    document = json.loads(call(loaded, "/api/openapi.json").read())
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/api/system",
        "/api/health",
        "/api/studies",
        "/api/ai/models",
        "/api/ai/stop",
        "/api/ai/start",
        "/api/ai/models/{name}/stop",
        "/api/ai/models/{name}/start",
        "/api/ai/jobs",
        "/api/ai/jobs/{uid}",
        "/api/ai/jobs/{uid}/cancel",
        "/api/ai/runs",
        "/api/ai/runs/{pk}",
        "/api/ai/runs/{pk}/fhir",
        "/api/ai/results",
        "/api/ai/results/{uid}/reject",
        "/api/auth/login",
        "/api/auth/logout",
        "/api/auth/me",
        "/api/auth/setup",
        "/api/auth/mfa/enroll",
        "/api/auth/mfa/confirm",
        "/api/users",
        "/api/users/{username}",
        "/api/users/{username}/mfa-reset",
        "/api/apikeys",
        "/api/apikeys/{key_id}",
        "/api/access/grants",
        "/api/access/grants/{pk}",
        "/api/access/break-glass",
        "/api/audit/events",
        "/api/audit/verify",
    }
    assert document["paths"]["/api/studies"]["get"]["summary"].startswith("Studies with links")
    assert set(document["paths"]["/api/ai/jobs"]) == {"get", "post"}
    operations = [op["operationId"] for path in document["paths"].values() for op in path.values()]
    assert len(operations) == len(set(operations))  # unique, as OpenAPI requires


def test_capabilities_document_lists_the_dicomweb_resources(loaded: ArchiveProcess):
    response = call(loaded, "/dicom-web", method="OPTIONS")
    assert response.headers["Content-Type"].startswith("application/vnd.sun.wadl+xml")
    root = ElementTree.fromstring(response.read())
    namespace = {"w": "http://wadl.dev.java.net/2009/02"}
    paths = {r.get("path") for r in root.iterfind(".//w:resource", namespace)}
    for expected in (
        "studies",
        "studies/{study}/series/{series}/instances/{instance}/metadata",
        "studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    ):
        assert any(p is not None and p.startswith(expected.split("{")[0]) for p in paths), expected
    as_json = json.loads(
        call(loaded, "/dicom-web/", method="OPTIONS", Accept="application/json").read()
    )
    methods = {(r["path"], m["name"]) for r in as_json["resources"] for m in r["methods"]}
    assert ("/studies", "POST") in methods and ("/studies", "GET") in methods
