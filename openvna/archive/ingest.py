"""The one ingest path (ARCHITECTURE.md property 1).

C-STORE, STOW-RS, ``openvna import`` and every later producer hand a file to
:meth:`Ingestor.ingest_file`. The order is fixed: read and validate the header (never
the pixels), write the canonical Part 10 file to storage (temp file, fsync, rename,
fsync directory), commit the index row, and only then return, so the caller's success
answer always refers to bytes that survive a crash. The stored file gets a fresh File
Meta Information group (zero preamble, our Implementation Class UID): the received data
set bytes follow unchanged, so retrieval returns exactly what was sent.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from openvna import __version__
from openvna.archive.dicomjson import dataset_to_json
from openvna.archive.events import EventBus, InstanceStored
from openvna.archive.header import (
    MAX_COMPRESSION_RATIO,
    InstanceHeader,
    read_header,
    source_size,
)
from openvna.config import IngestSettings
from openvna.errors import (
    DuplicateInstanceError,
    InstanceTooLargeError,
    InvalidInstanceError,
    MissingAttributeError,
    OpenVNAError,
    OutOfResourcesError,
    StudyMismatchError,
)
from openvna.index.repository import IndexRepository, InstanceRecord, StoreOutcome
from openvna.storage.base import PendingWrite, Storage

logger = logging.getLogger(__name__)

IMPLEMENTATION_CLASS_UID = "2.25.160178458123429914389315417287013519843"
IMPLEMENTATION_VERSION_NAME = f"OPENVNA_{__version__.replace('.', '')}"[:16]
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Origin:
    """Who sent the instance and how (recorded in the index, used by audit later)."""

    protocol: str
    calling_aet: str = ""
    remote_address: str = ""


@dataclass(frozen=True)
class ExpectedIdentity:
    """What the transport said the instance is; an empty UID is not checked.

    C-STORE names the Affected SOP Class and Instance UID; a study-scoped STOW-RS
    (``POST /studies/{study}``) names the study. Checking them here, on the header the
    ingest path reads anyway, costs no second read of the file.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str = ""


@dataclass(frozen=True)
class IngestResult:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    outcome: StoreOutcome
    storage_key: str | None
    warnings: list[str] = field(default_factory=list)


class Ingestor:
    """Validates, stores and indexes instances; emits ``InstanceStored``."""

    def __init__(
        self,
        storage: Storage,
        repository: IndexRepository,
        bus: EventBus,
        settings: IngestSettings,
        *,
        max_compression_ratio: int = MAX_COMPRESSION_RATIO,
    ) -> None:
        self._storage = storage
        self._repository = repository
        self._bus = bus
        self._settings = settings
        self._max_compression_ratio = max_compression_ratio
        """``http.max_compression_ratio``: also bounds how far a Deflated data set inflates."""

    def ingest_file(
        self,
        source: BinaryIO,
        *,
        origin: Origin,
        expected: ExpectedIdentity | None = None,
    ) -> IngestResult:
        """Store the instance in ``source`` (a seekable binary file) durably.

        Raises
        ------
        OpenVNAError
            A subclass naming what was wrong, carrying its DICOM and HTTP status;
            ``DuplicateInstanceError`` is a warning (the archive already holds that UID).
        """
        size = source_size(source)
        if size > self._settings.max_dataset_bytes:
            raise InstanceTooLargeError(
                f"instance of {size} bytes exceeds the limit of "
                f"{self._settings.max_dataset_bytes} bytes"
            )
        header = read_header(
            source,
            max_inflated_bytes=self._settings.max_dataset_bytes,
            max_compression_ratio=self._max_compression_ratio,
        )
        if expected is not None:
            _check_expected(header, expected)
        try:
            header_json = dataset_to_json(header.dataset)
        except (ValueError, TypeError, KeyError) as error:
            raise InvalidInstanceError(f"unreadable attribute value: {error}") from error

        file_meta = canonical_file_meta(header)
        pixel_location = pixel_data_location(header, len(file_meta))
        pending = self._storage.begin_write()
        try:
            _write_canonical_file(pending, source, header, file_meta)
            stored = pending.commit()
        except OpenVNAError:
            pending.discard()
            raise
        except OSError as error:
            pending.discard()
            raise OutOfResourcesError(f"could not read or store the instance: {error}") from error

        record = InstanceRecord(
            header=header_json,
            header_text=json.dumps(header_json, separators=(",", ":"), ensure_ascii=False),
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            stored=stored,
            calling_aet=origin.calling_aet,
            received_at=time.time(),
            pixel_data_offset=pixel_location[0] if pixel_location else None,
            pixel_data_length=pixel_location[1] if pixel_location else None,
        )
        try:
            result = self._repository.store_instance(record, self._settings.duplicate_policy)
        except Exception as error:
            self._storage.delete(stored.key)
            raise OutOfResourcesError(f"index update failed: {error}") from error
        if result.obsolete_key is not None:
            self._storage.delete(result.obsolete_key)

        if result.outcome is StoreOutcome.DUPLICATE_REJECTED:
            raise DuplicateInstanceError(
                f"SOP Instance {header.sop_instance_uid} is already stored with different "
                "content; the stored instance was kept (duplicate policy: reject)"
            )
        kept_key = None if result.outcome is StoreOutcome.DUPLICATE_SAME else stored.key
        if kept_key is not None:
            self._bus.publish(
                InstanceStored(
                    study_instance_uid=header.study_instance_uid,
                    series_instance_uid=header.series_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    sop_class_uid=header.sop_class_uid,
                    storage_key=kept_key,
                    calling_aet=origin.calling_aet,
                    outcome=result.outcome.value,
                )
            )
        return IngestResult(
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            outcome=result.outcome,
            storage_key=kept_key,
            warnings=list(header.warnings),
        )


def _check_expected(header: InstanceHeader, expected: ExpectedIdentity) -> None:
    if expected.sop_instance_uid and expected.sop_instance_uid != header.sop_instance_uid:
        raise MissingAttributeError(
            "Affected SOP Instance UID of the request does not match the data set's SOPInstanceUID"
        )
    if expected.sop_class_uid and expected.sop_class_uid != header.sop_class_uid:
        raise MissingAttributeError(
            "Affected SOP Class UID of the request does not match the data set's SOPClassUID"
        )
    if expected.study_instance_uid and expected.study_instance_uid != header.study_instance_uid:
        raise StudyMismatchError(
            f"StudyInstanceUID {header.study_instance_uid} of the data set differs from the "
            f"study {expected.study_instance_uid} the request is addressed to"
        )


def canonical_file_meta(header: InstanceHeader) -> bytes:
    """Preamble, 'DICM' and a File Meta group of our own (PS3.10 7.1).

    Encoded directly (explicit VR little endian, six elements): this runs for every
    instance, and building it through pydicom's writer costs more than the rest of the
    header handling; ``tests/unit/test_ingest_file_meta.py`` checks it against pydicom.
    """
    body = b"".join(
        (
            _FILE_META_VERSION,
            _meta_element(0x0002, "UI", header.sop_class_uid),
            _meta_element(0x0003, "UI", header.sop_instance_uid),
            _meta_element(0x0010, "UI", header.transfer_syntax_uid),
            _IMPLEMENTATION_ELEMENTS,
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _meta_element(element: int, vr: str, value: str) -> bytes:
    """One group 0002 element with a 2-byte length (UI padded with NUL, SH with space)."""
    encoded = value.encode("ascii")
    if len(encoded) % 2:
        encoded += b"\x00" if vr == "UI" else b" "
    return struct.pack("<HH2sH", 0x0002, element, vr.encode("ascii"), len(encoded)) + encoded


# (0002,0001) File Meta Information Version: OB, 2 reserved bytes, 4-byte length, 00 01
_FILE_META_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_IMPLEMENTATION_ELEMENTS = _meta_element(0x0012, "UI", IMPLEMENTATION_CLASS_UID) + _meta_element(
    0x0013, "SH", IMPLEMENTATION_VERSION_NAME
)


def pixel_data_location(header: InstanceHeader, file_meta_length: int) -> tuple[int, int] | None:
    """(offset in the stored file, value length) of the top-level Pixel Data value.

    None when the instance has no Pixel Data or its bytes are not addressable in the
    stored file (Deflated transfer syntax: the data set is compressed as a whole).
    """
    if header.transfer_syntax_uid in _DEFLATED_SYNTAXES or _PIXEL_DATA not in header.dataset:
        return None
    raw = header.dataset.get_item(_PIXEL_DATA, keep_deferred=True)
    value_tell = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    if value_tell is None or length is None:
        return None
    return file_meta_length + int(value_tell) - header.dataset_offset, int(length)


_PIXEL_DATA = 0x7FE00010
_DEFLATED_SYNTAXES = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


def _write_canonical_file(
    pending: PendingWrite, source: BinaryIO, header: InstanceHeader, file_meta: bytes
) -> None:
    pending.write(file_meta)
    source.seek(header.dataset_offset)
    while chunk := source.read(_COPY_CHUNK):
        pending.write(chunk)


__all__ = [
    "ExpectedIdentity",
    "IngestResult",
    "Ingestor",
    "Origin",
]
