"""Encapsulated Pixel Data (PS3.5 A.4): which fragments make up which frame.

The value is a sequence of items: the Basic Offset Table, then fragments, then a
sequence delimiter. Frames map to fragments through, in order of preference, the
Extended Offset Table (PS3.3 C.7.6.3.1.8) when it is inline in the stored header (no
walk at all), one fragment for a single frame or one per frame when the counts agree,
the Basic Offset Table, or the JPEG/JPEG-LS SOI and JPEG 2000 SOC markers a frame's first
fragment starts with. Item headers are read with small positioned reads: the caller
supplies ``read(position, length)`` over a file or an in-memory value.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

from openvna.errors import OpenVNAError

Read = Callable[[int, int], bytes]
"""``read(position, length)``: bytes of the stored object (or value) at ``position``."""
Segments = tuple[tuple[int, int], ...]
"""(position, length) pieces of one frame in the stored Pixel Data."""

_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"
_FRAME_START_MARKERS = (b"\xff\xd8", b"\xff\x4f", b"\x00\x00\x00\x0c")
"""JPEG/JPEG-LS SOI, JPEG 2000 SOC and the JP2 signature box: how a frame's first
fragment begins when neither offset table says where frames start."""


class StoredPixelDataError(OpenVNAError):
    """The stored Pixel Data does not match its header (a server-side problem, HTTP 500)."""


def fragment_table(
    read: Read, start: int, frames: int, header: Callable[[], dict[str, Any]]
) -> tuple[Segments, ...]:
    """Where each of ``frames`` frames' fragments are, for the encapsulated Pixel Data
    value starting at ``start``; ``header`` gives the DICOM JSON header (read only for the
    Extended Offset Table of a multi-frame instance)."""
    extended = _extended_offsets(header()) if frames > 1 else None
    bot_header = read(start, 8)
    if len(bot_header) < 8 or bot_header[:4] != _ITEM:
        raise StoredPixelDataError("encapsulated Pixel Data does not start with an item")
    (bot_length,) = struct.unpack("<I", bot_header[4:])
    first_fragment = start + 8 + bot_length
    if extended is not None:
        offsets, lengths = extended
        return tuple(((first_fragment + o + 8, n),) for o, n in zip(offsets, lengths, strict=True))
    fragments = _walk_fragments(read, first_fragment)
    if frames == 1:
        return (tuple((pos, size) for pos, size, _ in fragments),)
    if len(fragments) == frames:
        return tuple(((pos, size),) for pos, size, _ in fragments)
    if bot_length >= 4 * frames:
        table = read(start + 8, 4 * frames)
        starts = [first_fragment + offset for offset in struct.unpack(f"<{frames}I", table)]
    else:
        starts = [pos - 8 for pos, _, head in fragments if head.startswith(_FRAME_START_MARKERS)]
    return _group(fragments, starts)


def _walk_fragments(read: Read, position: int) -> list[tuple[int, int, bytes]]:
    """(value position, length, first 4 value bytes) of each fragment item."""
    fragments: list[tuple[int, int, bytes]] = []
    while True:
        header = read(position, 12)
        if len(header) < 8 or header[:4] == _SEQUENCE_DELIMITER:
            return fragments
        if header[:4] != _ITEM:
            raise StoredPixelDataError(f"unexpected tag in encapsulated Pixel Data at {position}")
        (length,) = struct.unpack("<I", header[4:8])
        if length == _UNDEFINED_LENGTH:
            raise StoredPixelDataError("fragment item of undefined length")
        fragments.append((position + 8, length, header[8:12]))
        position += 8 + length


def _group(fragments: list[tuple[int, int, bytes]], starts: list[int]) -> tuple[Segments, ...]:
    """Fragments gathered into frames, each frame opening at one of ``starts``."""
    boundaries = set(starts)
    table: list[list[tuple[int, int]]] = []
    for position, length, _ in fragments:
        if position - 8 in boundaries or not table:
            table.append([])
        table[-1].append((position, length))
    return tuple(tuple(frame) for frame in table)


def _extended_offsets(header: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """Extended Offset Table and its lengths (PS3.3 C.7.6.3.1.8) when inline in the header."""
    encoded = [header.get(tag, {}).get("InlineBinary") for tag in ("7FE00001", "7FE00002")]
    if not all(encoded):
        return None
    offsets, lengths = (base64.b64decode(value) for value in encoded)
    count = len(offsets) // 8
    if count == 0 or len(lengths) // 8 != count:
        return None
    return list(struct.unpack(f"<{count}Q", offsets)), list(struct.unpack(f"<{count}Q", lengths))
