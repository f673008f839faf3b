"""The hand-encoded File Meta group equals what pydicom's writer produces."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from openvna.archive.header import InstanceHeader
from openvna.archive.ingest import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    canonical_file_meta,
)


def _header(sop_class: str, sop_instance: str, transfer_syntax: str) -> InstanceHeader:
    return InstanceHeader(
        dataset=Dataset(),
        transfer_syntax_uid=transfer_syntax,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        dataset_offset=0,
        has_file_meta=False,
    )


def _pydicom_file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "transfer_syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5.6", "1.2.840.10008.1.2.1"),  # even lengths
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5", "1.2.840.10008.1.2"),  # odd: NUL padded
        ("1.2.840.10008.5.1.4.1.1.7", "2.25." + "9" * 59, "1.2.840.10008.1.2.4.50"),  # 64 chars
    ],
)
def test_file_meta_matches_pydicom(sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
    ours = canonical_file_meta(_header(sop_class, sop_instance, transfer_syntax))
    assert ours == _pydicom_file_meta(sop_class, sop_instance, transfer_syntax)
    meta = dcmread(BytesIO(ours + b"\x08\x00\x05\x00CS\x00\x00"), force=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert meta.TransferSyntaxUID == transfer_syntax
    assert meta.FileMetaInformationVersion == b"\x00\x01"
