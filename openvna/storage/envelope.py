"""The encrypted object format: header, key slots and chunk cipher (version 1).

Each object gets a fresh random 256-bit data key; its bytes are encrypted with that key
in chunks of 64 KiB, each an AES-GCM message with its own nonce and tag, so a frame or a
byte range decrypts a few chunks instead of the whole file, and every byte handed out
has passed its chunk's tag. The data key is stored in the header wrapped by a master key
(:mod:`openvna.security.keys`), in one of two slots, so rotating the master key rewrites
one slot in place and never the content (a crash mid-rewrite leaves the other intact).

Object format, version 1 (integers big-endian)::

    offset size
       0    8  magic "OVNAENC1"
       8    1  format version (1)
       9    1  cipher (1: AES-256-GCM)
      10    1  log2 of the chunk size (16: 64 KiB)
      11    5  reserved (zero)
      16    8  nonce prefix, random per object
      24   40  reserved (zero)
      64  480  key slot 0
     544  480  key slot 1
    1024       chunks: ciphertext and 16-byte tag; every chunk holds chunk-size plaintext
               bytes except the last, which holds 1 to chunk-size (0 for an empty object)

    key slot: generation (4), key id length (1), reserved (1), wrapped key length (2),
              key id (96, ASCII), wrapped data key (360), first 16 bytes of the SHA-256
              of the preceding 464 bytes (a torn or zeroed slot fails this check)

Chunk *i* is sealed with nonce = prefix ‖ i (4 bytes) and associated data = the 64
fixed header bytes ‖ the storage key ‖ i (4 bytes) ‖ final flag (1 byte). Editing a
byte, swapping or reordering chunks, moving a file to another key, or cutting a file at
any point (including a chunk boundary: the new last chunk was not sealed as final) makes
a tag check fail; the reader raises :class:`StoredObjectIntegrityError` and never
returns the bytes. The plaintext size follows from the file size and the chunk size.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openvna.errors import OpenVNAError

MAGIC = b"OVNAENC1"
FORMAT_VERSION = 1
CIPHER_AES_256_GCM = 1
CHUNK_SIZE_LOG2 = 16
TAG_BYTES = 16
FIXED_BYTES = 64
SLOT_BYTES = 480
SLOT_OFFSETS = (FIXED_BYTES, FIXED_BYTES + SLOT_BYTES)
HEADER_BYTES = FIXED_BYTES + 2 * SLOT_BYTES
_FIXED = struct.Struct(">8sBBB5s8s40s")
_SLOT_PREFIX = struct.Struct(">IBBH")
_KEY_ID_FIELD = 96
_WRAPPED_FIELD = 360
_SLOT_CHECK = 16
_CHUNK_LABEL = struct.Struct(">IB")
_NONCE_COUNTER = struct.Struct(">I")


class StoredObjectIntegrityError(OpenVNAError):
    """A stored object failed its integrity check (altered, truncated or damaged); its
    bytes are not returned."""

    dicom_status = 0xC000
    http_status = 500


@dataclass(frozen=True)
class KeySlot:
    """One of the two places an object's wrapped data key may be."""

    position: int
    generation: int
    key_id: str
    wrapped: bytes


@dataclass(frozen=True)
class ObjectHeader:
    fixed: bytes
    chunk_size: int
    slots: tuple[KeySlot | None, KeySlot | None]

    def newest_first(self) -> list[KeySlot]:
        """Readable slots, the most recently written first."""
        usable = [slot for slot in self.slots if slot is not None]
        return sorted(usable, key=lambda slot: slot.generation, reverse=True)


def encode_slot(generation: int, key_id: str, wrapped: bytes) -> bytes:
    identifier = key_id.encode("ascii")
    if not 0 < len(identifier) <= _KEY_ID_FIELD or not 0 < len(wrapped) <= _WRAPPED_FIELD:
        raise ValueError("key id or wrapped key does not fit a key slot")
    body = (
        _SLOT_PREFIX.pack(generation, len(identifier), 0, len(wrapped))
        + identifier.ljust(_KEY_ID_FIELD, b"\x00")
        + wrapped.ljust(_WRAPPED_FIELD, b"\x00")
    )
    return body + hashlib.sha256(body).digest()[:_SLOT_CHECK]


def decode_slot(raw: bytes, position: int) -> KeySlot | None:
    """The slot, or None when empty (zeroed) or torn (its check fails)."""
    body, check = raw[:-_SLOT_CHECK], raw[-_SLOT_CHECK:]
    if hashlib.sha256(body).digest()[:_SLOT_CHECK] != check:
        return None
    generation, id_length, _, wrapped_length = _SLOT_PREFIX.unpack_from(body)
    if not 0 < id_length <= _KEY_ID_FIELD or not 0 < wrapped_length <= _WRAPPED_FIELD:
        return None
    start = _SLOT_PREFIX.size
    key_id = body[start : start + id_length].decode("ascii", errors="replace")
    start += _KEY_ID_FIELD
    return KeySlot(position, generation, key_id, body[start : start + wrapped_length])


def parse_header(raw: bytes, storage_key: str) -> ObjectHeader:
    if len(raw) < HEADER_BYTES:
        raise StoredObjectIntegrityError(f"stored object {storage_key} is truncated (no header)")
    magic, version, cipher, chunk_log2, _, _, _ = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise StoredObjectIntegrityError(
            f"stored object {storage_key} is not an encrypted OpenVNA object (stored before "
            "encryption was enabled, or overwritten)"
        )
    if version != FORMAT_VERSION or cipher != CIPHER_AES_256_GCM or not 12 <= chunk_log2 <= 24:
        raise StoredObjectIntegrityError(
            f"stored object {storage_key} has an unknown format (version {version}, "
            f"cipher {cipher}, chunk 2^{chunk_log2})"
        )
    slots = tuple(
        decode_slot(raw[offset : offset + SLOT_BYTES], position)
        for position, offset in enumerate(SLOT_OFFSETS)
    )
    return ObjectHeader(raw[:FIXED_BYTES], 1 << chunk_log2, (slots[0], slots[1]))


def plaintext_layout(ciphertext_size: int, chunk_size: int, storage_key: str) -> tuple[int, int]:
    """(plaintext size, number of chunks) of an object file of ``ciphertext_size`` bytes."""
    body = ciphertext_size - HEADER_BYTES
    chunks = -(-body // (chunk_size + TAG_BYTES)) if body > 0 else 0
    size = body - chunks * TAG_BYTES
    if chunks == 0 or (chunks > 1 and size == (chunks - 1) * chunk_size):
        raise StoredObjectIntegrityError(
            f"stored object {storage_key} is truncated ({ciphertext_size} bytes is no whole "
            "number of encrypted chunks)"
        )
    return size, chunks


class ChunkCipher:
    """AES-256-GCM for the chunks of one object, bound to its header and storage key."""

    def __init__(self, data_key: bytes, fixed: bytes, storage_key: str) -> None:
        self._aead = AESGCM(data_key)
        self._prefix = fixed[16:24]
        self._associated = fixed + storage_key.encode("utf-8")
        self.storage_key = storage_key
        self.chunk_size = 1 << fixed[10]

    def encrypt(self, index: int, plaintext: bytes | memoryview, final: bool) -> bytes:
        if index >= 1 << 32:
            raise OpenVNAError("object too large for one encrypted object (2^32 chunks)")
        return self._aead.encrypt(
            self._prefix + _NONCE_COUNTER.pack(index),
            plaintext,
            self._associated + _CHUNK_LABEL.pack(index, final),
        )

    def decrypt(self, index: int, ciphertext: bytes | memoryview, final: bool) -> bytes:
        try:
            return self._aead.decrypt(
                self._prefix + _NONCE_COUNTER.pack(index),
                ciphertext,
                self._associated + _CHUNK_LABEL.pack(index, final),
            )
        except InvalidTag as error:
            raise self._damaged(index) from error

    def decrypt_into(
        self, index: int, ciphertext: memoryview, final: bool, target: memoryview
    ) -> None:
        """Decrypt straight into ``target`` (no intermediate copy); on a failed tag the
        target is zeroed before raising, so no unauthenticated byte stays there."""
        decrypt_into = getattr(self._aead, "decrypt_into", None)  # cryptography >= 45
        if decrypt_into is None:
            target[:] = self.decrypt(index, ciphertext, final)
            return
        try:
            decrypt_into(
                self._prefix + _NONCE_COUNTER.pack(index),
                ciphertext,
                self._associated + _CHUNK_LABEL.pack(index, final),
                target,
            )
        except InvalidTag as error:
            target[:] = bytes(len(target))
            raise self._damaged(index) from error

    def _damaged(self, index: int) -> StoredObjectIntegrityError:
        return StoredObjectIntegrityError(
            f"stored object {self.storage_key} failed its integrity check at chunk "
            f"{index} (AES-GCM tag mismatch): it was altered, truncated or damaged"
        )


def new_fixed_header() -> bytes:
    """The 64 fixed header bytes of a new object, with a fresh random nonce prefix."""
    return _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        CIPHER_AES_256_GCM,
        CHUNK_SIZE_LOG2,
        bytes(5),
        secrets.token_bytes(8),
        bytes(40),
    )
