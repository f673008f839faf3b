"""Incremental ``multipart/related`` parsing and request-body decoding for uploads.

STOW-RS (PS3.18 10.5) sends instances as the parts of a ``multipart/related`` body
(RFC 2387, with the syntax of RFC 2046 5.1.1). Bodies can be gigabytes, so nothing here
holds a body, or even a part, in memory: :class:`MultipartParser` is fed chunks as they
arrive and hands each part's bytes to a :class:`PartHandler` as soon as they cannot be
the start of a delimiter any more. Delimiters are found with ``bytes.find`` over the
current chunk plus the few bytes kept from the previous one (never a per-byte Python
loop), so the cost per chunk is one concatenation and one search in C.

:class:`BodyDecoder` sits in front of it: it counts the bytes received against
``http.max_request_bytes`` and undoes a ``Content-Encoding`` (gzip or deflate, RFC 9110
8.4.1) in bounded steps, so that a small compressed body cannot expand without limit in
memory or on disk (a "gzip bomb").
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

from openvna.errors import BadRequestError, RequestTooLargeError, UnsupportedMediaTypeError

MAX_BOUNDARY_LENGTH = 70
"""RFC 2046 5.1.1: a boundary is 1 to 70 characters."""

MAX_PART_HEADER_BYTES = 16 * 1024
"""Largest header block of one part; beyond it the body is malformed (HTTP 400)."""

_MAX_PADDING_BYTES = 1024
_LWSP = b" \t"


class PartHandler(Protocol):
    """Receives the parts of a multipart body as the parser finds them.

    ``part_data`` gets a view into the parser's buffer that is valid only during the
    call: copy or write it out before returning.
    """

    def part_begin(self, headers: dict[str, str]) -> None: ...

    def part_data(self, data: memoryview) -> None: ...

    def part_end(self) -> None: ...


def boundary_delimiter(boundary: str) -> bytes:
    """The bytes that separate parts, ``CRLF--boundary`` (RFC 2046 5.1.1).

    The CRLF before ``--`` belongs to the delimiter, not to the preceding part's content.

    Raises
    ------
    BadRequestError
        The boundary is empty, longer than 70 characters or not ASCII.
    """
    if not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise BadRequestError(
            f"multipart boundary must be 1 to {MAX_BOUNDARY_LENGTH} characters (RFC 2046 5.1.1)"
        )
    try:
        encoded = boundary.encode("ascii")
    except UnicodeEncodeError as error:
        raise BadRequestError("multipart boundary must be ASCII (RFC 2046 5.1.1)") from error
    return b"\r\n--" + encoded


class MultipartParser:
    """Push parser for one ``multipart/related`` body (RFC 2046 5.1.1, RFC 2387).

    Feed it chunks of any size with :meth:`feed` and call :meth:`finish` at the end of
    the body. The preamble (before the first delimiter) and the epilogue (after the
    closing delimiter) are discarded, transport padding (spaces and tabs after a
    delimiter) is accepted, and a body that ends before its closing delimiter is an
    error, so that a truncated upload is never taken for a complete one.

    Limits: the boundary (70 characters, RFC 2046), each part's header block
    (``max_header_bytes``, 400 beyond), transport padding (1 KiB) and, when
    ``max_parts`` is given (``security.limits.multipart_max_parts``), the number of
    parts: the part past it is refused with 413 before its handler sees it.

    Raises (from :meth:`feed` and :meth:`finish`)
    ---------------------------------------------
    BadRequestError
        The body is not a well-formed multipart body.
    RequestTooLargeError
        More than ``max_parts`` parts.
    """

    _PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)

    def __init__(
        self,
        boundary: str,
        handler: PartHandler,
        *,
        max_header_bytes: int = MAX_PART_HEADER_BYTES,
        max_parts: int | None = None,
    ) -> None:
        self._delimiter = boundary_delimiter(boundary)
        self._handler = handler
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        # A CRLF in front of the body lets the first delimiter open the body directly.
        self._buffer = b"\r\n"
        self._state = self._PREAMBLE
        self.parts = 0
        """How many parts have begun so far."""

    @property
    def complete(self) -> bool:
        """Whether the closing delimiter has been seen."""
        return self._state == self._EPILOGUE

    def feed(self, data: bytes) -> None:
        """Parse the next chunk of the body."""
        if self._state == self._EPILOGUE or not data:
            return
        buffer = self._buffer + data if self._buffer else data
        view = memoryview(buffer)
        try:
            self._buffer = self._parse(buffer, view)
        finally:
            view.release()

    def finish(self) -> None:
        """Declare the end of the body; fail unless the closing delimiter was seen."""
        if self._state == self._EPILOGUE:
            return
        if self._state == self._PREAMBLE:
            raise BadRequestError(
                "multipart body holds no part: the boundary of the Content-Type was not found"
            )
        raise BadRequestError(
            "multipart body ends without its closing delimiter (--boundary--): "
            "the request was truncated"
        )

    def _parse(self, buffer: bytes, view: memoryview) -> bytes:
        """Consume what ``buffer`` allows; return the bytes to keep for the next chunk."""
        delimiter = self._delimiter
        keep = len(delimiter) - 1
        position = 0
        size = len(buffer)
        while True:
            state = self._state
            if state == self._BODY:
                found = buffer.find(delimiter, position)
                if found < 0:
                    safe = size - keep
                    if safe > position:
                        self._handler.part_data(view[position:safe])
                        position = safe
                    return buffer[position:]
                if found > position:
                    self._handler.part_data(view[position:found])
                self._handler.part_end()
                position = found + len(delimiter)
                self._state = self._AFTER_DELIMITER
            elif state == self._AFTER_DELIMITER:
                if size - position < 2:
                    return buffer[position:]
                if buffer[position : position + 2] == b"--":
                    self._state = self._EPILOGUE
                    return b""
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    if size - position > _MAX_PADDING_BYTES:
                        raise BadRequestError(
                            "multipart delimiter is followed by more than transport padding"
                        )
                    return buffer[position:]
                if buffer[position:line_end].strip(_LWSP):
                    raise BadRequestError(
                        "multipart delimiter is followed by other characters than transport "
                        "padding: the boundary occurs inside a part (RFC 2046 5.1.1)"
                    )
                position = line_end  # this CRLF opens the header block
                self._state = self._HEADERS
            elif state == self._HEADERS:
                header_end = buffer.find(b"\r\n\r\n", position)
                if header_end < 0:
                    if size - position > self._max_header_bytes:
                        raise BadRequestError(
                            f"multipart part headers exceed {self._max_header_bytes} bytes"
                        )
                    return buffer[position:]
                if header_end - position > self._max_header_bytes:
                    raise BadRequestError(
                        f"multipart part headers exceed {self._max_header_bytes} bytes"
                    )
                headers = parse_part_headers(buffer[position + 2 : header_end])
                self.parts += 1
                if self._max_parts is not None and self.parts > self._max_parts:
                    raise RequestTooLargeError(
                        f"multipart body holds more than {self._max_parts} parts "
                        "(security.limits.multipart_max_parts)"
                    )
                self._handler.part_begin(headers)
                position = header_end + 4
                self._state = self._BODY
            elif state == self._PREAMBLE:
                found = buffer.find(delimiter, position)
                if found < 0:
                    return buffer[max(position, size - keep) :]
                position = found + len(delimiter)
                self._state = self._AFTER_DELIMITER
            else:  # epilogue: discarded
                return b""


def parse_part_headers(block: bytes) -> dict[str, str]:
    """Header fields of one part (RFC 5322 syntax): names lower-cased, folded lines joined.

    A field given twice keeps its first value.
    """
    headers: dict[str, str] = {}
    last = ""
    for raw_line in block.split(b"\r\n"):
        if not raw_line:
            continue
        line = raw_line.decode("latin-1")
        if line[0] in " \t" and last:
            headers[last] = f"{headers[last]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise BadRequestError(f"malformed multipart part header line: {line[:80]!r}")
        last = name.strip().lower()
        headers.setdefault(last, value.strip())
    return headers


MAX_COMPRESSION_RATIO = 200
"""Default decoded bytes per received byte beyond which a compressed body is refused (413).

Real DICOM data compresses by a factor of 2 to 20 with gzip; only long runs of one byte
value approach deflate's ceiling of about 1030. Checked once more than
:data:`RATIO_CHECK_AFTER` bytes have been decoded, so small bodies are never refused
for it. STOW-RS passes ``http.max_compression_ratio`` instead.
"""

RATIO_CHECK_AFTER = 32 * 1024 * 1024

DECODE_STEP = 1024 * 1024
"""Most bytes one decompression step produces: memory per request stays bounded."""

_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class BodyDecoder:
    """Counts a request body against its limit and undoes its Content-Encoding.

    Parameters
    ----------
    content_encoding
        The request's ``Content-Encoding`` header (``None``, ``identity``, ``gzip``,
        ``x-gzip`` or ``deflate``; RFC 9110 8.4).
    max_bytes
        ``http.max_request_bytes``: the limit for the bytes received and, separately,
        for the bytes after decoding.
    max_compression_ratio
        ``http.max_compression_ratio``: decoded bytes per received byte beyond which a
        compressed body is refused, once past :data:`RATIO_CHECK_AFTER` decoded bytes.

    Raises
    ------
    UnsupportedMediaTypeError
        An unknown or stacked content coding (HTTP 415, RFC 9110 15.5.16).
    """

    def __init__(
        self,
        content_encoding: str | None,
        max_bytes: int,
        *,
        max_compression_ratio: int = MAX_COMPRESSION_RATIO,
    ) -> None:
        codings = [
            coding.strip().lower()
            for coding in (content_encoding or "").split(",")
            if coding.strip() and coding.strip().lower() != "identity"
        ]
        unknown = [coding for coding in codings if coding not in _CODINGS]
        if unknown:
            raise UnsupportedMediaTypeError(
                f"Content-Encoding {', '.join(unknown)} is not supported; use gzip, deflate or none"
            )
        if len(codings) > 1:
            raise UnsupportedMediaTypeError(
                "only one Content-Encoding (gzip or deflate) may be applied to a request"
            )
        self._coding = _CODINGS[codings[0]] if codings else None
        self._max_bytes = max_bytes
        self._max_ratio = max_compression_ratio
        self._decompressor: zlib._Decompress | None = None
        self._head = b""
        self.received = 0
        """Bytes received (before decoding)."""
        self.decoded = 0
        """Bytes produced (after decoding)."""

    @property
    def encoded(self) -> bool:
        return self._coding is not None

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded pieces of the next received chunk (each at most 1 MiB).

        Raises
        ------
        RequestTooLargeError
            The received or decoded size passes ``max_bytes``, or a compressed body
            expands more than ``max_compression_ratio`` times.
        BadRequestError
            The compressed data is corrupt.
        """
        self.received += len(chunk)
        if self.received > self._max_bytes:
            raise RequestTooLargeError(
                f"request body exceeds the limit of {self._max_bytes} bytes "
                "(http.max_request_bytes)"
            )
        if self._coding is None:
            self.decoded += len(chunk)
            if chunk:
                yield chunk
            return
        yield from self._inflate(chunk)

    def finish(self) -> Iterator[bytes]:
        """What remains at the end of the body; fail when the compressed data is cut."""
        if self._coding is None:
            return
        if self._decompressor is None:
            if self._head:  # fewer than two bytes: no zlib or gzip header fits
                raise BadRequestError(f"{self._coding}-encoded body is truncated")
            return
        yield from self._drain()
        if not self._decompressor.eof:
            raise BadRequestError(
                f"{self._coding}-encoded body is truncated: the compressed stream does not end"
            )

    def _inflate(self, chunk: bytes) -> Iterator[bytes]:
        if self._decompressor is None:
            self._head += chunk
            if len(self._head) < 2:
                return
            chunk, self._head = self._head, b""
            self._decompressor = self._new_decompressor(chunk)
        data = chunk
        while data:
            decompressor = self._decompressor
            assert decompressor is not None
            if decompressor.eof:
                if not data.strip(b"\x00"):
                    return  # zero padding after the stream, as some gzip writers leave
                if self._coding != "gzip":
                    raise BadRequestError(f"data after the end of the {self._coding} stream")
                # gzip allows several members one after the other (RFC 1952 2.2)
                decompressor = self._decompressor = self._new_decompressor(data)
            try:
                piece = decompressor.decompress(data, DECODE_STEP)
            except zlib.error as error:
                raise BadRequestError(f"corrupt {self._coding}-encoded body: {error}") from error
            data = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
            if piece:
                self._count(piece)
                yield piece
        yield from self._drain()

    def _drain(self) -> Iterator[bytes]:
        """Output zlib still holds after all input was consumed, in bounded steps."""
        decompressor = self._decompressor
        assert decompressor is not None
        while not decompressor.eof:
            try:
                piece = decompressor.decompress(b"", DECODE_STEP)
            except zlib.error as error:
                raise BadRequestError(f"corrupt {self._coding}-encoded body: {error}") from error
            if not piece:
                return
            self._count(piece)
            yield piece

    def _new_decompressor(self, head: bytes) -> zlib._Decompress:
        if self._coding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # RFC 9110 8.4.1.2: "deflate" is the zlib format; some clients send raw deflate.
        is_zlib = (head[0] & 0x0F) == 8 and (head[0] * 256 + head[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)

    def _count(self, piece: bytes) -> None:
        self.decoded += len(piece)
        if self.decoded > self._max_bytes:
            raise RequestTooLargeError(
                f"decoded request body exceeds the limit of {self._max_bytes} bytes "
                "(http.max_request_bytes)"
            )
        if self.decoded > RATIO_CHECK_AFTER and self.decoded > self._max_ratio * max(
            self.received, 1
        ):
            raise RequestTooLargeError(
                f"{self._coding}-encoded body expands more than {self._max_ratio} "
                "times: refused as a decompression bomb (http.max_compression_ratio)"
            )


__all__ = [
    "MAX_COMPRESSION_RATIO",
    "BodyDecoder",
    "MultipartParser",
    "PartHandler",
    "boundary_delimiter",
    "parse_part_headers",
]
