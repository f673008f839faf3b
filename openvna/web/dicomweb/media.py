"""HTTP content negotiation for DICOMweb (PS3.18 8.7): Accept parsing and multipart.

A DICOMweb ``Accept`` header lists media ranges with parameters, e.g.
``multipart/related; type="application/dicom"; transfer-syntax=*``. Endpoints ask
:func:`negotiate` for the first acceptable representation among those they can produce,
in the client's order of preference (``q`` values, then order of appearance).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from openvna.errors import NotAcceptableError

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header (RFC 9110 12.5.1), parameters lower-cased by name."""

    media_type: str
    parameters: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def main_type(self) -> str:
        return self.media_type.split("/", 1)[0]

    def accepts(self, media_type: str) -> bool:
        """Whether this range covers ``media_type`` (``*/*`` and ``type/*`` wildcards)."""
        if self.quality <= 0:
            return False
        if self.media_type in ("*/*", "*"):
            return True
        if self.media_type.endswith("/*"):
            return media_type.split("/", 1)[0] == self.main_type
        return self.media_type == media_type

    @property
    def related_type(self) -> str | None:
        """The ``type`` parameter of ``multipart/related`` (the media type of each part)."""
        value = self.parameters.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.parameters.get("transfer-syntax")


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> MediaRange:
    """One media type with parameters (``type/subtype; name=value; ...``)."""
    pieces = _split_unquoted(text, ";")
    media_type = pieces[0].strip().lower()
    parameters: dict[str, str] = {}
    quality = 1.0
    for piece in pieces[1:]:
        name, _, value = piece.partition("=")
        name = name.strip().lower()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not name:
            continue
        if name == "q":
            try:
                quality = max(0.0, min(1.0, float(value)))
            except ValueError:
                quality = 1.0
            continue
        parameters[name] = value
    return MediaRange(media_type, parameters, quality)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, most preferred first; ``*/*`` when absent."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(part) for part in _split_unquoted(header, ",") if part.strip()]
    indexed = sorted(enumerate(ranges), key=lambda item: (-item[1].quality, item[0]))
    return [media_range for _, media_range in indexed]


def negotiate(accept: Iterable[MediaRange], offered: Iterable[str]) -> tuple[str, MediaRange]:
    """The first offered media type the client accepts, with the range that accepted it.

    Raises
    ------
    NotAcceptableError
        None of ``offered`` is acceptable (HTTP 406).
    """
    offered_list = list(offered)
    accept_list = list(accept)
    for media_range in accept_list:
        for media_type in offered_list:
            if media_range.accepts(media_type):
                return media_type, media_range
    wanted = ", ".join(r.media_type for r in accept_list)
    raise NotAcceptableError(
        f"none of the accepted media types ({wanted}) can be produced here; "
        f"available: {', '.join(offered_list)}"
    )


def new_boundary() -> str:
    return f"openvna-{secrets.token_hex(16)}"


def multipart_content_type(boundary: str, part_type: str, **parameters: str) -> str:
    """``multipart/related`` Content-Type naming the parts' media type (RFC 2387)."""
    extra = "".join(f"; {name}={value}" for name, value in parameters.items())
    return f'{MULTIPART_RELATED}; type="{part_type}"; boundary={boundary}{extra}'


def part_header(
    boundary: str, content_type: str, *, first: bool, headers: dict[str, str] | None = None
) -> bytes:
    """The delimiter and headers that open one part (CRLF line ends, RFC 2046 5.1.1).

    The CRLF before a delimiter belongs to the delimiter, so every part but the first
    starts with one (the first part's delimiter opens the body).
    """
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    text = "\r\n".join(lines) + "\r\n\r\n"
    return (text if first else "\r\n" + text).encode("ascii")


def closing_delimiter(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("ascii")
