"""Which media type and transfer syntax frames go out in (PS3.18 8.7.3, Table 8.7.3-2).

A WADO-RS frames request lists acceptable media ranges (``multipart/related;
type="image/jls"; transfer-syntax=...``); this module picks the first one, in the
client's order of preference, that frames stored in a given syntax can be sent in:
as stored, decoded to native little endian, or encoded losslessly
(:mod:`openvna.archive.frame_codec`). The ranges are duck-typed (``media_type``,
``related_type``, ``transfer_syntax``, ``quality``) so that the core does not depend on
the HTTP adapter that parses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from openvna.archive.frame_codec import JPEG_LS_LOSSLESS, RLE_LOSSLESS, can_transcode
from openvna.archive.pixels import EXPLICIT_VR_LITTLE_ENDIAN
from openvna.errors import NotAcceptableError

OCTET_STREAM = "application/octet-stream"
FRAME_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/dicom-rle": (RLE_LOSSLESS,),
    "image/jls": (JPEG_LS_LOSSLESS, "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": (
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    ),
}
"""Compressed frame media types and their transfer syntaxes, default first (PS3.18
Table 8.7.3-2)."""
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
_MEDIA_TYPE_OF = {uid: media for media, uids in FRAME_MEDIA_TYPES.items() for uid in uids}
_VIDEO_PREFIX = "1.2.840.10008.1.2.4.10"
"""MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 (1.2.840.10008.1.2.4.100 to .108)."""
_MULTIPART = ("*/*", "multipart/related", "multipart/*")


class AcceptedRange(Protocol):
    """One entry of an Accept header, as the HTTP adapter parsed it."""

    @property
    def media_type(self) -> str: ...
    @property
    def quality(self) -> float: ...
    @property
    def related_type(self) -> str | None: ...
    @property
    def transfer_syntax(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class FrameRepresentation:
    """How frames go out: multipart or a single part, its media type and syntax."""

    multipart: bool
    media_type: str
    transfer_syntax: str

    @property
    def part_content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def media_type_of(transfer_syntax: str) -> str:
    """The media type of frames stored in ``transfer_syntax`` (octet-stream if native)."""
    return _MEDIA_TYPE_OF.get(transfer_syntax, OCTET_STREAM)


def is_video(transfer_syntax: str) -> bool:
    """Video syntaxes encode a stream, not frames one can address (PS3.5 8.2.5-8.2.8)."""
    return transfer_syntax.startswith(_VIDEO_PREFIX)


def negotiate_frames(
    accept: Iterable[AcceptedRange], stored_syntax: str, frame_count: int
) -> FrameRepresentation:
    """The first acceptable representation of frames stored in ``stored_syntax``.

    ``*/*`` and a ``multipart/related`` without ``type`` mean native octet-stream
    (PS3.18 8.7.3.5); ``type="*/*"`` means any part type, so frames go as stored. A
    compressed media type without ``transfer-syntax`` takes the frames as stored when they
    are in one of that type's syntaxes, else the type's default syntax. A single-part
    answer (no multipart) holds one frame only.

    Raises
    ------
    NotAcceptableError
        No range can be served (HTTP 406).
    """
    ranges = list(accept)
    for media_range in ranges:
        if media_range.quality <= 0:
            continue
        if media_range.media_type in _MULTIPART:
            part_type, multipart = media_range.related_type or OCTET_STREAM, True
        elif frame_count == 1 and (
            media_range.media_type == OCTET_STREAM
            or _ALIASES.get(media_range.media_type, media_range.media_type) in FRAME_MEDIA_TYPES
        ):
            part_type, multipart = media_range.media_type, False
        else:
            continue
        choice = _representation(part_type, media_range.transfer_syntax, stored_syntax)
        if choice is not None:
            return FrameRepresentation(multipart, *choice)
    wanted = ", ".join(_describe(r) for r in ranges)
    raise NotAcceptableError(
        f"frames stored in {stored_syntax} cannot be sent as {wanted}; available: "
        f"application/octet-stream (transfer-syntax {EXPLICIT_VR_LITTLE_ENDIAN} or *), "
        "image/dicom-rle, image/jls, image/jp2 (lossless) or the stored syntax"
    )


def _representation(part_type: str, requested: str | None, stored: str) -> tuple[str, str] | None:
    """(part media type, transfer syntax) for one accepted part type, or None."""
    part_type = _ALIASES.get(part_type, part_type)
    if part_type in ("*/*", "image/*"):
        if requested in (None, "*"):
            if stored in _MEDIA_TYPE_OF:
                return _MEDIA_TYPE_OF[stored], stored
            if part_type == "*/*":
                return OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN
            part_type, requested = "image/jls", None  # native, any image type: JPEG-LS
        elif requested == EXPLICIT_VR_LITTLE_ENDIAN and part_type == "*/*":
            part_type = OCTET_STREAM
        elif requested in _MEDIA_TYPE_OF:
            part_type = _MEDIA_TYPE_OF[requested]
        else:
            return None
    if part_type == OCTET_STREAM:
        target = stored if requested == "*" else requested or EXPLICIT_VR_LITTLE_ENDIAN
        return (OCTET_STREAM, target) if can_transcode(stored, target) else None
    syntaxes = FRAME_MEDIA_TYPES.get(part_type)
    if syntaxes is None:
        return None
    if requested in (None, "*"):
        target = stored if stored in syntaxes else syntaxes[0]
    elif requested in syntaxes:
        target = requested
    else:
        return None
    return (part_type, target) if can_transcode(stored, target) else None


def _describe(media_range: AcceptedRange) -> str:
    text = media_range.media_type
    if media_range.related_type:
        text += f'; type="{media_range.related_type}"'
    if media_range.transfer_syntax:
        text += f"; transfer-syntax={media_range.transfer_syntax}"
    return text
