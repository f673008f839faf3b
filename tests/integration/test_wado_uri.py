"""WADO-URI (PS3.18 Chapter 9) against a real archive: the stored file, transcoded
copies and rendered images come back for the objects imported, with the status codes
the standard asks for when parameters are missing, malformed or cannot be honoured."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless, RLELossless

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, dataset_bytes, free_port

pytestmark = pytest.mark.integration

Samples = tuple[Path, list[GeneratedStudy]]


@dataclass
class Objects:
    archive: ArchiveProcess
    ct_path: Path
    ct: Dataset
    us: Dataset
    rle: Dataset

    def wado(self, ds: Dataset, **params: str) -> requests.Response:
        query = {
            "requestType": "WADO",
            "studyUID": ds.StudyInstanceUID,
            "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID,
            **params,
        }
        return requests.get(f"{self.archive.http_url}/wado", params=query, timeout=60)


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples) -> Iterator[Objects]:
    _, studies = sample_studies
    directory = tmp_path_factory.mktemp("wado-uri")
    ct_path = next(s for s in studies if s.modality == "CT").paths[0]
    us_path = next(s for s in studies if s.modality == "US").paths[0]
    rle = dcmread(ct_path)
    rle.compress(RLELossless)
    rle_path = directory / "rle.dcm"
    rle.save_as(rle_path, enforce_file_format=True)
    archive = ArchiveProcess(directory / "data", free_port(), "OPENVNA", None, directory / "log")
    archive.start()
    try:
        archive.cli("import", str(ct_path), str(us_path), str(rle_path))
        yield Objects(archive, ct_path, dcmread(ct_path), dcmread(us_path), rle)
    finally:
        archive.stop()


def image(response: requests.Response, media_type: str) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == media_type
    return Image.open(io.BytesIO(response.content))


def test_application_dicom_is_the_stored_file(objects: Objects) -> None:
    response = objects.wado(objects.ct, contentType="application/dicom")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom"
    assert int(response.headers["Content-Length"]) == len(response.content)
    received = dcmread(io.BytesIO(response.content))
    assert received.SOPInstanceUID == objects.ct.SOPInstanceUID
    path = Path(objects.archive.data_dir) / "received.dcm"
    path.write_bytes(response.content)
    assert dataset_bytes(path) == dataset_bytes(objects.ct_path)
    same = objects.wado(
        objects.ct,
        contentType="application/dicom",
        transferSyntax=objects.ct.file_meta.TransferSyntaxUID,
    )
    assert same.content == response.content


def test_transfer_syntax_transcodes_or_refuses(objects: Objects) -> None:
    response = objects.wado(
        objects.ct, contentType="application/dicom", transferSyntax=str(JPEGLSLossless)
    )
    assert response.status_code == 200, response.text
    received = dcmread(io.BytesIO(response.content))
    assert received.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.array_equal(received.pixel_array, objects.ct.pixel_array)
    decompressed = objects.wado(
        objects.rle, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.1"
    )
    assert np.array_equal(
        dcmread(io.BytesIO(decompressed.content)).pixel_array, objects.ct.pixel_array
    )
    lossy = objects.wado(
        objects.ct, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.50"
    )
    assert lossy.status_code == 406
    malformed = objects.wado(
        objects.ct, contentType="application/dicom", transferSyntax="not-a-uid"
    )
    assert malformed.status_code == 400


def test_rendered_jpeg_is_the_default_and_png_on_request(objects: Objects) -> None:
    ct = objects.ct
    default = image(objects.wado(ct), "image/jpeg")
    assert default.format == "JPEG" and default.size == (ct.Columns, ct.Rows)
    sized = image(objects.wado(ct, contentType="image/png", rows="64"), "image/png")
    assert sized.size == (64, 64)
    both = image(objects.wado(ct, contentType="image/png", rows="64", columns="32"), "image/png")
    assert both.size == (32, 32)
    region = image(objects.wado(ct, contentType="image/png", region="0,0,0.5,0.25"), "image/png")
    assert region.size == (ct.Columns // 2, ct.Rows // 4)
    narrow = np.asarray(
        image(
            objects.wado(ct, contentType="image/png", windowCenter="40", windowWidth="80"),
            "image/png",
        )
    )
    wide = np.asarray(
        image(
            objects.wado(ct, contentType="image/png", windowCenter="40", windowWidth="2000"),
            "image/png",
        )
    )
    assert not np.array_equal(narrow, wide)
    low = objects.wado(ct, imageQuality="5").content
    high = objects.wado(ct, imageQuality="95").content
    assert len(low) < len(high)
    rle = np.asarray(image(objects.wado(objects.rle, contentType="image/png"), "image/png"))
    plain = np.asarray(image(objects.wado(ct, contentType="image/png"), "image/png"))
    assert np.array_equal(rle, plain)


def test_frame_number_of_a_cine(objects: Objects) -> None:
    us = objects.us
    frame = np.asarray(
        image(objects.wado(us, contentType="image/png", frameNumber="7"), "image/png")
    )
    assert np.array_equal(frame, us.pixel_array[6])
    assert objects.wado(us, frameNumber="11").status_code == 400
    assert objects.wado(us, frameNumber="0").status_code == 400
    assert objects.wado(objects.ct, frameNumber="1").status_code == 400  # not multi-frame


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"requestType": "WADO-RS"}, 400),
        ({"studyUID": ""}, 400),
        ({"objectUID": "1.2.x"}, 400),
        ({"objectUID": "1.2.3.4"}, 404),
        ({"seriesUID": "1.2.3.4"}, 404),
        ({"anonymize": "yes"}, 400),
        ({"contentType": "text/html"}, 406),
        ({"contentType": "video/mp4"}, 406),
        ({"windowCenter": "40"}, 400),
        ({"windowCenter": "40", "windowWidth": "wide"}, 400),
        ({"rows": "0"}, 400),
        ({"region": "0.5,0,0.2,1"}, 400),
        ({"imageQuality": "0"}, 400),
        ({"annotation": "patient"}, 200),
        ({"charset": "UTF-8"}, 200),
    ],
)
def test_parameter_errors(objects: Objects, change: dict[str, str], status: int) -> None:
    assert objects.wado(objects.ct, **change).status_code == status


def test_missing_parameter_is_bad_request(objects: Objects) -> None:
    url = f"{objects.archive.http_url}/wado"
    response = requests.get(url, params={"requestType": "WADO", "studyUID": "1.2.3"}, timeout=60)
    assert response.status_code == 400
    assert "seriesUID" in response.json()["error"]
