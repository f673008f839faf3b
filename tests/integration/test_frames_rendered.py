"""WADO-RS frames, rendered and thumbnail resources against a real archive process.

The synthetic samples (uncompressed) and compressed copies made here with pydicom
(RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless) are imported with ``openvna
import``; frames come back through dicomweb-client and plain HTTP and are compared with
what pydicom decodes from the files sent (PS3.18 10.4, 8.7.3, 8.3.5).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, free_port

pytestmark = pytest.mark.integration

Samples = tuple[Path, list[GeneratedStudy]]
EXPLICIT_LE = "1.2.840.10008.1.2.1"
OCTET = 'multipart/related; type="application/octet-stream"'
SYNTAX_MEDIA = {
    RLELossless: "image/dicom-rle",
    JPEGLSLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
}


@dataclass
class Loaded:
    archive: ArchiveProcess
    client: DICOMwebClient
    ct: list[Dataset]
    """The uncompressed CT series, in instance order."""
    us: Dataset
    """The multi-frame US cine (10 RGB frames)."""
    dx: Dataset
    compressed: dict[str, Dataset]
    """Copies of ``ct[0]`` per compressed syntax, in a series of their own."""
    us_rle: Dataset
    monochrome1: Dataset

    def url(self, ds: Dataset) -> str:
        return (
            f"{self.archive.http_url}/dicom-web/studies/{ds.StudyInstanceUID}"
            f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )

    def frames(self, ds: Dataset, numbers: list[int], **kwargs: object) -> list[bytes]:
        return self.client.retrieve_instance_frames(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, numbers, **kwargs
        )


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples) -> Iterator[Loaded]:
    _, studies = sample_studies
    directory = tmp_path_factory.mktemp("frames")
    ct_paths = next(s for s in studies if s.modality == "CT").paths
    us_path = next(s for s in studies if s.modality == "US").paths[0]
    dx_path = next(s for s in studies if s.modality in ("DX", "CR")).paths[0]
    extra = directory / "extra"
    extra.mkdir()
    compressed_series = generate_uid()
    compressed = {}
    for index, syntax in enumerate(SYNTAX_MEDIA):
        ds = dcmread(ct_paths[0])
        ds.compress(syntax)  # a new SOP Instance UID
        ds.SeriesInstanceUID = compressed_series
        ds.save_as(extra / f"ct-{index}.dcm", enforce_file_format=True)
        compressed[syntax] = ds
    us_rle = dcmread(us_path)
    us_rle.compress(RLELossless)
    us_rle.save_as(extra / "us-rle.dcm", enforce_file_format=True)
    monochrome1 = dcmread(dx_path)
    monochrome1.PhotometricInterpretation = "MONOCHROME1"
    monochrome1.SOPInstanceUID = generate_uid()
    monochrome1.save_as(extra / "dx-mono1.dcm", enforce_file_format=True)

    archive = ArchiveProcess(directory / "data", free_port(), "OPENVNA", None, directory / "log")
    archive.start()
    try:
        archive.cli("import", *map(str, [*ct_paths, us_path, dx_path, extra]))
        ct = sorted((dcmread(p) for p in ct_paths), key=lambda d: int(d.InstanceNumber))
        yield Loaded(
            archive,
            DICOMwebClient(url=f"{archive.http_url}/dicom-web"),
            ct,
            dcmread(us_path),
            dcmread(dx_path),
            compressed,
            us_rle,
            monochrome1,
        )
    finally:
        archive.stop()


def parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """(headers, body) of each part of a multipart/related answer (RFC 2046 5.1)."""
    content_type = response.headers["Content-Type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    body = response.content
    assert body.startswith(b"--" + boundary + b"\r\n")
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    found = []
    for chunk in body[: -len(boundary) - 6].split(b"--" + boundary + b"\r\n")[1:]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        found.append((headers, payload.removesuffix(b"\r\n")))
    return found


def png(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


# -- frames -----------------------------------------------------------------------------
def test_uncompressed_frame_is_the_pixel_bytes(loaded: Loaded) -> None:
    ct = loaded.ct[2]
    assert loaded.frames(ct, [1]) == [ct.pixel_array.tobytes()]
    response = requests.get(loaded.url(ct) + "/frames/1", headers={"Accept": OCTET})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(OCTET + "; boundary=")
    assert int(response.headers["Content-Length"]) == len(response.content)
    [(headers, payload)] = parts(response)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert headers["Content-Location"] == loaded.url(ct) + "/frames/1"
    assert payload == ct.PixelData


def test_multiframe_cine_frames_in_requested_order(loaded: Loaded) -> None:
    us = loaded.us
    pixels = us.pixel_array
    got = loaded.frames(us, [1, 5, 10])
    assert got == [pixels[0].tobytes(), pixels[4].tobytes(), pixels[9].tobytes()]
    assert loaded.frames(us, [10, 2]) == [pixels[9].tobytes(), pixels[1].tobytes()]
    rle = loaded.frames(loaded.us_rle, [3, 7], media_types=("application/octet-stream",))
    assert rle == [pixels[2].tobytes(), pixels[6].tobytes()]


@pytest.mark.parametrize("syntax", list(SYNTAX_MEDIA))
def test_compressed_frames_decoded_or_as_stored(loaded: Loaded, syntax: str) -> None:
    ds = loaded.compressed[syntax]
    original = loaded.ct[0].pixel_array
    decoded = loaded.frames(ds, [1], media_types=("application/octet-stream",))
    assert decoded == [original.tobytes()]  # lossless
    fragment = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert loaded.frames(ds, [1]) == [fragment]  # dicomweb-client asks type="*/*": as stored
    assert loaded.frames(ds, [1], media_types=(("application/octet-stream", "*"),)) == [fragment]
    assert loaded.frames(ds, [1], media_types=((SYNTAX_MEDIA[syntax], syntax),)) == [fragment]
    response = requests.get(
        loaded.url(ds) + "/frames/1", headers={"Accept": OCTET + "; transfer-syntax=*"}
    )
    [(headers, payload)] = parts(response)
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={syntax}"
    assert payload == fragment


@pytest.mark.parametrize("syntax", list(SYNTAX_MEDIA))
def test_uncompressed_frames_encoded_on_request(loaded: Loaded, syntax: str) -> None:
    ct = loaded.ct[1]
    [codestream] = loaded.frames(ct, [1], media_types=((SYNTAX_MEDIA[syntax], syntax),))
    assert codestream != ct.PixelData
    decoded, _ = get_decoder(syntax).as_array(
        encapsulate([codestream]),
        index=0,
        rows=ct.Rows,
        columns=ct.Columns,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=int(ct.BitsStored),
        pixel_representation=int(ct.PixelRepresentation),
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    assert np.array_equal(decoded, ct.pixel_array)


def test_frame_errors(loaded: Loaded) -> None:
    url = loaded.url(loaded.us)
    for frames in ("0", "1,1", "x", "1,,2", "-1"):
        response = requests.get(f"{url}/frames/{frames}")
        assert response.status_code == 400, frames
        assert "frame" in response.json()["error"]
    assert requests.get(f"{url}/frames/11").status_code == 404
    assert requests.get(loaded.url(loaded.ct[0]) + "/frames/2").status_code == 404
    assert (
        requests.get(url.replace(loaded.us.SOPInstanceUID, "1.2.3") + "/frames/1").status_code
        == 404
    )
    assert (
        requests.get(url.replace(loaded.us.SOPInstanceUID, "abc") + "/frames/1").status_code == 400
    )
    for accept in (
        'multipart/related; type="application/dicom"',
        'multipart/related; type="image/jpeg"',
    ):
        response = requests.get(f"{url}/frames/1", headers={"Accept": accept})
        assert response.status_code == 406, accept


# -- rendered ---------------------------------------------------------------------------
def test_rendered_instance_jpeg_png_viewport_quality(loaded: Loaded) -> None:
    ct = loaded.ct[3]
    args = (ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    jpeg = Image.open(io.BytesIO(loaded.client.retrieve_instance_rendered(*args)))
    assert (jpeg.format, jpeg.size, jpeg.mode) == ("JPEG", (ct.Columns, ct.Rows), "L")
    small = loaded.client.retrieve_instance_rendered(
        *args, media_types=("image/png",), params={"viewport": "64,32"}
    )
    assert Image.open(io.BytesIO(small)).size == (32, 32)
    low = requests.get(loaded.url(ct) + "/rendered?quality=5").content
    high = requests.get(loaded.url(ct) + "/rendered?quality=95").content
    assert len(low) < len(high)
    lung = png(
        requests.get(loaded.url(ct) + "/rendered?window=-600,1500", headers={"Accept": "image/png"})
    )
    soft = png(
        requests.get(
            loaded.url(ct) + "/rendered?window=40,400,linear", headers={"Accept": "image/png"}
        )
    )
    default = png(requests.get(loaded.url(ct) + "/rendered", headers={"Accept": "image/png"}))
    assert not np.array_equal(lung, soft)
    assert np.array_equal(default, soft)  # the header's first window is 40/400


def test_rendered_parameter_errors(loaded: Loaded) -> None:
    url = loaded.url(loaded.ct[0]) + "/rendered"
    for query in (
        "window=40",
        "window=a,b",
        "window=40,0",
        "viewport=0,10",
        "viewport=a",
        "quality=0",
        "quality=101",
        "quality=x",
        "viewport=10,10,500,0,10,10",
    ):
        response = requests.get(f"{url}?{query}")
        assert response.status_code == 400, query
    assert requests.get(url, headers={"Accept": "image/webp"}).status_code == 406
    assert requests.get(url + "?annotation=patient,technique").status_code == 200


def test_monochrome1_renders_inverted(loaded: Loaded) -> None:
    query = "/rendered?window=2048,4096"
    normal = png(requests.get(loaded.url(loaded.dx) + query, headers={"Accept": "image/png"}))
    inverted = png(
        requests.get(loaded.url(loaded.monochrome1) + query, headers={"Accept": "image/png"})
    )
    assert normal.shape == inverted.shape == (loaded.dx.Rows, loaded.dx.Columns)
    assert np.array_equal(inverted.astype(int), 255 - normal.astype(int))


def test_rendered_frames_of_colour_cine(loaded: Loaded) -> None:
    us = loaded.us
    frame5 = png(
        requests.get(loaded.url(us) + "/frames/5/rendered", headers={"Accept": "image/png"})
    )
    assert np.array_equal(frame5, us.pixel_array[4])
    first = png(requests.get(loaded.url(us) + "/rendered", headers={"Accept": "image/png"}))
    assert np.array_equal(first, us.pixel_array[0])  # an instance renders its first frame
    jpeg = loaded.client.retrieve_instance_frames_rendered(
        us.StudyInstanceUID, us.SeriesInstanceUID, us.SOPInstanceUID, [5]
    )
    assert Image.open(io.BytesIO(jpeg)).mode == "RGB"
    rle5 = png(
        requests.get(
            loaded.url(loaded.us_rle) + "/frames/5/rendered", headers={"Accept": "image/png"}
        )
    )
    assert np.array_equal(rle5, frame5)
    gif = requests.get(loaded.url(us) + "/frames/1,2,3/rendered", headers={"Accept": "image/gif"})
    assert Image.open(io.BytesIO(gif.content)).n_frames == 3
    assert requests.get(loaded.url(us) + "/frames/1,2/rendered").status_code == 406
    assert requests.get(loaded.url(us) + "/frames/11/rendered").status_code == 404


def test_compressed_instances_render_like_the_original(loaded: Loaded) -> None:
    original = png(
        requests.get(loaded.url(loaded.ct[0]) + "/rendered", headers={"Accept": "image/png"})
    )
    for ds in loaded.compressed.values():
        rendered = png(requests.get(loaded.url(ds) + "/rendered", headers={"Accept": "image/png"}))
        assert np.array_equal(rendered, original)


# -- thumbnails -------------------------------------------------------------------------
def test_thumbnails(loaded: Loaded) -> None:
    ct = loaded.ct
    middle = ct[(len(ct) - 1) // 2]
    study_url = f"{loaded.archive.http_url}/dicom-web/studies/{middle.StudyInstanceUID}"
    series_url = f"{study_url}/series/{middle.SeriesInstanceUID}"
    accept = {"Accept": "image/png"}
    expected = png(requests.get(loaded.url(middle) + "/thumbnail", headers=accept))
    assert max(expected.shape) == 128
    assert np.array_equal(png(requests.get(series_url + "/thumbnail", headers=accept)), expected)
    assert np.array_equal(png(requests.get(study_url + "/thumbnail", headers=accept)), expected)
    default = requests.get(loaded.url(loaded.us) + "/frames/4/thumbnail")
    assert default.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(default.content)).size == (128, 96)
    sized = requests.get(series_url + "/thumbnail?viewport=32,32")
    assert Image.open(io.BytesIO(sized.content)).size == (32, 32)
    assert (
        requests.get(study_url.replace(middle.StudyInstanceUID, "1.2.3") + "/thumbnail").status_code
        == 404
    )
