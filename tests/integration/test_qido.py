"""QIDO-RS against a real archive: instances stored with dcmtk's storescu (C-STORE), searched
with dicomweb-client and plain HTTP. Expectations come from the files that were sent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, archive_for_module, run_tool

Samples = tuple[Path, list[GeneratedStudy]]


@pytest.fixture(scope="module")
def stored_archive(
    tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples
) -> Iterator[ArchiveProcess]:
    """One archive for the module, holding the sample studies sent over C-STORE."""
    with archive_for_module(tmp_path_factory, "qido") as archive:
        result = run_tool(
            "storescu", "+sd", "+r", "-aec", "OPENVNA", *archive.address, str(sample_studies[0])
        )
        assert result.returncode == 0
        yield archive


@pytest.fixture(scope="module")
def headers(sample_studies: Samples) -> list[Any]:
    return [dcmread(p, stop_before_pixels=True) for p in sorted(sample_studies[0].rglob("*.dcm"))]


def client(archive: ArchiveProcess) -> DICOMwebClient:
    return DICOMwebClient(url=f"{archive.http_url}/dicom-web")


def get(archive: ArchiveProcess, path: str, accept: str = "application/dicom+json") -> Any:
    request = urllib.request.Request(f"{archive.http_url}{path}", headers={"Accept": accept})
    return urllib.request.urlopen(request, timeout=30)


def http_error(archive: ArchiveProcess, path: str, accept: str = "*/*") -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as raised:
        get(archive, path, accept)
    return raised.value.code, raised.value.read().decode()


def values(result: dict[str, Any], tag: str) -> list[Any]:
    return list(result.get(tag, {}).get("Value", []))


def first(result: dict[str, Any], tag: str) -> Any:
    found = values(result, tag)
    return found[0] if found else None


def test_all_studies_match_what_was_stored(stored_archive: ArchiveProcess, headers: list[Any]):
    studies = client(stored_archive).search_for_studies()
    expected = {h.StudyInstanceUID for h in headers}
    assert {first(s, "0020000D") for s in studies} == expected
    for study in studies:
        uid = first(study, "0020000D")
        members = [h for h in headers if h.StudyInstanceUID == uid]
        assert first(study, "00201208") == len(members)  # NumberOfStudyRelatedInstances
        assert first(study, "00201206") == len({h.SeriesInstanceUID for h in members})
        assert set(values(study, "00080061")) == {h.Modality for h in members}
        assert first(study, "00100020") == members[0].PatientID
        assert first(study, "00100010")["Alphabetic"] == str(members[0].PatientName)
        assert first(study, "00080056") == "ONLINE"
        retrieve_url = first(study, "00081190")
        assert retrieve_url == f"{stored_archive.http_url}/dicom-web/studies/{uid}"


def test_every_matching_type_at_study_level(stored_archive: ArchiveProcess, headers: list[Any]):
    web = client(stored_archive)
    some = headers[0]

    def study_uids(**filters: Any) -> set[str]:
        return {first(s, "0020000D") for s in web.search_for_studies(search_filters=filters)}

    def expected(predicate: Any) -> set[str]:
        return {h.StudyInstanceUID for h in headers if predicate(h)}

    # single value
    assert study_uids(PatientID=some.PatientID) == expected(lambda h: h.PatientID == some.PatientID)
    # wildcard, case-insensitive for PN
    family = str(some.PatientName).split("^")[0]
    assert study_uids(PatientName=f"{family[:3].lower()}*") == expected(
        lambda h: str(h.PatientName).upper().startswith(family[:3].upper())
    )
    # date range
    dates = sorted({h.StudyDate for h in headers})
    low, high = dates[1], dates[-2]
    assert study_uids(StudyDate=f"{low}-{high}") == expected(lambda h: low <= h.StudyDate <= high)
    assert study_uids(StudyDate=f"-{low}") == expected(lambda h: h.StudyDate <= low)
    # UID list matching with commas (PS3.18 8.3.4.1)
    two = sorted({h.StudyInstanceUID for h in headers})[:2]
    assert study_uids(StudyInstanceUID=",".join(two)) == set(two)
    # computed attribute
    assert study_uids(ModalitiesInStudy="MR") == expected(lambda h: h.Modality == "MR")
    # accession number (single value) and a miss
    assert study_uids(AccessionNumber=some.AccessionNumber) == expected(
        lambda h: h.AccessionNumber == some.AccessionNumber
    )
    assert study_uids(PatientID="NO-SUCH-PATIENT") == set()


def test_series_and_instance_levels_and_scoped_paths(
    stored_archive: ArchiveProcess, headers: list[Any]
):
    web = client(stored_archive)
    mr = next(h for h in headers if h.Modality == "MR")
    series = web.search_for_series(mr.StudyInstanceUID)
    assert {first(s, "0020000E") for s in series} == {
        h.SeriesInstanceUID for h in headers if h.StudyInstanceUID == mr.StudyInstanceUID
    }
    all_mr_series = web.search_for_series(search_filters={"Modality": "MR"})
    assert {first(s, "0020000E") for s in all_mr_series} == {
        h.SeriesInstanceUID for h in headers if h.Modality == "MR"
    }
    # /series without a study returns study attributes too (PS3.18 10.6.3.3)
    assert all(first(s, "00100020") for s in all_mr_series)
    instances = web.search_for_instances(mr.StudyInstanceUID, mr.SeriesInstanceUID)
    members = [h for h in headers if h.SeriesInstanceUID == mr.SeriesInstanceUID]
    assert {first(i, "00080018") for i in instances} == {h.SOPInstanceUID for h in members}
    by_uid = {h.SOPInstanceUID: h for h in members}
    for instance in instances:
        original = by_uid[first(instance, "00080018")]
        assert first(instance, "00080016") == original.SOPClassUID
        assert first(instance, "00280010") == original.Rows
        assert first(instance, "00280100") == original.BitsAllocated
        assert first(instance, "00200013") == original.InstanceNumber
        assert first(instance, "00081190").endswith(
            f"/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
            f"/instances/{original.SOPInstanceUID}"
        )
    numbered = web.search_for_instances(
        mr.StudyInstanceUID, search_filters={"InstanceNumber": str(mr.InstanceNumber)}
    )
    assert {first(i, "00080018") for i in numbered} == {
        h.SOPInstanceUID
        for h in headers
        if h.StudyInstanceUID == mr.StudyInstanceUID and h.InstanceNumber == mr.InstanceNumber
    }
    everywhere = web.search_for_instances(search_filters={"SOPInstanceUID": mr.SOPInstanceUID})
    assert [first(i, "00080018") for i in everywhere] == [mr.SOPInstanceUID]
    assert first(everywhere[0], "00100020") == mr.PatientID  # study attributes on /instances


def test_includefield_names_tags_and_all(stored_archive: ArchiveProcess, headers: list[Any]):
    ct = next(h for h in headers if h.Modality == "CT")
    web = client(stored_archive)
    by_name = web.search_for_series(
        ct.StudyInstanceUID, fields=["BodyPartExamined", "00180050", "Manufacturer"]
    )
    assert first(by_name[0], "00180015") == ct.BodyPartExamined
    assert float(first(by_name[0], "00180050")) == float(ct.SliceThickness)
    assert first(by_name[0], "00080070") == ct.Manufacturer
    everything = web.search_for_instances(
        ct.StudyInstanceUID,
        ct.SeriesInstanceUID,
        search_filters={"SOPInstanceUID": ct.SOPInstanceUID},
        fields=["all"],
    )
    assert len(everything) == 1
    # every top-level attribute of the header is there, bulk data excepted
    expected_tags = {f"{int(e.tag):08X}" for e in ct if e.tag.group != 0x0002}
    assert expected_tags - set(everything[0]) == set()
    assert "7FE00010" not in everything[0]


def test_limit_offset_and_the_warning_header(stored_archive: ArchiveProcess, headers: list[Any]):
    total = len({h.StudyInstanceUID for h in headers})
    response = get(stored_archive, "/dicom-web/studies?limit=2")
    page = json.loads(response.read())
    assert len(page) == 2
    assert "additional results" in response.headers["Warning"]
    rest = json.loads(get(stored_archive, f"/dicom-web/studies?offset=2&limit={total}").read())
    assert len(rest) == total - 2
    uids = [first(s, "0020000D") for s in page + rest]
    assert len(set(uids)) == total
    last_page = get(stored_archive, f"/dicom-web/studies?offset=2&limit={total}")
    assert last_page.headers.get("Warning") is None
    past_end = get(stored_archive, f"/dicom-web/studies?offset={total + 10}")
    assert past_end.status == 200
    assert json.loads(past_end.read()) == []


def test_fuzzymatching_is_accepted(stored_archive: ArchiveProcess, headers: list[Any]):
    family = str(headers[0].PatientName).split("^")[0]
    found = client(stored_archive).search_for_studies(
        search_filters={"PatientName": f"{family}*"}, fuzzymatching=True
    )
    assert found


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/dicom-web/studies?StudyDate=2020-13-45", 400, "StudyDate"),
        ("/dicom-web/studies?StudyDate=20201301x", 400, "StudyDate"),
        ("/dicom-web/studies?NoSuchAttribute=1", 400, "NoSuchAttribute"),
        ("/dicom-web/studies?limit=-1", 400, "limit"),
        ("/dicom-web/studies?offset=abc", 400, "offset"),
        ("/dicom-web/studies?fuzzymatching=maybe", 400, "fuzzymatching"),
        ("/dicom-web/studies?includefield=NotAKeyword", 400, "NotAKeyword"),
    ],
)
def test_invalid_queries_get_400_with_a_clear_message(
    stored_archive: ArchiveProcess, path: str, status: int, needle: str
):
    code, body = http_error(stored_archive, path)
    assert code == status
    assert needle in json.loads(body)["error"]


def test_unacceptable_media_type_gets_406(stored_archive: ArchiveProcess):
    code, body = http_error(stored_archive, "/dicom-web/studies", accept="image/png")
    assert code == 406
    assert "application/dicom+json" in body
