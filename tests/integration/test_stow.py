"""STOW-RS (PS3.18 10.5) against a real ``openvna serve`` process.

Instances go in over HTTP with dicomweb-client and with hand-built multipart bodies (sent
by requests), and come back out through DIMSE with dcmtk's findscu and getscu, so every
assertion compares what a client sent with what another protocol finds and retrieves.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, dataset_bytes, run_tool

pytestmark = pytest.mark.integration

Samples = tuple[Path, list[GeneratedStudy]]
BOUNDARY = "openvna-stow-test-7c1f"
MULTIPART_DICOM = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MULTIPART_JSON = f'multipart/related; type="application/dicom+json"; boundary="{BOUNDARY}"'

# Tags of the Store Instances Response Module (PS3.18 Table I.1-1)
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


# -- helpers ------------------------------------------------------------------------------


def multipart(
    parts: Iterable[bytes | tuple[bytes, dict[str, str]]],
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    close: bool = True,
) -> bytes:
    """A multipart/related body (RFC 2046 5.1.1) of ``parts`` (bytes: application/dicom)."""
    chunks = [preamble]
    for part in parts:
        content, headers = part if isinstance(part, tuple) else (part, {})
        headers = {"Content-Type": "application/dicom", **headers}
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        chunks.append(f"\r\n--{BOUNDARY}\r\n{lines}\r\n".encode("ascii") + content)
    if close:
        chunks.append(f"\r\n--{BOUNDARY}--\r\n".encode("ascii") + epilogue)
    return b"".join(chunks)


def stow(
    archive: ArchiveProcess,
    body: bytes | Iterator[bytes],
    *,
    study: str | None = None,
    content_type: str = MULTIPART_DICOM,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    url = f"{archive.http_url}/dicom-web/studies" + (f"/{study}" if study else "")
    return requests.post(
        url,
        data=body,
        headers={
            "Content-Type": content_type,
            "Accept": "application/dicom+json",
            **(headers or {}),
        },
        timeout=120,
    )


def items(response: requests.Response, sequence: str) -> list[dict[str, Any]]:
    body = response.json()
    return list(body.get(sequence, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def sample_files(samples: Samples, modality: str | None = None) -> list[Path]:
    _root, studies = samples
    return [
        path
        for study in studies
        if modality is None or study.modality == modality
        for path in study.paths
    ]


def find_images(archive: ArchiveProcess, tmp_path: Path, study_uid: str) -> set[str]:
    """SOP Instance UIDs that C-FIND (dcmtk findscu, IMAGE level) reports in a study."""
    out = tmp_path / f"find-{len(list(tmp_path.glob('find-*')))}"
    out.mkdir()
    run_tool(
        "findscu",
        "-S",
        "-X",
        "-od",
        str(out),
        "-aec",
        archive.ae_title,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-k",
        "SOPInstanceUID",
        *archive.address,
    )
    return {str(dcmread(path).SOPInstanceUID) for path in out.glob("rsp*.dcm")}


def get_study(archive: ArchiveProcess, tmp_path: Path, study_uid: str) -> dict[str, Path]:
    """Retrieve a study with dcmtk getscu (C-GET); the received files by SOP Instance UID."""
    out = tmp_path / f"get-{len(list(tmp_path.glob('get-*')))}"
    out.mkdir()
    run_tool(
        "getscu",
        "-S",
        "-aec",
        archive.ae_title,
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        *archive.address,
    )
    return {
        str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in out.iterdir()
    }


def renamed_copy(path: Path, **changes: str) -> bytes:
    """The Part 10 file at ``path`` with new attribute values (a different instance)."""
    dataset = dcmread(path)
    for keyword, new_value in changes.items():
        setattr(dataset, keyword, new_value)
        if keyword == "SOPInstanceUID":
            dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(new_value)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def chunks_of(body: bytes, size: int) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- dicomweb-client and cross-protocol ---------------------------------------------------


def test_dicomweb_client_store_is_found_by_cfind_and_retrieved_by_cget(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    datasets = [dcmread(path) for path in sample_files(sample_studies)]
    sent: dict[str, bytes] = {}
    for dataset in datasets:  # what dicomweb-client puts on the wire for each dataset
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, dataset)
        buffer.seek(0)
        sent[str(dataset.SOPInstanceUID)] = buffer.getvalue()

    client = DICOMwebClient(url=f"{archive.http_url}/dicom-web")
    result = client.store_instances(datasets)  # 5.8 MB: sent with chunked encoding

    assert "FailedSOPSequence" not in result
    referenced = {str(item.ReferencedSOPInstanceUID): item for item in result.ReferencedSOPSequence}
    assert set(referenced) == set(sent)
    for dataset in datasets:
        item = referenced[str(dataset.SOPInstanceUID)]
        assert item.ReferencedSOPClassUID == dataset.SOPClassUID
        assert item.RetrieveURL == (
            f"{archive.http_url}/dicom-web/studies/{dataset.StudyInstanceUID}"
            f"/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}"
        )
    assert "WarningReason" not in result.ReferencedSOPSequence[0]
    assert result.RetrieveURL in ("", None)  # several studies: no single study URL

    _root, studies = sample_studies
    for study in studies:
        expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.paths}
        assert find_images(archive, tmp_path, study.study_instance_uid) == expected

    ct_study = next(study for study in studies if study.modality == "CT")
    received = get_study(archive, tmp_path, ct_study.study_instance_uid)
    assert len(received) == len(ct_study.paths)
    for uid, path in received.items():
        original = BytesIO(sent[uid])
        pydicom.filereader.read_preamble(original, force=False)
        pydicom.filereader._read_file_meta_info(original)
        assert dataset_bytes(path) == original.read()  # the data set bytes as sent


def test_single_instance_body_and_study_retrieve_url(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    path = sample_files(sample_studies, "CT")[0]
    header = dcmread(path, stop_before_pixels=True)
    response = stow(archive, path.read_bytes(), content_type="application/dicom")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert value(body, RETRIEVE_URL) == (
        f"{archive.http_url}/dicom-web/studies/{header.StudyInstanceUID}"
    )
    (item,) = items(response, REFERENCED_SOP_SEQUENCE)
    assert value(item, SOP_INSTANCE) == header.SOPInstanceUID
    assert find_images(archive, tmp_path, header.StudyInstanceUID) == {header.SOPInstanceUID}

    again = stow(archive, path.read_bytes(), content_type="application/dicom")
    assert again.status_code == 200  # the same bytes again: idempotent


# -- partial failure ------------------------------------------------------------------------


def test_non_dicom_part_fails_alone_and_the_others_are_stored(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    first, second = sample_files(sample_studies, "MR")[:2]
    body = multipart(
        [
            first.read_bytes(),
            (b"this is not a DICOM file at all", {"Content-Type": "text/plain"}),
            second.read_bytes(),
        ],
        preamble=b"This preamble is ignored.\r\n",
        epilogue=b"and so is this epilogue",
    )
    response = stow(archive, body)

    assert response.status_code == 202, response.text
    (failed,) = items(response, FAILED_SOP_SEQUENCE)
    assert value(failed, FAILURE_REASON) == 0xC000  # Error: cannot understand
    assert SOP_INSTANCE not in failed  # nothing in the part identifies an instance
    assert "Warning" in response.headers
    stored = [dcmread(p, stop_before_pixels=True) for p in (first, second)]
    assert [value(i, SOP_INSTANCE) for i in items(response, REFERENCED_SOP_SEQUENCE)] == [
        ds.SOPInstanceUID for ds in stored
    ]
    assert find_images(archive, tmp_path, stored[0].StudyInstanceUID) >= {
        ds.SOPInstanceUID for ds in stored
    }


def test_every_part_failing_is_409(archive: ArchiveProcess, sample_studies: Samples) -> None:
    truncated = sample_files(sample_studies, "CT")[0].read_bytes()[:-1000]
    response = stow(archive, multipart([b"\x00" * 300, truncated]))
    assert response.status_code == 409, response.text
    failed = items(response, FAILED_SOP_SEQUENCE)
    assert [value(item, FAILURE_REASON) for item in failed] == [0xC000, 0xC000]
    assert REFERENCED_SOP_SEQUENCE not in response.json()


def test_study_scoped_store_refuses_an_instance_of_another_study(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    _root, studies = sample_studies
    own, other = studies[0], studies[1]
    own_header = dcmread(own.paths[0], stop_before_pixels=True)
    other_header = dcmread(other.paths[0], stop_before_pixels=True)
    body = multipart([own.paths[0].read_bytes(), other.paths[0].read_bytes()])
    response = stow(archive, body, study=own.study_instance_uid)

    assert response.status_code == 202, response.text
    (failed,) = items(response, FAILED_SOP_SEQUENCE)
    assert value(failed, SOP_INSTANCE) == other_header.SOPInstanceUID
    assert value(failed, SOP_CLASS) == other_header.SOPClassUID
    assert value(failed, FAILURE_REASON) == 0xC409  # Study Instance UID mismatch
    (stored,) = items(response, REFERENCED_SOP_SEQUENCE)
    assert value(stored, SOP_INSTANCE) == own_header.SOPInstanceUID
    assert value(response.json(), RETRIEVE_URL).endswith(f"/studies/{own.study_instance_uid}")
    assert find_images(archive, tmp_path, other.study_instance_uid) == set()

    only_other = stow(
        archive, multipart([other.paths[1].read_bytes()]), study=own.study_instance_uid
    )
    assert only_other.status_code == 409


def test_different_instance_under_a_stored_uid_fails_as_duplicate(
    archive: ArchiveProcess, sample_studies: Samples
) -> None:
    path = sample_files(sample_studies, "CT")[0]
    assert stow(archive, multipart([path.read_bytes()])).status_code == 200
    changed = renamed_copy(path, PatientName="CHANGED^NAME")
    response = stow(archive, multipart([changed]))
    assert response.status_code == 409, response.text
    (failed,) = items(response, FAILED_SOP_SEQUENCE)
    assert value(failed, FAILURE_REASON) == 0x0111  # Duplicate SOP Instance: existing kept
    assert value(failed, SOP_INSTANCE) == dcmread(path, stop_before_pixels=True).SOPInstanceUID


# -- limits, encodings, media types ----------------------------------------------------------


def test_body_over_the_limit_is_413_with_or_without_content_length(
    start_archive: Callable[..., ArchiveProcess], sample_studies: Samples, tmp_path: Path
) -> None:
    archive = start_archive(env={**os.environ, "OPENVNA_HTTP__MAX_REQUEST_BYTES": "65536"})
    big = [p for p in sample_files(sample_studies, "CT")[:3]]
    body = multipart([p.read_bytes() for p in big])
    assert len(body) > 65536

    declared = stow(archive, body)
    assert declared.status_code == 413, declared.text
    assert "max_request_bytes" in declared.json()["error"]

    chunked = stow(archive, chunks_of(body, 16384))
    assert chunked.status_code == 413, chunked.text

    study = dcmread(big[0], stop_before_pixels=True).StudyInstanceUID
    assert find_images(archive, tmp_path, study) == set()  # nothing of it was acknowledged
    small = stow(archive, multipart([big[0].read_bytes()]))  # the server goes on serving
    assert small.status_code == 200, small.text


def test_gzip_and_deflate_bodies_are_decoded(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    first, second = sample_files(sample_studies, "MR")[2:4]
    response = stow(
        archive,
        gzip.compress(multipart([first.read_bytes()])),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    deflated = stow(
        archive,
        zlib.compress(multipart([second.read_bytes()])),
        headers={"Content-Encoding": "deflate"},
    )
    assert deflated.status_code == 200, deflated.text
    study = dcmread(first, stop_before_pixels=True).StudyInstanceUID
    assert find_images(archive, tmp_path, study) >= {
        dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (first, second)
    }


def gzip_bomb(prefix: bytes, gibibytes: int) -> bytes:
    """A gzip stream of ``prefix`` then ``gibibytes`` GiB of zeros, about 1 MB per GiB.

    After a full flush the compressor's state is the same before every block of zeros,
    so one block's output repeated stands for all of them.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    one = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    two = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert one == two
    assert zlib.decompressobj(31).decompress(head + one * 3) == prefix + block * 3
    return head + one * (1024 * gibibytes)


def test_gzip_bomb_is_413_and_memory_stays_flat(
    archive: ArchiveProcess, sample_studies: Samples
) -> None:
    assert archive.process is not None
    warm = stow(archive, multipart([sample_files(sample_studies, "CT")[1].read_bytes()]))
    assert warm.status_code == 200
    before = vm_rss_kib(archive.process.pid)
    prefix = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    bomb = gzip_bomb(prefix, gibibytes=8)  # 8 GiB of zeros in about 8 MB

    response = stow(archive, bomb, headers={"Content-Encoding": "gzip"})

    assert response.status_code == 413, response.text
    assert "decompression bomb" in response.json()["error"]
    growth_mib = (vm_rss_kib(archive.process.pid) - before) / 1024
    assert growth_mib < 100, f"server RSS grew by {growth_mib:.0f} MiB"
    assert list((archive.data_dir / "tmp" / "stow").iterdir()) == []  # no spool left


UNSUPPORTED = [
    ("text/plain", None, 415, "not accepted by STOW-RS"),
    (f"multipart/related; boundary={BOUNDARY}", None, 415, "type parameter"),
    (f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}', None, 415, "type="),
    ('multipart/related; type="application/dicom"', None, 400, "boundary"),
    (MULTIPART_DICOM, "br", 415, "Content-Encoding br"),
    (MULTIPART_DICOM, "gzip, deflate", 415, "only one Content-Encoding"),
]


def test_unsupported_requests_get_a_clear_status(
    archive: ArchiveProcess, sample_studies: Samples
) -> None:
    body = multipart([sample_files(sample_studies, "CT")[0].read_bytes()])
    for content_type, encoding, status, message in UNSUPPORTED:
        headers = {"Content-Encoding": encoding} if encoding else {}
        response = stow(archive, body, content_type=content_type, headers=headers)
        assert response.status_code == status, (content_type, encoding, response.text)
        assert message in response.json()["error"], response.text


def test_malformed_bodies_are_400_and_store_nothing(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    path = sample_files(sample_studies, "CT")[0]
    study = dcmread(path, stop_before_pixels=True).StudyInstanceUID
    truncated = stow(archive, multipart([path.read_bytes()], close=False))
    assert truncated.status_code == 400
    assert "closing delimiter" in truncated.json()["error"]
    no_part = stow(archive, b"no boundary anywhere in this body")
    assert no_part.status_code == 400
    bad_gzip = stow(archive, b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"})
    assert bad_gzip.status_code == 400
    assert find_images(archive, tmp_path, study) == set()


def test_accept_dicom_xml_gives_the_native_model(
    archive: ArchiveProcess, sample_studies: Samples
) -> None:
    path = sample_files(sample_studies, "CR")[0]
    response = stow(
        archive, multipart([path.read_bytes()]), headers={"Accept": "application/dicom+xml"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+xml"
    sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert 'keyword="ReferencedSOPSequence"' in response.text
    assert f'<Value number="1">{sop}</Value>' in response.text
    refused = stow(archive, multipart([path.read_bytes()]), headers={"Accept": "image/png"})
    assert refused.status_code == 406


# -- metadata and bulk data -----------------------------------------------------------------


def metadata_request(dataset: pydicom.Dataset, bulk: bytes, bulk_type: str) -> bytes:
    """Metadata (DICOM JSON array) then the Pixel Data part named by its BulkDataURI."""
    location = f"http://client.example/bulk/{dataset.SOPInstanceUID}/pixeldata"
    header = pydicom.Dataset()
    for element in dataset:
        if element.keyword != "PixelData":
            header.add(element)
    document = header.to_json_dict()
    document["7FE00010"] = {"vr": dataset["PixelData"].VR, "BulkDataURI": location}
    return multipart(
        [
            (json.dumps([document]).encode("utf-8"), {"Content-Type": "application/dicom+json"}),
            (bulk, {"Content-Type": bulk_type, "Content-Location": location}),
        ]
    )


def test_metadata_and_uncompressed_bulk_data_round_trip(
    archive: ArchiveProcess, sample_studies: Samples, tmp_path: Path
) -> None:
    sent = dcmread(sample_files(sample_studies, "CT")[2])
    body = metadata_request(sent, sent.PixelData, "application/octet-stream")
    response = stow(archive, body, content_type=MULTIPART_JSON)

    assert response.status_code == 200, response.text
    (item,) = items(response, REFERENCED_SOP_SEQUENCE)
    assert value(item, SOP_INSTANCE) == sent.SOPInstanceUID
    received = dcmread(get_study(archive, tmp_path, sent.StudyInstanceUID)[sent.SOPInstanceUID])
    assert received.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert received.PixelData == sent.PixelData
    assert (received.pixel_array == sent.pixel_array).all()
    for keyword in ("PatientName", "PatientID", "StudyDate", "ImagePositionPatient", "Rows"):
        assert received[keyword].value == sent[keyword].value


def test_metadata_and_compressed_pixel_data_round_trip(
    archive: ArchiveProcess, tmp_path: Path
) -> None:
    source = get_testdata_file("MR_small_RLE.dcm")
    assert isinstance(source, str)
    sent = dcmread(source)
    sent.SOPInstanceUID = generate_uid()
    (frame,) = generate_frames(sent.PixelData, number_of_frames=1)
    body = metadata_request(sent, frame, "image/dicom-rle")
    response = stow(archive, body, content_type=MULTIPART_JSON)

    assert response.status_code == 200, response.text
    received = dcmread(get_study(archive, tmp_path, sent.StudyInstanceUID)[sent.SOPInstanceUID])
    assert (received.pixel_array == sent.pixel_array).all()  # RLE is lossless


def test_metadata_naming_missing_bulk_data_fails_that_instance(
    archive: ArchiveProcess, sample_studies: Samples
) -> None:
    sent = dcmread(sample_files(sample_studies, "CT")[3])
    body = metadata_request(sent, sent.PixelData, "application/octet-stream")
    body = body.replace(b"Content-Location: http://client.example", b"Content-Location: http://x")
    response = stow(archive, body, content_type=MULTIPART_JSON)
    assert response.status_code == 409, response.text
    (failed,) = items(response, FAILED_SOP_SEQUENCE)
    assert value(failed, SOP_INSTANCE) == sent.SOPInstanceUID
    assert value(failed, FAILURE_REASON) == 0xA900
    assert "Content-Location" in response.headers["Warning"]
