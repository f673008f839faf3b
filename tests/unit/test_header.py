"""read_header: what ingest relies on, and what it refuses (PS3.10 7.1, 7.5; PS3.5 9.1)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from openvna.app import open_archive
from openvna.archive.header import InstanceHeader, is_valid_uid, read_header
from openvna.cli.importer import ImportItem, ImportSummary, import_item
from openvna.config import load_settings
from openvna.errors import (
    InvalidInstanceError,
    MissingAttributeError,
    OpenVNAError,
    SecurityRejectedError,
)

SOP_UID = "1.2.826.0.1.3680043.8.498.11.1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.11.2"
SERIES_UID = "1.2.826.0.1.3680043.8.498.11.3"


def dataset(pixels: int = 0, **overrides: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.PatientID = "H1"
    ds.PatientName = "Header^Test"
    ds.Modality = "CT"
    if pixels:
        ds.Rows = 1
        ds.Columns = pixels // 2
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.SamplesPerPixel = 1
        ds.PixelRepresentation = 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(range(256)) * (pixels // 256)
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_part10(path: Path, ds: Dataset, preamble: bytes = b"\x00" * 128) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.preamble = preamble
    ds.save_as(path, enforce_file_format=True)
    return path


def read(path: Path) -> InstanceHeader:
    with path.open("rb") as source:
        return read_header(source)


def test_valid_part10_file(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "ok.dcm", dataset(pixels=8192))
    header = read(path)
    assert header.has_file_meta is True
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian
    assert header.sop_class_uid == CTImageStorage
    assert header.sop_instance_uid == SOP_UID
    assert header.study_instance_uid == STUDY_UID
    assert header.series_instance_uid == SERIES_UID
    assert header.warnings == []
    assert header.dataset.PatientID == "H1"
    # the data set starts right after preamble, 'DICM' and the File Meta group
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    assert 132 < header.dataset_offset < len(raw)
    assert raw[header.dataset_offset : header.dataset_offset + 2] == b"\x08\x00"


def test_data_set_without_preamble(tmp_path: Path) -> None:
    path = tmp_path / "raw.dcm"
    dataset().save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[:2] == b"\x08\x00"
    header = read(path)
    assert header.has_file_meta is False
    assert header.dataset_offset == 0
    assert header.transfer_syntax_uid == ImplicitVRLittleEndian
    assert header.sop_instance_uid == SOP_UID


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "cut.dcm", dataset(pixels=8192))
    whole = path.read_bytes()
    path.write_bytes(whole[:-100])
    with pytest.raises(InvalidInstanceError, match="truncated") as caught:
        read(path)
    assert type(caught.value) is InvalidInstanceError
    assert caught.value.http_status == 400


def test_not_dicom_at_all(tmp_path: Path) -> None:
    path = tmp_path / "text.dcm"
    path.write_bytes(b"hello, this is not a DICOM file" * 10)
    with pytest.raises(InvalidInstanceError, match="not a DICOM file") as caught:
        read(path)
    assert type(caught.value) is InvalidInstanceError
    tiny = tmp_path / "tiny.dcm"
    tiny.write_bytes(b"DICM")
    with pytest.raises(InvalidInstanceError, match="fewer than 8 bytes"):
        read(tiny)


@pytest.mark.parametrize("magic", [b"MZ", b"\x7fELF", b"#!"])
def test_executable_preamble_is_rejected(tmp_path: Path, magic: bytes) -> None:
    preamble = magic + b"\x90" * (128 - len(magic))
    path = write_part10(tmp_path / "polyglot.dcm", dataset(), preamble=preamble)
    with pytest.raises(SecurityRejectedError, match="executable preamble") as caught:
        read(path)
    assert isinstance(caught.value, OpenVNAError)
    assert caught.value.dicom_status == 0xC000


def test_preamble_with_other_bytes_is_accepted(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "tiff.dcm", dataset(), preamble=b"II*\x00" + b"\x00" * 124)
    assert read(path).sop_instance_uid == SOP_UID


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "1.2.03.4"),  # leading zero in a component
        ("StudyInstanceUID", "1.2.abc"),
        ("SeriesInstanceUID", "1." + "2" * 70),  # longer than 64 characters
        ("SOPClassUID", "1..2"),
    ],
)
def test_invalid_uid(tmp_path: Path, keyword: str, value: str) -> None:
    ds = dataset(**{keyword: value})
    path = tmp_path / "bad.dcm"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MissingAttributeError, match=f"{keyword} .* is not a valid UID") as caught:
        read(path)
    assert caught.value.dicom_status == 0xA900


@pytest.mark.parametrize(
    "keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_missing_identifying_uid(tmp_path: Path, keyword: str) -> None:
    path = write_part10(tmp_path / "missing.dcm", dataset(**{keyword: None}))
    with pytest.raises(MissingAttributeError, match=f"{keyword} is missing") as caught:
        read(path)
    assert isinstance(caught.value, InvalidInstanceError)


def test_empty_sop_instance_uid_counts_as_missing(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "empty.dcm", dataset(SOPInstanceUID=""))
    with pytest.raises(MissingAttributeError, match="SOPInstanceUID is missing or empty"):
        read(path)


def test_file_meta_disagreement_is_a_warning(tmp_path: Path) -> None:
    path = write_part10(tmp_path / "meta.dcm", dataset())
    raw = path.read_bytes()
    other = SOP_UID[:-1] + "9"
    assert raw.count(SOP_UID.encode()) == 2  # File Meta, then the data set
    path.write_bytes(raw.replace(SOP_UID.encode(), other.encode(), 1))
    header = read(path)
    assert header.sop_instance_uid == SOP_UID  # the data set wins
    assert header.warnings == [
        "MediaStorageSOPInstanceUID differs from SOPInstanceUID; data set wins"
    ]


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("1.0.2", True),
        ("", False),
        ("1.02", False),
        ("1.2.", False),
        (".1", False),
        ("1." + "1" * 62, True),
        ("1." + "1" * 63, False),
    ],
)
def test_is_valid_uid(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


# -- truncation anywhere, not only inside a deferred value ------------------------------


def test_every_cut_inside_file_meta_is_an_invalid_instance(tmp_path: Path) -> None:
    """A file cut in File Meta is refused as truncated, never with a pydicom exception.

    Cuts inside a File Meta element used to escape as ``struct.error`` or pydicom's
    ``BytesLengthException`` (which the importer does not catch) or to be reported as a
    missing Transfer Syntax UID.
    """
    whole = write_part10(tmp_path / "ok.dcm", dataset()).read_bytes()
    dataset_offset = read(tmp_path / "ok.dcm").dataset_offset
    cut = tmp_path / "cut.dcm"
    for end in range(132, dataset_offset):
        cut.write_bytes(whole[:end])
        with pytest.raises(InvalidInstanceError) as caught:
            read(cut)
        # until the group length element is whole, only its own end is known
        needed = dataset_offset if end >= 132 + 12 else 132 + 12
        assert str(caught.value) == (
            f"truncated: File Meta Information needs {needed} bytes, file has {end}"
        ), end
        assert type(caught.value) is InvalidInstanceError


def test_file_ending_inside_an_element_header_is_truncated(tmp_path: Path) -> None:
    """A file cut 1 to 7 bytes into the next element's header lost that element."""
    path = write_part10(tmp_path / "ok.dcm", dataset(pixels=8192))
    whole = path.read_bytes()
    header = read(path)
    pixel_data = header.dataset.get_item(0x7FE00010, keep_deferred=True)
    element_start = pixel_data.value_tell - 12  # explicit VR OW: tag, VR, 2 reserved, length
    for extra in range(1, 8):
        path.write_bytes(whole[: element_start + extra])
        with pytest.raises(InvalidInstanceError) as caught:
            read(path)
        assert str(caught.value) == (
            f"truncated: {extra} bytes after the last complete element "
            f"(offset {element_start}) are not a whole element"
        )
    path.write_bytes(whole[:element_start])  # cut exactly between elements: still a data set
    assert read(path).sop_instance_uid == SOP_UID


def test_data_set_without_preamble_cut_inside_an_element_header(tmp_path: Path) -> None:
    path = tmp_path / "raw.dcm"
    dataset().save_as(path, implicit_vr=True, little_endian=True)
    path.write_bytes(path.read_bytes() + b"\x10\x00\x10")  # 3 bytes of a next element
    with pytest.raises(InvalidInstanceError, match="truncated: 3 bytes after"):
        read(path)


def test_in_memory_source(tmp_path: Path) -> None:
    """A seekable buffer without a file descriptor works like a file (no 'fileno' error)."""
    whole = write_part10(tmp_path / "ok.dcm", dataset(pixels=8192)).read_bytes()
    header = read_header(io.BytesIO(whole))
    assert header.sop_instance_uid == SOP_UID
    assert header.has_file_meta is True
    with pytest.raises(InvalidInstanceError, match=r"truncated: element \(7FE0,0010\)"):
        read_header(io.BytesIO(whole[:-100]))


def test_importer_counts_a_file_cut_in_file_meta_as_rejected(tmp_path: Path) -> None:
    """The importer catches OpenVNAError only: a raw pydicom error would end the import."""
    whole = write_part10(tmp_path / "ok.dcm", dataset()).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[:153])  # inside the length of (0002,0001): pydicom raised struct.error
    archive, executor = open_archive(load_settings(None, data_dir=tmp_path / "data"))
    try:
        summary = ImportSummary()
        for path in (cut, tmp_path / "ok.dcm"):
            import_item(archive, ImportItem(name=path.name, path=path), summary, tmp_path)
        assert (summary.imported, summary.rejected) == (1, 1)
        assert summary.rejected_files[0][0] == "cut.dcm"
        assert summary.rejected_files[0][1].startswith("truncated: File Meta Information")
        assert archive.repository.count_instances() == 1
    finally:
        executor.shutdown()
        archive.close()
