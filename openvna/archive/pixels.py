"""Frames of stored instances, read straight from the stored Part 10 file.

Ingest records where the top-level Pixel Data value starts in the stored file and its
length (``pixel_data_offset`` / ``pixel_data_length``), and the index keeps the DICOM JSON
header, so a frame costs no parse:

* native (uncompressed) Pixel Data (PS3.5 8.1.1): frames are contiguous, frame *n* is one
  ``os.pread`` of ``frame_length`` bytes at ``offset + (n - 1) * frame_length``;
* encapsulated Pixel Data (PS3.5 A.4): the item headers after the offset are walked once
  (the Extended Offset Table, PS3.3 C.7.6.3.1.8, spares even that when it is inline in the
  header) and the per-frame fragment table is kept in a bounded LRU keyed by storage key
  (stored objects never change under a key, so an entry never goes stale); how frames map
  to fragments is :mod:`openvna.archive.encapsulated`.

Rows without a recorded offset (deflated transfer syntax, rows indexed before the column
existed) fall back to parsing the file with pydicom; the same code then works on the
in-memory value. Everything here blocks: callers in async code run it in a thread.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread
from sqlalchemy import Engine

from openvna.archive.encapsulated import (
    Read,
    Segments,
    StoredPixelDataError,
    fragment_table,
)
from openvna.errors import NotFoundError
from openvna.index.pixels import PixelSource, find_pixel_source, find_representative
from openvna.storage.base import Storage

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        EXPLICIT_VR_LITTLE_ENDIAN,
        "1.2.840.10008.1.2.1.99",
        EXPLICIT_VR_BIG_ENDIAN,
    }
)
"""Transfer syntaxes whose Pixel Data is native (not encapsulated), PS3.5 A.1-A.3, A.5."""


def _first(header: dict[str, Any], tag: str) -> Any:
    values = header.get(tag, {}).get("Value")
    return values[0] if values else None


def _int(header: dict[str, Any], tag: str, default: int | None = None) -> int | None:
    value = _first(header, tag)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class FrameGeometry:
    """The Image Pixel Module attributes a frame's bytes depend on (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    number_of_frames: int
    planar_configuration: int

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> FrameGeometry:
        """Read from a DICOM JSON header; NotFoundError when it describes no image."""
        rows = _int(header, "00280010")
        columns = _int(header, "00280011")
        bits_allocated = _int(header, "00280100")
        if not rows or not columns or not bits_allocated:
            raise NotFoundError("the instance has no image pixel data (no Rows/Columns)")
        return cls(
            rows=rows,
            columns=columns,
            samples_per_pixel=_int(header, "00280002", 1) or 1,
            bits_allocated=bits_allocated,
            bits_stored=_int(header, "00280101", bits_allocated) or bits_allocated,
            pixel_representation=_int(header, "00280103", 0) or 0,
            photometric_interpretation=str(_first(header, "00280004") or "MONOCHROME2"),
            number_of_frames=max(1, _int(header, "00280008", 1) or 1),
            planar_configuration=_int(header, "00280006", 0) or 0,
        )

    @property
    def frame_bits(self) -> int:
        """Bits of one native frame; YBR_FULL_422 stores two samples per pixel (C.7.6.3.1.2)."""
        samples = 2 if self.photometric_interpretation == "YBR_FULL_422" else self.samples_per_pixel
        return self.rows * self.columns * samples * self.bits_allocated

    def pixel_options(self) -> dict[str, Any]:
        """Keyword arguments of pydicom's pixel decoders and encoders for one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": 1,
        }


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An instance located in the index, with the geometry its header declares."""

    source: PixelSource
    geometry: FrameGeometry

    @property
    def transfer_syntax_uid(self) -> str:
        return self.source.transfer_syntax_uid

    @property
    def is_native(self) -> bool:
        """Native Pixel Data, or uncompressed frames in fragments (1.2.840.10008.1.2.1.98)."""
        return self.transfer_syntax_uid in NATIVE_SYNTAXES or (
            self.transfer_syntax_uid == ENCAPSULATED_UNCOMPRESSED
        )

    @property
    def stored_frame_syntax(self) -> str:
        """The transfer syntax of :meth:`PixelStore.read_frames` output: native frames
        come out little endian (Explicit VR Little Endian), compressed ones as stored."""
        return EXPLICIT_VR_LITTLE_ENDIAN if self.is_native else self.transfer_syntax_uid

    def header(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.source.dicom_json)
        return parsed

    def check_frames(self, numbers: Sequence[int]) -> None:
        """NotFoundError naming the first frame number the instance does not have."""
        count = self.geometry.number_of_frames
        for number in numbers:
            if not 1 <= number <= count:
                raise NotFoundError(
                    f"frame {number} does not exist: instance {self.source.sop_instance_uid} "
                    f"has {count} frame{'s' if count > 1 else ''}"
                )


class PixelStore:
    """Locates instances in the index and reads their frames from storage.

    One per application; thread-safe (the fragment-table LRU is guarded by a lock).
    """

    def __init__(self, engine: Engine, storage: Storage, *, cache_size: int = 2048) -> None:
        self._engine = engine
        self._storage = storage
        self._cache_size = cache_size
        self._geometries: OrderedDict[str, FrameGeometry] = OrderedDict()
        self._fragments: OrderedDict[str, tuple[Segments, ...]] = OrderedDict()
        self._lock = threading.Lock()

    # -- locating -------------------------------------------------------------------
    def instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> StoredImage:
        """The instance at this triple with its geometry (NotFoundError when absent or
        not an image)."""
        return self.image(self.source(study_uid, series_uid, sop_instance_uid))

    def source(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> PixelSource:
        """The instance at this triple, image or not (NotFoundError when absent)."""
        return find_pixel_source(self._engine, study_uid, series_uid, sop_instance_uid)

    def representative(self, study_uid: str, series_uid: str | None = None) -> StoredImage:
        """The image standing for a study or series (thumbnails)."""
        return self.image(find_representative(self._engine, study_uid, series_uid))

    def image(self, source: PixelSource) -> StoredImage:
        """``source`` with the geometry its header declares (NotFoundError: no image)."""
        geometry = self._cached(self._geometries, source.storage_key)
        if geometry is None:
            geometry = FrameGeometry.from_header(json.loads(source.dicom_json))
            self._remember(self._geometries, source.storage_key, geometry)
        return StoredImage(source, geometry)

    # -- reading --------------------------------------------------------------------
    def read_frames(self, image: StoredImage, numbers: Sequence[int]) -> list[bytes]:
        """The frames as stored: native ones little endian, compressed ones as their
        codestream (all fragments of the frame joined)."""
        image.check_frames(numbers)
        source = image.source
        if source.pixel_data_offset is None:
            value = self._parse_pixel_data(image)
            return self._frames_from(image, numbers, _memory_reader(value), 0, len(value), None)
        path = self._storage.local_path(source.storage_key)
        if path is None:
            with self._storage.open(source.storage_key) as stored:

                def read(position: int, length: int) -> bytes:
                    stored.seek(position)
                    return stored.read(length)

                return self._frames_from(
                    image,
                    numbers,
                    read,
                    source.pixel_data_offset,
                    source.pixel_data_length,
                    source.storage_key,
                )
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError as error:
            raise NotFoundError(f"stored object of {source.sop_instance_uid} is gone") from error
        try:
            return self._frames_from(
                image,
                numbers,
                _file_reader(descriptor),
                source.pixel_data_offset,
                source.pixel_data_length,
                source.storage_key,
            )
        finally:
            os.close(descriptor)

    def _frames_from(
        self,
        image: StoredImage,
        numbers: Sequence[int],
        read: Read,
        start: int,
        length: int | None,
        cache_key: str | None,
    ) -> list[bytes]:
        if image.transfer_syntax_uid in NATIVE_SYNTAXES:
            frames = [_native_frame(read, start, length, image.geometry, n) for n in numbers]
            if image.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN:
                frames = [_swap_to_little_endian(frame, image.geometry) for frame in frames]
            return frames
        table = self._cached(self._fragments, cache_key) if cache_key else None
        if table is None:
            table = fragment_table(read, start, image.geometry.number_of_frames, image.header)
            if cache_key:
                self._remember(self._fragments, cache_key, table)
        if len(table) < image.geometry.number_of_frames:
            raise StoredPixelDataError(
                f"instance {image.source.sop_instance_uid} declares "
                f"{image.geometry.number_of_frames} frames but its Pixel Data holds {len(table)}"
            )
        return [b"".join(read(pos, size) for pos, size in table[n - 1]) for n in numbers]

    def _parse_pixel_data(self, image: StoredImage) -> bytes:
        """Pixel Data value through pydicom, for rows without a recorded offset."""
        with self._storage.open(image.source.storage_key) as stored:
            dataset = dcmread(stored)
        if "PixelData" not in dataset:
            raise NotFoundError(f"instance {image.source.sop_instance_uid} has no Pixel Data")
        return bytes(dataset.PixelData)

    # -- the LRU ----------------------------------------------------------------------
    def _cached(self, cache: OrderedDict[str, Any], key: str) -> Any:
        with self._lock:
            value = cache.get(key)
            if value is not None:
                cache.move_to_end(key)
            return value

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self._cache_size:
                cache.popitem(last=False)


def _file_reader(descriptor: int) -> Read:
    def read(position: int, length: int) -> bytes:
        data = os.pread(descriptor, length, position)
        if len(data) == length or not data:
            return data
        parts = [data]  # a short read (rare on local files): keep reading
        got = len(data)
        while got < length:
            more = os.pread(descriptor, length - got, position + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    return read


def _memory_reader(value: bytes) -> Read:
    view = memoryview(value)

    def read(position: int, length: int) -> bytes:
        return bytes(view[position : position + length])

    return read


def _native_frame(
    read: Read, start: int, length: int | None, geometry: FrameGeometry, number: int
) -> bytes:
    """Frame ``number`` of native Pixel Data: one read (PS3.5 8.1.1, 8.2)."""
    bits = geometry.frame_bits
    first_bit = (number - 1) * bits
    if bits % 8 == 0 and first_bit % 8 == 0:
        size = bits // 8
        position = first_bit // 8
        if length is not None and position + size > length:
            raise StoredPixelDataError(f"Pixel Data too short for frame {number}")
        data = read(start + position, size)
        if len(data) != size:
            raise StoredPixelDataError(f"stored file too short for frame {number}")
        return data
    # Bits Allocated 1 with frames that do not end on a byte boundary: re-pack the bits.
    first_byte, last_byte = first_bit // 8, (first_bit + bits + 7) // 8
    packed = np.frombuffer(read(start + first_byte, last_byte - first_byte), dtype=np.uint8)
    bits_array = np.unpackbits(packed, bitorder="little")
    offset = first_bit - first_byte * 8
    return np.packbits(bits_array[offset : offset + bits], bitorder="little").tobytes()


def _swap_to_little_endian(frame: bytes, geometry: FrameGeometry) -> bytes:
    if geometry.bits_allocated not in (16, 32, 64):
        return frame
    dtype = np.dtype(f">u{geometry.bits_allocated // 8}")
    return np.frombuffer(frame, dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()
