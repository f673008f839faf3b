"""Receiving a STOW-RS request body (PS3.18 10.5.1.2) into parts held on the side.

A STOW-RS body can be gigabytes and arrives while earlier instances are still being
ingested, so no part is held in memory whole unless it is small: :class:`Receiver`
decodes the body's chunks (:class:`~openvna.web.multipart.BodyDecoder`), splits them into
parts (:class:`~openvna.web.multipart.MultipartParser`) and writes each part's bytes to
a :class:`Spool`, in memory up to :data:`MEMORY_SPOOL` and within the request's
:data:`REQUEST_MEMORY`, in an unnamed temporary file beyond. Every complete part is
handed out as a :class:`ReceivedPart`, which whoever takes it must close.

The receiver runs in worker threads (parsing is CPU work), never on the event loop.
"""

from __future__ import annotations

import io
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from openvna.errors import BadRequestError
from openvna.web.dicomweb.media import MediaRange, parse_media_type
from openvna.web.multipart import BodyDecoder, MultipartParser

MEMORY_SPOOL = 1024 * 1024
"""A part up to this size is kept in memory, a larger one in a temporary file."""
REQUEST_MEMORY = 8 * 1024 * 1024
"""In-memory spool bytes one request may hold at a time; beyond it parts go to disk."""


class _MemoryBudget:
    """In-memory spool bytes a request may still use (spools are closed in other threads)."""

    def __init__(self, limit: int) -> None:
        self._left = limit
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if size > self._left:
                return False
            self._left -= size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self._left += size


class Spool:
    """One part's bytes: in memory while small, in an unnamed temporary file beyond.

    ``tempfile.TemporaryFile`` uses ``O_TMPFILE`` on Linux: the file has no name, so a
    crash cannot leave it behind.
    """

    def __init__(self, directory: Path, budget: _MemoryBudget) -> None:
        self._directory = directory
        self._budget = budget
        self._memory: io.BytesIO | None = io.BytesIO()
        self._file: BinaryIO | None = None
        self.size = 0

    def write(self, data: memoryview) -> None:
        if self._memory is not None and (
            self.size + len(data) > MEMORY_SPOOL or not self._budget.take(len(data))
        ):
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115
            self._file.write(self._memory.getbuffer())
            self._memory = None
            self._budget.give_back(self.size)
        if self._memory is not None:
            self._memory.write(data)
        else:
            assert self._file is not None
            self._file.write(data)
        self.size += len(data)

    def source(self) -> BinaryIO:
        """The bytes as a seekable file, positioned at the start."""
        source: BinaryIO = self._memory if self._memory is not None else self._file  # type: ignore[assignment]
        source.seek(0)
        return source

    def read_all(self) -> bytes:
        return self.source().read()

    def close(self) -> None:
        if self._memory is not None:
            self._memory = None
            self._budget.give_back(self.size)
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class ReceivedPart:
    """A complete part of the request body."""

    index: int
    headers: dict[str, str]
    spool: Spool
    default_type: str

    @property
    def media_type(self) -> MediaRange:
        return parse_media_type(self.headers.get("content-type") or self.default_type)

    @property
    def content_location(self) -> str | None:
        return self.headers.get("content-location")

    def close(self) -> None:
        self.spool.close()


class Receiver:
    """Thread-side half of a request: decodes, splits and spools the body's bytes.

    ``boundary`` None means the body is a single ``application/dicom`` instance
    (PS3.18 10.5.1.1): it becomes one part of ``default_type``.
    """

    def __init__(
        self,
        decoder: BodyDecoder,
        boundary: str | None,
        default_type: str,
        directory: Path,
        max_parts: int | None = None,
    ) -> None:
        self._decoder = decoder
        self._default_type = default_type
        self._directory = directory
        self._budget = _MemoryBudget(REQUEST_MEMORY)
        self._parser = (
            MultipartParser(boundary, self, max_parts=max_parts) if boundary is not None else None
        )
        self._current: ReceivedPart | None = None
        self._complete: list[ReceivedPart] = []
        self._count = 0
        if self._parser is None:  # a single application/dicom body is one part
            self.part_begin({"content-type": default_type})

    # PartHandler
    def part_begin(self, headers: dict[str, str]) -> None:
        spool = Spool(self._directory, self._budget)
        self._current = ReceivedPart(self._count, headers, spool, self._default_type)
        self._count += 1

    def part_data(self, data: memoryview) -> None:
        assert self._current is not None
        self._current.spool.write(data)

    def part_end(self) -> None:
        assert self._current is not None
        self._complete.append(self._current)
        self._current = None

    def feed(self, chunks: list[bytes]) -> list[ReceivedPart]:
        """Take received chunks; return the parts they completed."""
        for chunk in chunks:
            for piece in self._decoder.decode(chunk):
                self._consume(piece)
        return self._take_complete()

    def finish(self, chunks: list[bytes]) -> list[ReceivedPart]:
        """Take the last chunks and end the body; return the parts still to complete."""
        for chunk in chunks:
            for piece in self._decoder.decode(chunk):
                self._consume(piece)
        for piece in self._decoder.finish():
            self._consume(piece)
        if self._parser is not None:
            self._parser.finish()
        elif self._current is not None:
            if self._current.spool.size == 0:
                raise BadRequestError("the request body is empty")
            self.part_end()
        return self._take_complete()

    def close(self) -> None:
        """Drop whatever was received but not handed out (after an error)."""
        for part in self._complete:
            part.close()
        if self._current is not None:
            self._current.close()
            self._current = None

    def _consume(self, piece: bytes) -> None:
        if self._parser is not None:
            self._parser.feed(piece)
        else:
            with memoryview(piece) as view:
                self.part_data(view)

    def _take_complete(self) -> list[ReceivedPart]:
        complete, self._complete = self._complete, []
        return complete


__all__ = [
    "MEMORY_SPOOL",
    "REQUEST_MEMORY",
    "ReceivedPart",
    "Receiver",
    "Spool",
]
