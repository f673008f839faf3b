"""The ``application/dicom+json`` form of STOW-RS (PS3.18 10.5.1.2.2).

The request holds DICOM JSON metadata parts (an array of instances, PS3.18 F.2) and bulk
data parts whose ``Content-Location`` matches the ``BulkDataURI`` values of the
metadata. The ingest path takes Part 10 files only, so each instance is rebuilt here as
one: the JSON model is encoded with pydicom, while large bulk data (Pixel Data above
all) is copied from its spooled part without being held in memory. Uncompressed bulk
data gives Explicit VR Little Endian (PS3.18 8.7.3.3.1); a compressed Pixel Data part
gives the transfer syntax its media type names (PS3.18 8.7.3.3.2, Table 8.7.3-5).
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

from openvna.archive.ingest import IMPLEMENTATION_CLASS_UID
from openvna.errors import (
    InvalidInstanceError,
    MissingAttributeError,
    OpenVNAError,
    RequestTooLargeError,
)
from openvna.web.dicomweb.media import MediaRange
from openvna.web.dicomweb.stow_response import IDENTITY_TAGS, TRANSFER_SYNTAX_NOT_SUPPORTED
from openvna.web.dicomweb.stow_spool import MEMORY_SPOOL, ReceivedPart

MAX_METADATA_BYTES = 64 * 1024 * 1024
"""Largest DICOM JSON metadata part (it is parsed in memory)."""

_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "UC", "UR", "UT"})
_PIXEL_DATA = 0x7FE00010
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_MAX_FRAGMENT = 0xFFFFFFFE & ~1
_VIDEO_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))
# PS3.18 Table 8.7.3-5: media type of a compressed bulk data part -> transfer syntaxes,
# the default (used without a transfer-syntax parameter) first.
_BULK_TRANSFER_SYNTAXES: dict[str, tuple[str, ...]] = {
    "application/octet-stream": (str(ExplicitVRLittleEndian),),
    "image/jpeg": tuple(f"1.2.840.10008.1.2.4.{n}" for n in (70, 50, 51, 57)),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": tuple(f"1.2.840.10008.1.2.4.{n}" for n in (201, 202, 203)),
    "image/jxl": tuple(f"1.2.840.10008.1.2.4.{n}" for n in (110, 111, 112)),
    "video/mpeg": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": tuple(f"1.2.840.10008.1.2.4.{n}" for n in (102, 103, 104, 105, 106, 107, 108)),
    "video/h265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}


class _Rejected(OpenVNAError):
    """An instance refused for a reason with its own Failure Reason code."""

    http_status = 409

    def __init__(self, message: str, failure_reason: int) -> None:
        super().__init__(message)
        self.dicom_status = failure_reason


# -- the metadata part ------------------------------------------------------------------


def load_metadata(part: ReceivedPart) -> list[dict[str, Any]]:
    """The instances of a metadata part (a DICOM JSON array, or one object).

    Raises
    ------
    RequestTooLargeError
        The part is larger than :data:`MAX_METADATA_BYTES`.
    InvalidInstanceError
        The part is not JSON, or not an array of objects.
    """
    if part.spool.size > MAX_METADATA_BYTES:
        raise RequestTooLargeError(
            f"DICOM JSON metadata part of {part.spool.size} bytes exceeds {MAX_METADATA_BYTES}"
        )
    try:
        document = json.loads(part.spool.read_all())
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInstanceError(f"metadata part is not valid JSON: {error}") from error
    instances = document if isinstance(document, list) else [document]
    if not all(isinstance(instance, dict) for instance in instances):
        raise InvalidInstanceError("metadata part is not an array of DICOM JSON objects")
    return instances


def json_identity(instance: dict[str, Any]) -> dict[str, str]:
    """The identifying UIDs of a DICOM JSON instance by keyword, empty where absent."""
    return {keyword: _json_value(instance, tag) for keyword, tag in IDENTITY_TAGS}


def _json_value(instance: dict[str, Any], tag: str) -> str:
    element = instance.get(tag) or instance.get(tag.lower())
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values and isinstance(values[0], str):
            return values[0].strip()
    return ""


# -- rebuilding a Part 10 file from DICOM JSON and bulk data -------------------------


def write_part10(instance: dict[str, Any], bulk: dict[str, ReceivedPart], out: BinaryIO) -> None:
    """Write the instance described by DICOM JSON ``instance`` as a Part 10 file.

    Top-level bulk data with a 4-byte length VR (Pixel Data, above all) is copied from
    its part without being held in memory; nested ``BulkDataURI`` values are read in.
    Uncompressed bulk data gives Explicit VR Little Endian (PS3.18 8.7.3.3.1); a
    compressed Pixel Data part gives the transfer syntax of its media type and
    ``transfer-syntax`` parameter (PS3.18 Table 8.7.3-5), encapsulated as one fragment
    per frame (PS3.5 A.4), so single-frame images and video streams.

    Raises
    ------
    OpenVNAError
        Invalid JSON model, missing bulk data, unsupported compressed form.
    """

    def resolve(uri: str) -> ReceivedPart:
        part = bulk.get(uri.strip())
        if part is None:
            raise MissingAttributeError(
                f"bulk data {uri} named by the metadata is not a part of the request "
                "(no part with that Content-Location)"
            )
        return part

    streamed: dict[int, tuple[str, ReceivedPart]] = {}
    plain: dict[str, Any] = {}
    for key, element in instance.items():
        if not isinstance(element, dict) or len(key) != 8:
            raise InvalidInstanceError(f"{key!r} is not a DICOM JSON attribute (PS3.18 F.2)")
        if key.startswith("0002"):
            continue  # File Meta Information is ours to write
        uri = element.get("BulkDataURI")
        if isinstance(uri, str) and element.get("vr") in _LONG_LENGTH_VRS:
            try:
                streamed[int(key, 16)] = (str(element["vr"]), resolve(uri))
            except ValueError as error:
                raise InvalidInstanceError(f"{key!r} is not a DICOM tag") from error
        else:
            plain[key] = element
    try:
        dataset = Dataset.from_json(plain, lambda _tag, _vr, uri: resolve(uri).spool.read_all())
    except OpenVNAError:
        raise
    except Exception as error:  # pydicom raises many types on a malformed model
        raise InvalidInstanceError(f"invalid DICOM JSON: {error}") from error
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    sop_instance = str(dataset.get("SOPInstanceUID", "") or "")
    if not sop_class or not sop_instance:
        raise MissingAttributeError("the metadata lacks SOPClassUID or SOPInstanceUID")

    transfer_syntax = str(ExplicitVRLittleEndian)
    pixel = streamed.get(_PIXEL_DATA)
    if pixel is not None:
        transfer_syntax = _bulk_transfer_syntax(pixel[1].media_type)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if (
            frames > 1
            and _encapsulated(transfer_syntax)
            and transfer_syntax not in (_VIDEO_SYNTAXES)
        ):
            raise _Rejected(
                "compressed multi-frame Pixel Data in one bulk data part is not supported "
                "(send it as a Part 10 instance)",
                TRANSFER_SYNTAX_NOT_SUPPORTED,
            )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    out.write(b"\x00" * 128 + b"DICM")
    writer = DicomFileLike(out)
    writer.is_little_endian = True
    writer.is_implicit_VR = False
    try:
        write_file_meta_info(writer, meta, enforce_standard=True)
        charset = dataset.get("SpecificCharacterSet") or "ISO_IR 6"
        encoding = list(charset) if not isinstance(charset, str) else charset
        segment = Dataset()
        for tag in sorted({*dataset.keys(), *streamed}):
            if tag in streamed:
                if len(segment):
                    write_dataset(writer, segment, encoding)
                    segment = Dataset()
                vr, part = streamed[tag]
                if tag == _PIXEL_DATA and _encapsulated(transfer_syntax):
                    _write_encapsulated(out, part)
                else:
                    _write_long_element(out, tag, vr, part)
            else:
                segment.add(dataset[tag])
        if len(segment):
            write_dataset(writer, segment, encoding)
    except OpenVNAError:
        raise
    except Exception as error:
        raise InvalidInstanceError(f"the metadata cannot be encoded: {error}") from error


def _encapsulated(transfer_syntax: str) -> bool:
    return transfer_syntax != str(ExplicitVRLittleEndian)


def _bulk_transfer_syntax(media: MediaRange) -> str:
    allowed = _BULK_TRANSFER_SYNTAXES.get(media.media_type)
    if allowed is None:
        raise _Rejected(
            f"Pixel Data media type {media.media_type} is not supported (PS3.18 8.7.3.3)",
            TRANSFER_SYNTAX_NOT_SUPPORTED,
        )
    requested = media.transfer_syntax
    if requested is None:
        return allowed[0]
    if requested not in allowed:
        raise _Rejected(
            f"transfer-syntax {requested} does not go with media type {media.media_type}",
            TRANSFER_SYNTAX_NOT_SUPPORTED,
        )
    return requested


def _copy(out: BinaryIO, part: ReceivedPart) -> None:
    source = part.spool.source()
    while chunk := source.read(MEMORY_SPOOL):
        out.write(chunk)


def _write_long_element(out: BinaryIO, tag: int, vr: str, part: ReceivedPart) -> None:
    """An Explicit VR Little Endian element with a 4-byte length (PS3.5 7.1.2)."""
    size = part.spool.size
    padded = size + (size & 1)
    if padded > 0xFFFFFFFE:
        raise InvalidInstanceError(f"bulk data of {size} bytes is too long for one element")
    out.write(struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, padded))
    _copy(out, part)
    if size & 1:
        out.write(b" " if vr in ("UC", "UR", "UT") else b"\x00")


def _write_encapsulated(out: BinaryIO, part: ReceivedPart) -> None:
    """Pixel Data of undefined length: empty Basic Offset Table, the stream as fragments
    (PS3.5 A.4); a video stream longer than one fragment is cut, which A.4 allows."""
    out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
    out.write(_ITEM + struct.pack("<I", 0))
    source = part.spool.source()
    left = part.spool.size
    while left > 0:
        fragment = min(left, _MAX_FRAGMENT)
        padded = fragment + (fragment & 1)
        out.write(_ITEM + struct.pack("<I", padded))
        remaining = fragment
        while remaining:
            chunk = source.read(min(remaining, MEMORY_SPOOL))
            if not chunk:
                raise InvalidInstanceError("bulk data part ended early")
            out.write(chunk)
            remaining -= len(chunk)
        if fragment & 1:
            out.write(b"\x00")
        left -= fragment
    out.write(_SEQUENCE_DELIMITER)


__all__ = [
    "MAX_METADATA_BYTES",
    "json_identity",
    "load_metadata",
    "write_part10",
]
