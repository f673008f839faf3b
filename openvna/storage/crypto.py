"""Encryption at rest: a :class:`~openvna.storage.base.Storage` that encrypts around
the filesystem store (envelope encryption, AES-256-GCM in chunks).

The object format is :mod:`openvna.storage.envelope`; reads go through
:class:`~openvna.storage.decrypting.DecryptingReader`. ``local_path`` is None: nothing
may send these files with sendfile; readers use ``open``, which returns a seekable,
read-only file of plaintext whose every byte has passed its chunk's tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, cast

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openvna.config import Settings
from openvna.errors import OpenVNAError
from openvna.security.keys import (
    KeyProvider,
    MasterKeyError,
    UnknownMasterKeyError,
    key_provider,
)
from openvna.storage.base import PendingWrite, Storage, StoredObject
from openvna.storage.decrypting import DecryptingReader
from openvna.storage.envelope import (
    HEADER_BYTES,
    SLOT_BYTES,
    SLOT_OFFSETS,
    ChunkCipher,
    KeySlot,
    ObjectHeader,
    StoredObjectIntegrityError,
    encode_slot,
    new_fixed_header,
    parse_header,
    plaintext_layout,
)

logger = logging.getLogger(__name__)


class EncryptedPendingWrite:
    """Plaintext in, sealed chunks out to the inner write; the last chunk waits in memory
    until ``commit`` (only then is it known to be the final one)."""

    def __init__(
        self,
        storage: EncryptedStorage,
        inner: PendingWrite,
        cipher: ChunkCipher,
        header: bytes,
        key_id: str,
        data_key: bytes,
    ) -> None:
        self.key = inner.key
        self._storage = storage
        self._inner = inner
        self._cipher = cipher
        self._header = header
        self._key_id = key_id
        self._data_key = data_key
        self._buffer = bytearray()
        self._index = 0
        self._hash = hashlib.sha256()
        self._size = 0
        inner.write(header)

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)
        buffer = self._buffer
        buffer += chunk
        chunk_size = self._cipher.chunk_size
        if len(buffer) <= chunk_size:
            return
        sealed = (len(buffer) - 1) // chunk_size * chunk_size  # keep 1..chunk_size bytes
        with memoryview(buffer) as view:
            for start in range(0, sealed, chunk_size):
                piece = self._cipher.encrypt(self._index, view[start : start + chunk_size], False)
                self._index += 1
                self._inner.write(piece)
        del buffer[:sealed]

    def reader(self) -> BinaryIO:
        """The plaintext written so far: sealed chunks decrypted from the temp file, the
        rest from memory (no plaintext copy on disk)."""
        reader = DecryptingReader(
            self._inner.reader(),
            self._cipher,
            self._size,
            file_chunks=self._index,
            sealed=False,
            tail=bytes(self._buffer),
        )
        return cast(BinaryIO, reader)

    def commit(self) -> StoredObject:
        self._inner.write(self._cipher.encrypt(self._index, bytes(self._buffer), True))
        self._buffer.clear()
        self._inner.commit()
        self._storage.after_commit(self.key, self._header, self._key_id, self._data_key)
        return StoredObject(key=self.key, size=self._size, sha256=self._hash.hexdigest())

    def discard(self) -> None:
        self._buffer.clear()
        self._inner.discard()


class EncryptedStorage:
    """A :class:`~openvna.storage.base.Storage` that encrypts around another one (the
    filesystem store: key-slot rewrites need its files)."""

    def __init__(self, inner: Storage, keys: KeyProvider) -> None:
        self.inner = inner
        self.keys = keys

    # -- writing -----------------------------------------------------------------------
    def begin_write(self) -> EncryptedPendingWrite:
        key_id = self.keys.active_key_id()
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = self.keys.wrap(key_id, data_key)
        fixed = new_fixed_header()
        header = fixed + encode_slot(1, key_id, wrapped) + bytes(SLOT_BYTES)
        inner = self.inner.begin_write()
        try:
            cipher = ChunkCipher(data_key, fixed, inner.key)
            return EncryptedPendingWrite(self, inner, cipher, header, key_id, data_key)
        except BaseException:
            inner.discard()
            raise

    def after_commit(self, key: str, header: bytes, key_id: str, data_key: bytes) -> None:
        """A write that began before a rotation re-wraps itself with the new active key,
        so a rotation's last pass cannot miss it (see ``openvna keys rotate``)."""
        try:
            active = self.keys.active_key_id()
            if active == key_id:
                return
            parsed = parse_header(header, key)
            newest = parsed.newest_first()[0]
            self._write_slot(key, newest, active, self.keys.wrap(active, data_key))
        except (OSError, OpenVNAError):
            logger.exception("re-wrapping new object %s after a key rotation failed", key)

    # -- reading -----------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        handle = self.inner.open(key)
        try:
            header = parse_header(handle.read(HEADER_BYTES), key)
            cipher, _ = self._cipher(header, key)
            size, chunks = plaintext_layout(handle.seek(0, io.SEEK_END), header.chunk_size, key)
            reader = DecryptingReader(handle, cipher, size, file_chunks=chunks)
            reader.check_last_chunk()
        except BaseException:
            handle.close()
            raise
        return cast(BinaryIO, reader)

    def local_path(self, key: str) -> str | None:
        """None: the file holds ciphertext; nothing may sendfile it."""
        return None

    def size(self, key: str) -> int:
        """The plaintext size (from the file size; no key needed)."""
        with self.inner.open(key) as handle:
            header = parse_header(handle.read(HEADER_BYTES), key)
            ciphertext_size = handle.seek(0, io.SEEK_END)
        return plaintext_layout(ciphertext_size, header.chunk_size, key)[0]

    def header(self, key: str) -> ObjectHeader:
        with self.inner.open(key) as handle:
            return parse_header(handle.read(HEADER_BYTES), key)

    def key_id_of(self, key: str) -> str:
        """The master key that wraps the object's data key now (its newest slot)."""
        slots = self.header(key).newest_first()
        if not slots:
            raise StoredObjectIntegrityError(f"stored object {key} has no readable key slot")
        return slots[0].key_id

    def _cipher(self, header: ObjectHeader, key: str) -> tuple[ChunkCipher, KeySlot]:
        data_key, slot = self._data_key(header, key)
        return ChunkCipher(data_key, header.fixed, key), slot

    def _data_key(self, header: ObjectHeader, key: str) -> tuple[bytes, KeySlot]:
        """The data key from the newest slot whose master key unwraps it (a torn slot, or
        one wrapped by a retired key, falls back to the other)."""
        slots = header.newest_first()
        if not slots:
            raise StoredObjectIntegrityError(
                f"stored object {key} has no readable key slot: its header was damaged"
            )
        failures: list[MasterKeyError] = []
        for slot in slots:
            try:
                return self._unwrap(slot), slot
            except MasterKeyError as error:
                failures.append(error)
        problem = failures[0]
        raise type(problem)(f"stored object {key}: {problem}") from problem

    def _wrap(self, key_id: str, data_key: bytes) -> bytes:
        try:
            return self.keys.wrap(key_id, data_key)
        except UnknownMasterKeyError:
            self.keys.refresh(force=True)  # a key added since we loaded
            return self.keys.wrap(key_id, data_key)

    def _unwrap(self, slot: KeySlot) -> bytes:
        try:
            return self.keys.unwrap(slot.key_id, slot.wrapped)
        except UnknownMasterKeyError:
            self.keys.refresh(force=True)  # rotated by another process since we loaded
            return self.keys.unwrap(slot.key_id, slot.wrapped)

    # -- key slots ---------------------------------------------------------------------
    def rewrap(self, key: str, key_id: str) -> bool:
        """Wrap the object's data key with master key ``key_id`` into its older slot.

        The newest slot is left alone until the new one is durable (fsync), so a crash
        at any point leaves at least one slot that unwraps. False when already done.
        """
        data_key, newest = self._data_key(self.header(key), key)
        if newest.key_id == key_id:
            return False
        self._write_slot(key, newest, key_id, self._wrap(key_id, data_key))
        return True

    def scrub(self, key: str, keep: str) -> bool:
        """Zero a stale slot whose key is not ``keep`` once the newest slot uses ``keep``
        (before a retired master key is deleted). True when a slot was cleared."""
        header = self.header(key)
        _, newest = self._data_key(header, key)
        if newest.key_id != keep:
            return False
        other = 1 - newest.position
        stale = header.slots[other]
        if stale is None and self._raw_slot(key, other) == bytes(SLOT_BYTES):
            return False
        if stale is not None and stale.key_id == keep:
            return False
        self._pwrite(key, bytes(SLOT_BYTES), SLOT_OFFSETS[other])
        return True

    def _write_slot(self, key: str, newest: KeySlot, key_id: str, wrapped: bytes) -> None:
        slot = encode_slot(newest.generation + 1, key_id, wrapped)
        self._pwrite(key, slot, SLOT_OFFSETS[1 - newest.position])

    def _raw_slot(self, key: str, position: int) -> bytes:
        with self.inner.open(key) as handle:
            handle.seek(SLOT_OFFSETS[position])
            return handle.read(SLOT_BYTES)

    def _pwrite(self, key: str, data: bytes, offset: int) -> None:
        path = self.inner.local_path(key)
        if path is None:
            raise OpenVNAError("re-wrapping data keys needs the filesystem store")
        descriptor = os.open(path, os.O_WRONLY)
        try:
            if os.pwrite(descriptor, data, offset) != len(data):
                raise OSError(f"short write to the header of {key}")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # -- the rest is the inner store's ---------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def iter_keys(self, modified_since: float | None = None) -> Iterator[str]:
        return self.inner.iter_keys(modified_since)

    def sweep_temporary(self) -> int:
        return self.inner.sweep_temporary()

    def close(self) -> None:
        self.inner.close()

    def maintenance(self) -> AbstractContextManager[bool]:
        return self.inner.maintenance()


def encrypt_if_enabled(storage: Storage, settings: Settings) -> Storage:
    """``storage`` wrapped in encryption when ``security.encryption.enabled``; a missing
    or unusable master key is a start-up error (and releases ``storage``)."""
    if not settings.security.encryption.enabled:
        return storage
    try:
        keys = key_provider(settings)
    except BaseException:
        with contextlib.suppress(Exception):
            storage.close()
        raise
    return EncryptedStorage(storage, keys)


__all__ = [
    "DecryptingReader",
    "EncryptedPendingWrite",
    "EncryptedStorage",
    "StoredObjectIntegrityError",
    "encrypt_if_enabled",
]
