"""Reading an encrypted object: a seekable file of plaintext, decrypted chunk by chunk."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, BinaryIO

from openvna.storage.envelope import (
    HEADER_BYTES,
    TAG_BYTES,
    ChunkCipher,
    StoredObjectIntegrityError,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_READ_AHEAD = 16
"""Chunks fetched with one read when a read spans several (1 MiB)."""


class DecryptingReader(io.RawIOBase):
    """A seekable, read-only file of an object's plaintext.

    Decrypts only the chunks a read touches (the last one is kept for the next small
    read: pydicom reads headers a few bytes at a time). Deliberately no ``name`` and no
    ``io.BufferedReader``: pydicom would re-open such a file by its path for deferred
    values and read ciphertext.
    """

    def __init__(
        self,
        handle: BinaryIO,
        cipher: ChunkCipher,
        size: int,
        *,
        file_chunks: int,
        sealed: bool = True,
        tail: bytes = b"",
    ) -> None:
        super().__init__()
        self._handle = handle
        self._cipher = cipher
        self._chunk = cipher.chunk_size
        self._size = size
        self._file_chunks = file_chunks
        self._sealed = sealed
        self._tail = tail
        self._position = 0
        self._cached_index = -1
        self._cached = b""

    # -- the io interface ---------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def read(self, size: int | None = -1, /) -> bytes:
        if self.closed:
            raise ValueError("read of a closed file")
        start = self._position
        end = self._size if size is None or size < 0 else min(self._size, start + size)
        if end <= start:
            return b""
        first, last = start // self._chunk, (end - 1) // self._chunk
        pieces = self._plaintext(first, last)
        head = start - first * self._chunk
        if first == last:
            piece = pieces[0]
            data = (
                piece
                if head == 0 and end - start == len(piece)
                else piece[head : head + end - start]
            )
        else:
            pieces[0] = pieces[0][head:]
            pieces[-1] = pieces[-1][: end - last * self._chunk]
            data = b"".join(pieces)
        self._position = end
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Whole chunks are decrypted straight into ``buffer``; partial ones through
        :meth:`read` (whole-instance retrieval reads into one large buffer)."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._position < self._size:
            position = self._position
            end = min(self._size, position + len(view) - filled)
            first, head = divmod(position, self._chunk)
            last = (self._size - 1) // self._chunk if end == self._size else end // self._chunk - 1
            last = min(last, first + _READ_AHEAD - 1, self._file_chunks - 1)
            if head == 0 and last >= first:
                length = self._decrypt_run_into(first, last, view[filled:])
            else:
                data = self.read(min(end - position, self._chunk - head))
                length = len(data)
                view[filled : filled + length] = data
            self._position = position + length
            filled += length
        return filled

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
            self._cached = b""
        super().close()

    # -- chunks ----------------------------------------------------------------------
    def check_last_chunk(self) -> None:
        """Decrypt the final chunk now, so a cut or extended file fails at open."""
        if self._file_chunks:
            self._plaintext(self._file_chunks - 1, self._file_chunks - 1)

    def _plain_length(self, index: int) -> int:
        return max(0, min(self._chunk, self._size - index * self._chunk))

    def _plaintext(self, first: int, last: int) -> list[bytes]:
        pieces: list[bytes] = []
        index = first
        while index <= last:
            if index == self._cached_index:
                pieces.append(self._cached)
                index += 1
                continue
            if index >= self._file_chunks:  # pending write: the bytes not yet sealed
                pieces.append(self._tail)
                index += 1
                continue
            stop = min(last, index + _READ_AHEAD - 1, self._file_chunks - 1)
            if index < self._cached_index <= stop:
                stop = self._cached_index - 1
            pieces.extend(self._decrypt_run(index, stop))
            index = stop + 1
        self._cached_index, self._cached = last, pieces[-1]
        return pieces

    def _decrypt_run_into(self, first: int, last: int, target: memoryview) -> int:
        """Chunks ``first``..``last`` decrypted into ``target``; returns the bytes."""
        data = self._read_run(first, last)
        offset = written = 0
        with memoryview(data) as view:
            for index in range(first, last + 1):
                length = self._plain_length(index)
                final = self._sealed and index == self._file_chunks - 1
                self._cipher.decrypt_into(
                    index,
                    view[offset : offset + length + TAG_BYTES],
                    final,
                    target[written : written + length],
                )
                offset += length + TAG_BYTES
                written += length
        return written

    def _read_run(self, first: int, last: int) -> bytes:
        wanted = sum(self._plain_length(i) + TAG_BYTES for i in range(first, last + 1))
        self._handle.seek(HEADER_BYTES + first * (self._chunk + TAG_BYTES))
        data = self._handle.read(wanted)
        if len(data) != wanted:
            raise StoredObjectIntegrityError(
                f"stored object {self._cipher.storage_key} is shorter than its chunks "
                f"(chunk {first}): truncated"
            )
        return data

    def _decrypt_run(self, first: int, last: int) -> list[bytes]:
        """Chunks ``first``..``last`` from the file with one read."""
        lengths = [self._plain_length(i) + TAG_BYTES for i in range(first, last + 1)]
        data = self._read_run(first, last)
        pieces = []
        with memoryview(data) as view:
            offset = 0
            for index, length in enumerate(lengths, start=first):
                final = self._sealed and index == self._file_chunks - 1
                pieces.append(self._cipher.decrypt(index, view[offset : offset + length], final))
                offset += length
        return pieces
