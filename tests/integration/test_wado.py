"""WADO-RS retrieve, metadata and bulk data against a real archive: instances sent with
dcmtk's storescu (C-STORE) come back over DICOMweb equal to what was sent."""

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
from pydicom.dataset import Dataset

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, archive_for_module, dataset_bytes, run_tool

Samples = tuple[Path, list[GeneratedStudy]]
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


@pytest.fixture(scope="module")
def stored_archive(
    tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples
) -> Iterator[ArchiveProcess]:
    with archive_for_module(tmp_path_factory, "wado") as archive:
        run_tool(
            "storescu", "+sd", "+r", "-aec", "OPENVNA", *archive.address, str(sample_studies[0])
        )
        yield archive


@pytest.fixture(scope="module")
def originals(sample_studies: Samples) -> dict[str, Path]:
    return {
        dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
        for p in sample_studies[0].rglob("*.dcm")
    }


def client(archive: ArchiveProcess) -> DICOMwebClient:
    return DICOMwebClient(url=f"{archive.http_url}/dicom-web")


def fetch(archive: ArchiveProcess, path: str, **headers: str) -> Any:
    request = urllib.request.Request(f"{archive.http_url}{path}", headers=headers)
    return urllib.request.urlopen(request, timeout=60)


def error_of(archive: ArchiveProcess, path: str, **headers: str) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(archive, path, **headers)
    return raised.value.code, raised.value.read().decode()


def same_content(received: Dataset, original: Dataset) -> bool:
    """Equal element by element (the encoding may differ after transcoding)."""
    return {e.tag: e.value for e in received} == {e.tag: e.value for e in original}


def test_study_retrieve_as_stored_is_byte_identical(
    stored_archive: ArchiveProcess, originals: dict[str, Path], sample_studies: Samples
):
    study = next(s for s in sample_studies[1] if s.modality == "CT")
    received = client(stored_archive).retrieve_study(
        study.study_instance_uid,
        media_types=(("application/dicom", "*"),),
    )
    assert len(received) == len(study.paths)
    for dataset in received:
        original = originals[dataset.SOPInstanceUID]
        assert dataset.file_meta.TransferSyntaxUID == dcmread(original).file_meta.TransferSyntaxUID
        # the data set bytes are what the modality sent
        from io import BytesIO

        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        assert buffer.getvalue().endswith(dataset_bytes(original))


def test_default_transfer_syntax_is_explicit_vr_little_endian(
    stored_archive: ArchiveProcess, originals: dict[str, Path]
):
    implicit = [
        p for p in originals.values() if dcmread(p).file_meta.TransferSyntaxUID == IMPLICIT_LE
    ]
    assert implicit, "the samples hold Implicit VR instances"
    original = dcmread(implicit[0])
    received = client(stored_archive).retrieve_instance(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    )
    assert received.file_meta.TransferSyntaxUID == EXPLICIT_LE  # PS3.18 8.7.3.5.2 default
    assert same_content(received, original)


def test_series_and_single_part_instance_retrieve(
    stored_archive: ArchiveProcess, originals: dict[str, Path]
):
    original = dcmread(next(iter(originals.values())))
    series = client(stored_archive).retrieve_series(
        original.StudyInstanceUID, original.SeriesInstanceUID
    )
    expected = {
        uid
        for uid, path in originals.items()
        if dcmread(path, stop_before_pixels=True).SeriesInstanceUID == original.SeriesInstanceUID
    }
    assert {d.SOPInstanceUID for d in series} == expected
    path = (
        f"/dicom-web/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
        f"/instances/{original.SOPInstanceUID}"
    )
    response = fetch(stored_archive, path, Accept="application/dicom; transfer-syntax=*")
    assert response.headers["Content-Type"].startswith("application/dicom")
    body = response.read()
    assert int(response.headers["Content-Length"]) == len(body)
    assert body.endswith(dataset_bytes(originals[original.SOPInstanceUID]))


def test_multipart_response_has_content_length(
    stored_archive: ArchiveProcess, sample_studies: Samples
):
    study = sample_studies[1][0]
    response = fetch(
        stored_archive,
        f"/dicom-web/studies/{study.study_instance_uid}",
        Accept='multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    body = response.read()
    assert int(response.headers["Content-Length"]) == len(body)
    assert 'type="application/dicom"' in response.headers["Content-Type"]


def test_metadata_equals_the_headers_sent(
    stored_archive: ArchiveProcess, originals: dict[str, Path], sample_studies: Samples
):
    study = next(s for s in sample_studies[1] if s.modality == "MR")
    metadata = client(stored_archive).retrieve_study_metadata(study.study_instance_uid)
    assert len(metadata) == len(study.paths)
    for item in metadata:
        uid = item["00080018"]["Value"][0]
        original = dcmread(originals[uid])
        assert item["00100020"]["Value"] == [original.PatientID]
        assert item["00280010"]["Value"] == [original.Rows]
        pixel = item["7FE00010"]
        assert "BulkDataURI" in pixel and "InlineBinary" not in pixel
        assert pixel["BulkDataURI"].startswith(f"{stored_archive.http_url}/dicom-web/studies/")
        rebuilt = Dataset.from_json({k: v for k, v in item.items() if k != "7FE00010"})
        for element in original:
            if element.tag == 0x7FE00010 or element.tag.group == 0x0002:
                continue
            assert rebuilt[element.tag].value == element.value, element.keyword


def test_series_and_instance_metadata(stored_archive: ArchiveProcess, originals: dict[str, Path]):
    original = dcmread(next(iter(originals.values())), stop_before_pixels=True)
    web = client(stored_archive)
    series = web.retrieve_series_metadata(original.StudyInstanceUID, original.SeriesInstanceUID)
    assert original.SOPInstanceUID in {i["00080018"]["Value"][0] for i in series}
    one = web.retrieve_instance_metadata(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    )
    assert one["00080018"]["Value"] == [original.SOPInstanceUID]


def test_pixel_data_bulkdata_and_byte_ranges(
    stored_archive: ArchiveProcess, originals: dict[str, Path]
):
    original = dcmread(
        next(p for p in originals.values() if "CT" in dcmread(p, stop_before_pixels=True).Modality)
    )
    web = client(stored_archive)
    item = web.retrieve_instance_metadata(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    )
    uri = item["7FE00010"]["BulkDataURI"]
    assert web.retrieve_bulkdata(uri) == [original.PixelData]
    assert web.retrieve_bulkdata(
        uri, media_types=("application/octet-stream",), byte_range=(10, 109)
    ) == [original.PixelData[10:110]]
    path = uri.removeprefix(stored_archive.http_url)
    response = fetch(stored_archive, path, Accept="application/octet-stream", Range="bytes=-16")
    assert response.status == 206
    assert response.read() == original.PixelData[-16:]
    assert response.headers["Content-Range"].endswith(f"/{len(original.PixelData)}")
    code, _ = error_of(
        stored_archive,
        path,
        Accept="application/octet-stream",
        Range=f"bytes={len(original.PixelData) + 5}-",
    )
    assert code == 416


def test_unknown_uids_get_404(stored_archive: ArchiveProcess, originals: dict[str, Path]):
    original = dcmread(next(iter(originals.values())), stop_before_pixels=True)
    for path in (
        "/dicom-web/studies/1.2.3.4.5",
        "/dicom-web/studies/1.2.3.4.5/metadata",
        f"/dicom-web/studies/{original.StudyInstanceUID}/series/1.2.3/metadata",
        f"/dicom-web/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
        "/instances/1.2.3",
        f"/dicom-web/studies/1.2.3/series/{original.SeriesInstanceUID}"
        f"/instances/{original.SOPInstanceUID}",
        f"/dicom-web/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
        "/instances/1.2.3/bulkdata/7FE00010",
    ):
        code, body = error_of(stored_archive, path)
        assert code == 404, path
        assert "no " in json.loads(body)["error"]


def test_wrong_accept_gets_406(stored_archive: ArchiveProcess, sample_studies: Samples):
    study = sample_studies[1][0].study_instance_uid
    code, _ = error_of(stored_archive, f"/dicom-web/studies/{study}", Accept="image/png")
    assert code == 406
    code, _ = error_of(stored_archive, f"/dicom-web/studies/{study}", Accept="application/dicom")
    assert code == 406  # a single Part 10 body only for one instance
    code, _ = error_of(
        stored_archive,
        f"/dicom-web/studies/{study}",
        Accept='multipart/related; type="application/dicom"; '
        "transfer-syntax=1.2.840.10008.1.2.4.50",
    )
    assert code == 406  # lossy JPEG is never produced from a lossless original
    code, _ = error_of(stored_archive, f"/dicom-web/studies/{study}/metadata", Accept="text/html")
    assert code == 406


def test_transcoding_to_a_lossless_syntax(
    stored_archive: ArchiveProcess, originals: dict[str, Path], sample_studies: Samples
):
    study = next(s for s in sample_studies[1] if s.modality == "CT")
    original = dcmread(study.paths[0])
    received = client(stored_archive).retrieve_instance(
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
        original.SOPInstanceUID,
        media_types=(("application/dicom", "1.2.840.10008.1.2.5"),),
    )
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert (received.pixel_array == original.pixel_array).all()


def test_encapsulated_pixel_data_bulkdata_comes_frame_by_frame(
    stored_archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    """Compressed Pixel Data's BulkDataURI answers each frame in its media type."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import RLELossless, generate_uid

    us = next(s for s in sample_studies[1] if s.modality == "US")
    compressed = dcmread(us.paths[0])
    compressed.StudyInstanceUID = generate_uid()
    compressed.SeriesInstanceUID = generate_uid()
    compressed.SOPInstanceUID = generate_uid()
    compressed.compress(RLELossless, generate_instance_uid=False)
    path = tmp_path / "rle.dcm"
    compressed.save_as(path, enforce_file_format=True)
    stored_archive.cli("import", str(path))
    expected = list(
        generate_frames(compressed.PixelData, number_of_frames=int(compressed.NumberOfFrames))
    )
    assert len(expected) > 1

    web = client(stored_archive)
    item = web.retrieve_instance_metadata(
        compressed.StudyInstanceUID, compressed.SeriesInstanceUID, compressed.SOPInstanceUID
    )
    uri = item["7FE00010"]["BulkDataURI"]
    response = fetch(stored_archive, uri.removeprefix(stored_archive.http_url))
    assert 'type="image/dicom-rle"' in response.headers["Content-Type"]
    assert web.retrieve_bulkdata(uri, media_types=("image/dicom-rle",)) == expected
