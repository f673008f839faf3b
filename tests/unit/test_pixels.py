"""Frame extraction, transcoding, negotiation and rendering, in process (no server).

Instances are built here with pydicom, stored through the real ingest path into a
temporary archive, and read back with :class:`PixelStore`; every frame is compared with
what pydicom decodes from the file written (PS3.5 8.2 native, A.4 encapsulated).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from sqlalchemy import update

from openvna.app import open_archive
from openvna.archive.frame_codec import decode_frame, native_frame, transcode_frame
from openvna.archive.frame_media import FrameRepresentation, negotiate_frames
from openvna.archive.ingest import Origin
from openvna.archive.pixels import PixelStore, StoredImage
from openvna.archive.rendering import RenderOptions, Viewport, Window, display_pixels, render
from openvna.archive.service import Archive
from openvna.config import load_settings
from openvna.errors import BadRequestError, NotAcceptableError, NotFoundError
from openvna.index.schema import instances
from openvna.web.dicomweb.frames import (
    parse_frame_list,
    parse_viewport,
    parse_window,
)
from openvna.web.dicomweb.media import parse_accept

EXPLICIT = str(ExplicitVRLittleEndian)
RNG_SEED = 20261123


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened, executor = open_archive(load_settings(None, data_dir=tmp_path / "data"))
    yield opened
    executor.shutdown()
    opened.close()


def grayscale_frames(frames: int, rows: int = 64, columns: int = 48) -> np.ndarray:
    rng = np.random.default_rng(RNG_SEED)
    shape = (frames, rows, columns) if frames > 1 else (rows, columns)
    return rng.integers(-1000, 3000, size=shape, dtype=np.int16)


def image_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PIXELS"
    ds.Modality = "CT"
    bits = pixels.dtype.itemsize * 8
    ds.set_pixel_data(pixels, photometric, bits)
    ds.preamble = b"\x00" * 128
    return ds


def store(archive: Archive, ds: Dataset, tmp_path: Path, **save: object) -> StoredImage:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True, **save)  # type: ignore[arg-type]
    with path.open("rb") as source:
        archive.ingest_file(source, origin=Origin("test"))
    return PixelStore(archive.engine, archive.storage).instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )


def frames_of(pixels: np.ndarray) -> list[bytes]:
    """Little-endian bytes of each frame of a grayscale (frames, rows, columns) array."""
    frames = pixels[np.newaxis] if pixels.ndim == 2 else pixels
    return [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in frames]


# -- frame list and negotiation ---------------------------------------------------------
def test_frame_list_parses_and_rejects() -> None:
    assert parse_frame_list("1") == [1]
    assert parse_frame_list("3,1,5") == [3, 1, 5]
    assert parse_frame_list("1%2C2") == [1, 2]
    for bad in ("0", "", "1,,2", "a", "-1", "1,2,", "1.5", "01"):
        with pytest.raises(BadRequestError):
            parse_frame_list(bad)
    with pytest.raises(BadRequestError, match="repeats"):
        parse_frame_list("2,2")


@pytest.mark.parametrize(
    ("accept", "stored", "frames", "expected"),
    [
        (None, EXPLICIT, 1, FrameRepresentation(True, "application/octet-stream", EXPLICIT)),
        ("*/*", JPEGLSLossless, 2, FrameRepresentation(True, "application/octet-stream", EXPLICIT)),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            JPEGLSLossless,
            1,
            FrameRepresentation(True, "application/octet-stream", str(JPEGLSLossless)),
        ),
        (
            'multipart/related; type="image/jls"',
            EXPLICIT,
            1,
            FrameRepresentation(True, "image/jls", str(JPEGLSLossless)),
        ),
        (
            'multipart/related; type="image/x-dicom-rle"',
            JPEG2000Lossless,
            1,
            FrameRepresentation(True, "image/dicom-rle", str(RLELossless)),
        ),
        (
            'multipart/related; type="image/*"; transfer-syntax=*',
            EXPLICIT,
            1,
            FrameRepresentation(True, "image/jls", str(JPEGLSLossless)),
        ),
        (
            'multipart/related; type="image/*"',
            JPEG2000Lossless,
            3,
            FrameRepresentation(True, "image/jp2", str(JPEG2000Lossless)),
        ),
        (
            'multipart/related; type="image/jpeg", multipart/related; type="image/jp2"',
            EXPLICIT,
            1,
            FrameRepresentation(True, "image/jp2", str(JPEG2000Lossless)),
        ),
        (
            "application/octet-stream",
            EXPLICIT,
            1,
            FrameRepresentation(False, "application/octet-stream", EXPLICIT),
        ),
    ],
)
def test_frame_negotiation(
    accept: str | None, stored: str, frames: int, expected: FrameRepresentation
) -> None:
    assert negotiate_frames(parse_accept(accept), str(stored), frames) == expected


@pytest.mark.parametrize(
    ("accept", "frames"),
    [
        ('multipart/related; type="image/jpeg"', 1),  # lossy is never produced
        ('multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.50', 1),
        ("application/octet-stream", 2),  # single part holds one frame
        ("application/dicom", 1),
    ],
)
def test_frame_negotiation_refuses(accept: str, frames: int) -> None:
    with pytest.raises(NotAcceptableError):
        negotiate_frames(parse_accept(accept), EXPLICIT, frames)


# -- reading frames from storage --------------------------------------------------------
def test_native_frames_are_single_reads(archive: Archive, tmp_path: Path) -> None:
    pixels = grayscale_frames(5)
    image = store(archive, image_dataset(pixels), tmp_path)
    assert image.source.pixel_data_offset is not None
    reader = PixelStore(archive.engine, archive.storage)
    assert reader.read_frames(image, [5, 1, 3]) == [frames_of(pixels)[i] for i in (4, 0, 2)]
    with pytest.raises(NotFoundError, match="frame 6 does not exist"):
        reader.read_frames(image, [6])


def test_big_endian_frames_come_out_little_endian(archive: Archive, tmp_path: Path) -> None:
    pixels = grayscale_frames(3)
    ds = image_dataset(pixels)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = pixels.astype(">i2").tobytes()
    image = store(archive, ds, tmp_path, implicit_vr=False, little_endian=False)
    assert PixelStore(archive.engine, archive.storage).read_frames(image, [2]) == [
        frames_of(pixels)[1]
    ]


def test_one_bit_frames_that_do_not_end_on_a_byte(archive: Archive, tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    bits = rng.integers(0, 2, size=(4, 3, 5), dtype=np.uint8)  # 15 bits per frame
    ds = image_dataset(np.zeros((4, 3, 5), dtype=np.uint8))
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    image = store(archive, ds, tmp_path)
    frame = PixelStore(archive.engine, archive.storage).read_frames(image, [3])[0]
    assert np.array_equal(
        np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[:15], bits[2].ravel()
    )


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("extended_offset_table", [False, True])
def test_encapsulated_frames_as_stored_and_decoded(
    archive: Archive, tmp_path: Path, syntax: str, extended_offset_table: bool
) -> None:
    pixels = grayscale_frames(4)
    ds = image_dataset(pixels)
    ds.compress(syntax, encapsulate_ext=extended_offset_table)
    expected = list(generate_frames(ds.PixelData, number_of_frames=4))
    image = store(archive, ds, tmp_path)
    assert image.stored_frame_syntax == syntax
    reader = PixelStore(archive.engine, archive.storage)
    stored = reader.read_frames(image, [4, 2])
    assert stored == [expected[3], expected[1]]
    assert reader.read_frames(image, [4, 2]) == stored  # from the cached fragment table
    native = native_frame(stored[0], syntax, image.geometry)
    assert native == frames_of(pixels)[3]


@pytest.mark.parametrize(
    ("fragments_per_frame", "has_bot", "frames"),
    [(3, True, 1), (3, False, 1), (2, True, 3), (2, False, 3)],
)
def test_fragmented_frames(
    archive: Archive, tmp_path: Path, fragments_per_frame: int, has_bot: bool, frames: int
) -> None:
    """Multi-fragment frames: Basic Offset Table, or JPEG-LS start markers without it."""
    pixels = grayscale_frames(frames)
    ds = image_dataset(pixels)
    ds.compress(JPEGLSLossless)
    codestreams = list(generate_frames(ds.PixelData, number_of_frames=frames))
    ds.PixelData = encapsulate(
        codestreams, fragments_per_frame=fragments_per_frame, has_bot=has_bot
    )
    image = store(archive, ds, tmp_path)
    got = PixelStore(archive.engine, archive.storage).read_frames(image, list(range(1, frames + 1)))
    assert [len(g) for g in got] == [len(c) for c in codestreams]
    assert got == codestreams


def test_rows_without_offset_fall_back_to_parsing(archive: Archive, tmp_path: Path) -> None:
    pixels = grayscale_frames(3)
    native = store(archive, image_dataset(pixels), tmp_path)
    compressed = image_dataset(pixels)
    compressed.compress(RLELossless)
    rle = store(archive, compressed, tmp_path)
    with archive.engine.begin() as connection:
        connection.execute(update(instances).values(pixel_data_offset=None))
    reader = PixelStore(archive.engine, archive.storage)
    for image in (native, rle):
        located = reader.instance(
            image.source.study_instance_uid,
            image.source.series_instance_uid,
            image.source.sop_instance_uid,
        )
        assert located.source.pixel_data_offset is None
        frame = reader.read_frames(located, [2])[0]
        assert (
            native_frame(frame, located.stored_frame_syntax, located.geometry)
            == (frames_of(pixels)[1])
        )


def test_deflated_instances_are_read_through_pydicom(archive: Archive, tmp_path: Path) -> None:
    pixels = grayscale_frames(2)
    ds = image_dataset(pixels)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    image = store(archive, ds, tmp_path)
    assert image.source.pixel_data_offset is None
    assert PixelStore(archive.engine, archive.storage).read_frames(image, [2]) == [
        frames_of(pixels)[1]
    ]


def test_not_an_image_is_not_found(archive: Archive, tmp_path: Path) -> None:
    ds = image_dataset(grayscale_frames(1))
    for keyword in ("Rows", "Columns", "BitsAllocated", "PixelData"):
        delattr(ds, keyword)
    with pytest.raises(NotFoundError, match="no image pixel data"):
        store(archive, ds, tmp_path)


# -- transcoding ------------------------------------------------------------------------
@pytest.mark.parametrize("target", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_native_frames_encode_losslessly(archive: Archive, tmp_path: Path, target: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    rgb = rng.integers(0, 256, size=(2, 40, 36, 3), dtype=np.uint8)
    image = store(archive, image_dataset(rgb, "RGB"), tmp_path)
    frame = PixelStore(archive.engine, archive.storage).read_frames(image, [2])[0]
    encoded = transcode_frame(frame, EXPLICIT, target, image.geometry)
    assert encoded != frame
    assert np.array_equal(decode_frame(encoded, target, image.geometry), rgb[1])
    assert transcode_frame(encoded, target, EXPLICIT, image.geometry) == rgb[1].tobytes()


# -- rendering --------------------------------------------------------------------------
def test_window_and_rescale_follow_the_standard(archive: Archive, tmp_path: Path) -> None:
    pixels = np.array([[0, 1000, 1040, 1240, 2000]], dtype=np.int16)
    ds = image_dataset(pixels)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
    image = store(archive, ds, tmp_path)
    header, geometry = image.header(), image.geometry
    # header window 40/400 on HU -1024, -24, 16, 216, 976 (PS3.3 C.11.2.1.2.1)
    shown = display_pixels(pixels, 1, header, geometry, None)
    assert shown.tolist() == [[0, 87, 112, 240, 255]]
    assert display_pixels(np.array([[1064]], np.int16), 1, header, geometry, None)[0, 0] == 128
    wide = display_pixels(pixels, 1, header, geometry, Window(-24, 2001))
    assert wide[0, 0] == 0 and wide[0, 1] in (127, 128) and wide[0, 4] == 255
    sigmoid = display_pixels(pixels, 1, header, geometry, Window(16, 400, "SIGMOID"))
    assert sigmoid[0, 2] in (127, 128)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.SOPInstanceUID = generate_uid()
    inverted = store(archive, ds, tmp_path)
    assert (
        display_pixels(pixels, 1, inverted.header(), inverted.geometry, None) == 255 - shown
    ).all()


def test_min_max_without_window(archive: Archive, tmp_path: Path) -> None:
    pixels = np.array([[100, 150, 200]], dtype=np.uint16)
    image = store(archive, image_dataset(pixels), tmp_path)
    assert display_pixels(pixels, 1, image.header(), image.geometry, None).tolist() == [
        [0, 128, 255]
    ]


@pytest.mark.parametrize("text", ["40", "a,b", "40,0", "40,400,cubic", "1,2,3,4"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(BadRequestError):
        parse_window(text)


def test_viewport_scales_to_fit_and_flips(archive: Archive, tmp_path: Path) -> None:
    pixels = np.zeros((40, 80), dtype=np.uint16)
    pixels[:, :40] = 1000  # left half bright
    image = store(archive, image_dataset(pixels), tmp_path)

    def rendered(viewport: str) -> Image.Image:
        options = RenderOptions(media_type="image/png", viewport=parse_viewport(viewport))
        body = render([pixels], [1], image.header(), image.geometry, options)
        return Image.open(io.BytesIO(body))

    assert rendered("40,40").size == (40, 20)
    assert rendered("160,400").size == (160, 80)
    flipped = np.asarray(rendered("80,40,80,0,-80,40"))
    assert flipped.shape == (40, 80) and flipped[0, 0] == 0 and flipped[0, 79] == 255
    crop = rendered("20,20,0,0,40,40")
    assert crop.size == (20, 20) and np.asarray(crop).min() == 255
    with pytest.raises(BadRequestError):
        rendered("20,20,60,0,40,40")
    for bad in ("0,10", "10", "a,b", "10,10,1,2,0,4"):
        with pytest.raises(BadRequestError):
            parse_viewport(bad)
    assert Viewport(10, None).height is None


def test_several_frames_need_gif(archive: Archive, tmp_path: Path) -> None:
    pixels = grayscale_frames(3)
    image = store(archive, image_dataset(pixels), tmp_path)
    arrays = [pixels[0], pixels[1]]
    with pytest.raises(NotAcceptableError):
        render(arrays, [1, 2], image.header(), image.geometry, RenderOptions())
    body = render(arrays, [1, 2], image.header(), image.geometry, RenderOptions("image/gif"))
    gif = Image.open(io.BytesIO(body))
    assert gif.format == "GIF" and gif.n_frames == 2


def test_stored_file_round_trip_matches_pydicom(archive: Archive, tmp_path: Path) -> None:
    """The offset recorded at ingest points at the value pydicom reads."""
    pixels = grayscale_frames(2)
    image = store(archive, image_dataset(pixels), tmp_path)
    with archive.storage.open(image.source.storage_key) as stored:
        parsed = dcmread(stored)
    assert PixelStore(archive.engine, archive.storage).read_frames(image, [1, 2]) == [
        parsed.PixelData[: len(parsed.PixelData) // 2],
        parsed.PixelData[len(parsed.PixelData) // 2 :],
    ]


def test_lookup_table_path_equals_direct_computation(archive: Archive, tmp_path: Path) -> None:
    """Large integer frames go through a per-value table: same output as pixel by pixel."""
    pixels = grayscale_frames(1, rows=96, columns=80)
    ds = image_dataset(pixels)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    image = store(archive, ds, tmp_path)
    header, geometry = image.header(), image.geometry
    for window in (None, Window(40, 400), Window(0, 3000, "SIGMOID")):
        fast = display_pixels(pixels, 1, header, geometry, window)
        slow = display_pixels(pixels.astype(np.float32), 1, header, geometry, window)
        assert fast.dtype == np.uint8 and np.array_equal(fast, slow)
