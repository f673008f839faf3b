"""Read and validate an instance's header without touching its pixel data.

Ingest calls :func:`read_header` on the incoming file: it reads the preamble and File
Meta Information (PS3.10 7.1), parses the data set up to (not including) Pixel Data, and
checks what an archive must be able to rely on: the four identifying UIDs, their syntax
(PS3.5 9.1), agreement between File Meta and data set, and a preamble that is not an
executable header (PS3.10 7.5 security note; the PE/DICOM polyglot of CVE-2019-11687).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from openvna.errors import (
    InstanceTooLargeError,
    InvalidInstanceError,
    MissingAttributeError,
    SecurityRejectedError,
)

BULK_THRESHOLD = 4096
"""Values longer than this are deferred at ingest and become BulkDataURIs in DICOM JSON."""
_DEFLATED = ("1.2.840.10008.1.2.1.99",)
MAX_COMPRESSION_RATIO = 200
"""Default inflated bytes per deflated byte beyond which a data set is refused
(``http.max_compression_ratio`` is passed in by ingest)."""
RATIO_CHECK_AFTER = 32 * 1024 * 1024
"""The ratio is checked once this much has been inflated: small data sets never fail it."""
_INFLATE_STEP = 1024 * 1024
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_EXECUTABLE_MAGIC = (b"MZ", b"\x7fELF", b"\xfe\xed\xfa", b"\xcf\xfa\xed\xfe", b"#!")


def is_valid_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, components without leading zeros, at most 64 chars."""
    return 0 < len(value) <= 64 and _UID_PATTERN.match(value) is not None


@dataclass(frozen=True)
class InstanceHeader:
    """What ingest learned from one instance's header."""

    dataset: Dataset
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    dataset_offset: int
    """Byte offset where the data set starts in the source (after any File Meta)."""
    has_file_meta: bool
    warnings: list[str] = field(default_factory=list)


def read_header(
    source: BinaryIO,
    *,
    max_inflated_bytes: int | None = None,
    max_compression_ratio: int = MAX_COMPRESSION_RATIO,
) -> InstanceHeader:
    """Parse and validate the header of the instance in ``source`` (a seekable file).

    A Deflated data set (PS3.5 A.5) is first inflated in bounded steps, keeping
    nothing, when ``max_inflated_bytes`` is given: see :func:`check_inflated_size`.

    Raises
    ------
    InvalidInstanceError
        Not DICOM, truncated or unparseable header.
    MissingAttributeError
        A required UID is missing or malformed, or File Meta disagrees with the data set.
    SecurityRejectedError
        The 128-byte preamble holds an executable header.
    InstanceTooLargeError
        A Deflated data set inflates beyond ``max_inflated_bytes`` or more than
        ``max_compression_ratio`` times (a decompression bomb).
    """
    source.seek(0)
    preamble = source.read(132)
    if len(preamble) < 8:
        raise InvalidInstanceError("not a DICOM file: fewer than 8 bytes")
    has_file_meta = preamble[128:132] == b"DICM"
    if has_file_meta:
        if preamble[:128].startswith(_EXECUTABLE_MAGIC):
            raise SecurityRejectedError(
                "executable preamble rejected: the DICOM preamble holds an executable header "
                "(PS3.10 7.5)"
            )
        _check_file_meta_complete(source)
        source.seek(0)
        try:
            read_preamble(source, force=False)
            file_meta = read_file_meta_info_from(source)
        except Exception as error:  # pydicom raises struct.error and others on bad input
            raise InvalidInstanceError(f"invalid File Meta Information: {error}") from error
        dataset_offset = source.tell()
        transfer_syntax = str(file_meta.get("TransferSyntaxUID", ""))
        if not is_valid_uid(transfer_syntax):
            raise MissingAttributeError("File Meta lacks a valid Transfer Syntax UID (0002,0010)")
        if transfer_syntax in _DEFLATED and max_inflated_bytes is not None:
            check_inflated_size(source, dataset_offset, max_inflated_bytes, max_compression_ratio)
    elif _looks_like_raw_dataset(preamble):
        file_meta = FileMetaDataset()
        dataset_offset = 0
        transfer_syntax = ""  # decided below from what pydicom detects
    else:
        raise InvalidInstanceError("not a DICOM file: no 'DICM' prefix and no data set at start")

    source.seek(0)
    try:
        dataset = dcmread(source, defer_size=BULK_THRESHOLD, force=not has_file_meta)
        _check_complete(source, dataset, dataset_offset)
        # Element values are decoded (and so validated) once, by the DICOM JSON conversion
        # that ingest runs next; large values stay deferred on disk and are never read.
    except InvalidInstanceError:
        raise
    except Exception as error:  # pydicom raises many types on malformed input
        raise InvalidInstanceError(f"unreadable data set: {error}") from error
    if not transfer_syntax:
        transfer_syntax = _encoding_to_transfer_syntax(dataset)

    warnings: list[str] = []
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(dataset.get(keyword, "") or "").strip()
        if not value:
            raise MissingAttributeError(f"required attribute {keyword} is missing or empty")
        if not is_valid_uid(value):
            raise MissingAttributeError(f"{keyword} {value!r} is not a valid UID (PS3.5 9.1)")
        uids[keyword] = value
    if has_file_meta:
        meta_sop_instance = str(file_meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
        if meta_sop_instance and meta_sop_instance != uids["SOPInstanceUID"]:
            warnings.append("MediaStorageSOPInstanceUID differs from SOPInstanceUID; data set wins")
        meta_sop_class = str(file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
        if meta_sop_class and meta_sop_class != uids["SOPClassUID"]:
            warnings.append("MediaStorageSOPClassUID differs from SOPClassUID; data set wins")
    return InstanceHeader(
        dataset=dataset,
        transfer_syntax_uid=str(UID(transfer_syntax)),
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        dataset_offset=dataset_offset,
        has_file_meta=has_file_meta,
        warnings=warnings,
    )


def check_inflated_size(
    source: BinaryIO, dataset_offset: int, max_bytes: int, max_ratio: int
) -> None:
    """Refuse a Deflated data set (PS3.5 A.5) that would inflate beyond the limits.

    pydicom inflates a deflated data set whole into memory, so a few megabytes of
    deflate (which reaches about 1000:1 on runs of one byte) would become gigabytes
    there. This inflates it first in 1 MiB steps, counting and discarding the output,
    and stops at ``max_bytes`` (``ingest.max_dataset_bytes``) or, past
    :data:`RATIO_CHECK_AFTER`, at ``max_ratio`` times the deflated size
    (``http.max_compression_ratio``, the rule STOW-RS applies to compressed bodies).

    Raises
    ------
    InstanceTooLargeError
        A limit is passed (DIMSE 0xA700, HTTP 413).
    InvalidInstanceError
        The deflated data is corrupt.
    """
    deflated = max(source_size(source) - dataset_offset, 1)
    source.seek(dataset_offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    while not inflater.eof:
        data = inflater.unconsumed_tail or source.read(_INFLATE_STEP)
        try:
            piece = inflater.decompress(data, _INFLATE_STEP)
        except zlib.error as error:
            raise InvalidInstanceError(f"corrupt deflated data set: {error}") from error
        if not data and not piece:
            break  # truncated: the parser reports it
        inflated += len(piece)
        if inflated > max_bytes:
            raise InstanceTooLargeError(
                f"deflated data set inflates beyond the limit of {max_bytes} bytes "
                "(ingest.max_dataset_bytes)"
            )
        if inflated > RATIO_CHECK_AFTER and inflated > max_ratio * deflated:
            raise InstanceTooLargeError(
                f"deflated data set of {deflated} bytes expands more than {max_ratio} times: "
                "refused as a decompression bomb (http.max_compression_ratio)"
            )


def _raw_elements(dataset: Dataset) -> Iterator[Any]:
    """Top-level elements as read, deferred values left unread.

    ``Dataset.elements()`` is not usable here: pydicom 3 performs the deferred read in
    ``get_item``, which would load Pixel Data and hide a truncated value.
    """
    for tag in sorted(dataset.keys()):
        yield dataset.get_item(tag, keep_deferred=True)


def source_size(source: BinaryIO) -> int:
    """Size of a seekable source: a real file or an in-memory buffer (``BytesIO``)."""
    try:
        return os.fstat(source.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: no descriptor
        position = source.tell()
        size = source.seek(0, os.SEEK_END)
        source.seek(position)
        return size


def _check_file_meta_complete(source: BinaryIO) -> None:
    """Fail when the file ends before the end of File Meta that its group length declares.

    pydicom stops quietly (or with a ``struct.error``) at a short read, so a file cut
    inside File Meta would otherwise be reported as lacking a Transfer Syntax UID.
    """
    # preamble + 'DICM' (132), then File Meta Information Group Length (0002,0000) UL
    end_of_meta = 132 + 12
    source.seek(132)
    group_length = source.read(12)
    if len(group_length) == 12 and group_length[:6] == b"\x02\x00\x00\x00UL":
        end_of_meta += int.from_bytes(group_length[8:], "little")
    file_size = source_size(source)
    if file_size < end_of_meta:
        raise InvalidInstanceError(
            f"truncated: File Meta Information needs {end_of_meta} bytes, file has {file_size}"
        )


def _check_complete(source: BinaryIO, dataset: Dataset, dataset_offset: int) -> None:
    """Fail when the data set does not end exactly where the file ends.

    pydicom seeks over deferred values and treats a short read at the next tag as the end
    of the data set, so a truncated file would otherwise parse as if it were whole: a
    value (Pixel Data, usually) may run past the end of the file, or the file may end
    inside the header of the next element, leaving bytes no element accounts for.
    """
    if str(getattr(dataset.file_meta, "TransferSyntaxUID", "")) in _DEFLATED:
        return  # inflated into memory by pydicom; zlib reports truncation itself
    file_size = source_size(source)
    end_of_data = dataset_offset
    last_undefined = -1
    offsets_known = True
    for raw in _raw_elements(dataset):
        tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if tell is None or length is None:
            offsets_known = False
            continue
        if length == 0xFFFFFFFF:
            last_undefined = max(last_undefined, tell)
            continue
        if tell + length > file_size:
            raise InvalidInstanceError(
                f"truncated: element {raw.tag} needs {length} bytes at offset {tell}, "
                f"file has {file_size}"
            )
        end_of_data = max(end_of_data, tell + length)
    if offsets_known and last_undefined < end_of_data < file_size:
        raise InvalidInstanceError(
            f"truncated: {file_size - end_of_data} bytes after the last complete element "
            f"(offset {end_of_data}) are not a whole element"
        )


def read_file_meta_info_from(source: BinaryIO) -> FileMetaDataset:
    """Read File Meta from the current position of an open file (after the preamble)."""
    from pydicom.filereader import _read_file_meta_info

    return _read_file_meta_info(source)


def _encoding_to_transfer_syntax(dataset: Dataset) -> str:
    """Transfer syntax of a data set read without File Meta, from how pydicom decoded it."""
    implicit, little = getattr(dataset, "original_encoding", (True, True))
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A data set without preamble starts with a little-endian group 0x0008 (or 0x0002)."""
    return head[:2] in (b"\x08\x00", b"\x02\x00", b"\x00\x08")


__all__ = [
    "InstanceHeader",
    "check_inflated_size",
    "is_valid_uid",
    "read_file_meta_info",
    "read_header",
    "source_size",
]
