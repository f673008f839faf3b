"""Master keys for encryption at rest: a keyring file, or one key from the environment.

Every stored object is encrypted with a data key of its own (:mod:`openvna.storage.crypto`);
the data key is kept in the object's header *wrapped* (AES key wrap, RFC 3394) by a
master key named by its key id. Master keys therefore never touch instance bytes, and
rotating one means re-wrapping a few dozen bytes per object, not re-encrypting images.

Where master keys live is behind :class:`KeyProvider`: wrapping and unwrapping happen
inside the provider, so a KMS or HSM can be plugged in later without ever handing its
key to this process. Two providers exist now:

* :class:`KeyringProvider`: a JSON keyring (``security.encryption.keyring_file``, default
  ``<data_dir>/keys/keyring.json``, mode 0600) of versioned master keys, exactly one of
  them active (used for new objects). ``openvna keys`` writes it atomically; a running
  server notices a rewritten keyring within a second and reloads it, so rotation needs
  no restart.
* :class:`StaticKeyProvider`: one master key from ``security.encryption.master_key``
  (base64 of 32 bytes, usually ``OPENVNA_SECURITY__ENCRYPTION__MASTER_KEY``). Its key id
  is derived from the key, so the same key always gets the same id.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from openvna.config import Settings
from openvna.errors import OpenVNAError

logger = logging.getLogger(__name__)

KEYRING_FORMAT = "openvna-keyring/1"
MASTER_KEY_BYTES = 32
"""AES-256 master keys."""
RELOAD_INTERVAL = 1.0
"""Seconds between checks whether the keyring file was rewritten (by ``openvna keys``)."""
_KEY_ID = re.compile(r"[A-Za-z0-9._:-]{1,96}")


class MasterKeyError(OpenVNAError):
    """A master key is missing, wrong or unusable: stored objects cannot be read."""

    dicom_status = 0xC000
    http_status = 500


class KeyringError(MasterKeyError):
    """The key configuration cannot be used (no key, malformed keyring, unsafe mode)."""


class UnknownMasterKeyError(MasterKeyError):
    """An object's data key is wrapped by a master key this process does not have."""


class KeyUnwrapError(MasterKeyError):
    """The master key of that id does not unwrap the data key (wrong key, or the
    wrapped key was altered)."""


@dataclass(frozen=True)
class MasterKey:
    """One master key: ``version`` counts up with every rotation."""

    key_id: str
    version: int
    created: str
    material: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "version": self.version,
            "created": self.created,
            "key": base64.b64encode(self.material).decode("ascii"),
        }


def new_master_key(version: int) -> MasterKey:
    """A fresh random 256-bit master key (``secrets``: the OS CSPRNG)."""
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return MasterKey(
        key_id=f"mk{version}-{secrets.token_hex(4)}",
        version=version,
        created=created.replace("+00:00", "Z"),
        material=secrets.token_bytes(MASTER_KEY_BYTES),
    )


@dataclass(frozen=True)
class Keyring:
    """Versioned master keys, one of them active (wraps the data keys of new objects)."""

    active: str
    keys: tuple[MasterKey, ...]

    def __post_init__(self) -> None:
        ids = [key.key_id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyringError("the keyring names a key id twice")
        if self.active not in ids:
            raise KeyringError(f"the keyring's active key {self.active!r} is not in it")

    @property
    def active_key(self) -> MasterKey:
        return next(key for key in self.keys if key.key_id == self.active)

    def get(self, key_id: str) -> MasterKey | None:
        return next((key for key in self.keys if key.key_id == key_id), None)

    @classmethod
    def create(cls) -> Keyring:
        first = new_master_key(1)
        return cls(active=first.key_id, keys=(first,))

    def rotated(self) -> Keyring:
        """A new active key of the next version; the others stay to read old objects."""
        newest = new_master_key(max(key.version for key in self.keys) + 1)
        return Keyring(active=newest.key_id, keys=(*self.keys, newest))

    def retired(self) -> Keyring:
        """Only the active key (after every object was re-wrapped with it)."""
        return Keyring(active=self.active, keys=(self.active_key,))

    def to_json(self) -> str:
        document = {
            "format": KEYRING_FORMAT,
            "active": self.active,
            "keys": [key.to_json() for key in self.keys],
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> Keyring:
        try:
            document = json.loads(text)
            if document.get("format") != KEYRING_FORMAT:
                raise KeyringError(f"{source} is not an OpenVNA keyring ({KEYRING_FORMAT})")
            keys = tuple(
                MasterKey(
                    key_id=_checked_key_id(str(entry["id"])),
                    version=int(entry["version"]),
                    created=str(entry.get("created", "")),
                    material=decode_master_key(str(entry["key"]), f"key {entry['id']}"),
                )
                for entry in document["keys"]
            )
            return cls(active=str(document["active"]), keys=keys)
        except KeyringError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise KeyringError(f"keyring {source} is malformed: {error}") from error


def _checked_key_id(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise KeyringError(f"key id {key_id!r} is not 1-96 letters, digits or ._:-")
    return key_id


def decode_master_key(text: str, what: str = "security.encryption.master_key") -> bytes:
    """The 32 bytes of a base64 master key; a clear error for anything else."""
    try:
        material = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise KeyringError(f"{what} is not valid base64: {error}") from error
    if len(material) != MASTER_KEY_BYTES:
        raise KeyringError(
            f"{what} must be {MASTER_KEY_BYTES} bytes (AES-256) in base64, e.g. the output "
            f"of `openssl rand -base64 32`; it is {len(material)} bytes"
        )
    return material


def keyring_path(settings: Settings) -> Path:
    """``security.encryption.keyring_file``, or ``<data_dir>/keys/keyring.json``."""
    configured = settings.security.encryption.keyring_file
    return configured if configured is not None else settings.data_dir / "keys" / "keyring.json"


def read_keyring(path: Path) -> Keyring:
    """Load the keyring, refusing one that group or others may read (like ssh does)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise KeyringError(f"keyring {path} does not exist") from error
    except OSError as error:
        raise KeyringError(f"keyring {path} cannot be read: {error.strerror}") from error
    if mode & 0o077:
        raise KeyringError(
            f"keyring {path} is accessible by group or others (mode {mode & 0o777:04o}): "
            f"run `chmod 600 {path}`"
        )
    return Keyring.from_json(text, path)


def write_keyring(path: Path, keyring: Keyring) -> None:
    """Replace the keyring atomically: temp file (0600) → fsync → rename → fsync folder.

    A crash leaves either the old or the new keyring, never a torn one; a server that
    reloads it never sees half a file.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(keyring.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def keyring_lock(path: Path) -> Iterator[None]:
    """Exclusive use of the keyring by one ``openvna keys`` command at a time."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise KeyringError(f"another `openvna keys` command is using {path}") from error
        yield
    finally:
        os.close(descriptor)


class KeyProvider(Protocol):
    """Where master keys live. Wrapping happens inside, so a KMS never hands out a key."""

    def active_key_id(self) -> str:
        """The key that wraps the data keys of new objects."""
        ...

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        """``data_key`` wrapped by master key ``key_id`` (at most 360 bytes)."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The data key; ``UnknownMasterKeyError`` or ``KeyUnwrapError`` otherwise."""
        ...

    def refresh(self, *, force: bool = False) -> None:
        """Pick up keys added or retired since loading (cheap; throttled unless forced)."""
        ...


class _LocalKeys:
    """AES key wrap (RFC 3394) with master keys held in this process."""

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        self._keys = keys
        self._active = active

    def active_key_id(self) -> str:
        self.refresh()
        return self._active

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        return aes_key_wrap(self._material(key_id), data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._material(key_id), wrapped)
        except InvalidUnwrap as error:
            raise KeyUnwrapError(
                f"master key {key_id} does not unwrap this data key: the key is not the one "
                "the object was written with, or the object's header was altered"
            ) from error

    def refresh(self, *, force: bool = False) -> None:
        return None

    def key_ids(self) -> list[str]:
        return list(self._keys)

    def _material(self, key_id: str) -> bytes:
        material = self._keys.get(key_id)
        if material is None:
            raise UnknownMasterKeyError(self._unknown(key_id))
        return material

    def _unknown(self, key_id: str) -> str:
        return f"master key {key_id} is not available"


class StaticKeyProvider(_LocalKeys):
    """One master key from the configuration (the environment, usually)."""

    def __init__(self, material: bytes) -> None:
        super().__init__({static_key_id(material): material}, static_key_id(material))

    def _unknown(self, key_id: str) -> str:
        return (
            f"master key {key_id} is not available: security.encryption.master_key holds "
            f"key {self._active}"
        )


def static_key_id(material: bytes) -> str:
    """A stable id for a configured key (a hash prefix: says nothing about the key)."""
    return "env-" + hashlib.sha256(b"openvna master key id\x00" + material).hexdigest()[:12]


class KeyringProvider(_LocalKeys):
    """Master keys from a keyring file, reloaded when ``openvna keys`` rewrites it."""

    def __init__(self, path: Path) -> None:
        keyring = read_keyring(path)
        super().__init__(_materials(keyring), keyring.active)
        self.path = path
        self._signature = _signature(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def refresh(self, *, force: bool = False) -> None:
        """Reload when the file changed (a rename gives it a new inode); checks at most
        once per :data:`RELOAD_INTERVAL` unless ``force``d (an unknown key id was met)."""
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_INTERVAL:
            return
        with self._lock:
            self._checked = now
            signature = _signature(self.path)
            if signature == self._signature:
                return
            try:
                keyring = read_keyring(self.path)
            except KeyringError:
                # keep serving with the keys we have; the next check tries again
                logger.exception("keyring %s changed but cannot be loaded", self.path)
                return
            self._keys, self._active = _materials(keyring), keyring.active
            self._signature = signature

    def _unknown(self, key_id: str) -> str:
        return f"master key {key_id} is not in keyring {self.path} (retired, or another keyring)"


def _materials(keyring: Keyring) -> dict[str, bytes]:
    return {key.key_id: key.material for key in keyring.keys}


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def key_provider(settings: Settings) -> KeyProvider:
    """The master keys the settings name; a start-up error that says how to fix it."""
    encryption = settings.security.encryption
    if encryption.master_key:
        return StaticKeyProvider(decode_master_key(encryption.master_key))
    path = keyring_path(settings)
    if not path.exists():
        raise KeyringError(
            "security.encryption.enabled is true but there is no master key: create a "
            f"keyring with `openvna keys init --data-dir {settings.data_dir}` (writes "
            f"{path}), or set OPENVNA_SECURITY__ENCRYPTION__MASTER_KEY to a base64 "
            "256-bit key (`openssl rand -base64 32`)"
        )
    return KeyringProvider(path)


__all__ = [
    "KeyProvider",
    "KeyUnwrapError",
    "Keyring",
    "KeyringError",
    "KeyringProvider",
    "MasterKey",
    "MasterKeyError",
    "StaticKeyProvider",
    "UnknownMasterKeyError",
    "key_provider",
    "keyring_lock",
    "keyring_path",
    "read_keyring",
    "write_keyring",
]
