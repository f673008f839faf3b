"""Filesystem storage with crash-safe writes.

Durability order (ARCHITECTURE.md property 1): bytes go to ``tmp/<random>.part``,
are fsync'ed, renamed to ``<YYYYMMDD>/<HHMM>/<random>.dcm`` (UTC of the write) and the
containing directory is fsync'ed (and its parents when the shard was just created).
Shards by write time keep consecutive writes in one directory, so a new directory (two
more fsyncs) is needed once a minute rather than for most instances, and the start-up
sweep only lists the shards written since the last clean start. Only then does ``commit``
return, so the index row that follows never points at bytes a crash could lose.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from openvna.errors import NotFoundError, OutOfResourcesError
from openvna.storage.base import StoredObject

_KEY_PATTERN = re.compile(r"[0-9]{8}/[0-9]{4}/[0-9a-f]{32}\.dcm")
_TMP_DIR = "tmp"
_LOCK_FILE = ".lock"


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirectoryState:
    __slots__ = ("completed", "requested", "running")

    def __init__(self) -> None:
        self.requested = 0
        self.completed = 0
        self.running = False


class DirectorySync:
    """Group commit for directory fsyncs.

    Concurrent writers rename into the same shard; a directory fsync makes every rename
    done before it durable. A writer takes a ticket after its rename and waits until a
    sync that started after its ticket has finished; if none is running, it runs one
    for everyone waiting. N concurrent writers cost about two syncs instead of N, and
    none returns before its own rename is durable.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._states: dict[Path, _DirectoryState] = {}

    def sync(self, directory: Path) -> None:
        with self._condition:
            state = self._states.get(directory)
            if state is None:
                if len(self._states) > 64:  # old shards: forget the idle ones
                    for key in [k for k, v in self._states.items() if not v.running]:
                        del self._states[key]
                state = self._states[directory] = _DirectoryState()
            state.requested += 1
            ticket = state.requested
            while state.completed < ticket:
                if state.running:
                    self._condition.wait()
                    continue
                state.running = True
                covered = state.requested
                self._condition.release()
                try:
                    _fsync_directory(directory)
                finally:
                    self._condition.acquire()
                    state.running = False
                    self._condition.notify_all()
                state.completed = max(state.completed, covered)


class FilesystemPendingWrite:
    """A temporary file being filled; becomes visible only on ``commit``."""

    def __init__(self, root: Path, key: str, directory_sync: DirectorySync) -> None:
        self.key = key
        self._root = root
        self._directory_sync = directory_sync
        self._temp_path = root / _TMP_DIR / f"{uuid.uuid4().hex}.part"
        self._file: BinaryIO = open(self._temp_path, "w+b")  # noqa: SIM115 - lives until commit
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        try:
            self._file.write(chunk)
        except OSError as error:
            self.discard()
            raise OutOfResourcesError(f"storage write failed: {error.strerror}") from error
        self._hash.update(chunk)
        self._size += len(chunk)

    def reader(self) -> BinaryIO:
        self._file.flush()
        return open(self._temp_path, "rb")

    @property
    def size(self) -> int:
        return self._size

    def commit(self) -> StoredObject:
        final_path = self._root / self.key
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            shard = final_path.parent
            if not shard.is_dir():
                shard.mkdir(parents=True, exist_ok=True)
                _fsync_directory(shard.parent)
                _fsync_directory(shard.parent.parent)
            os.replace(self._temp_path, final_path)
            self._directory_sync.sync(shard)
        except OSError as error:
            self.discard()
            raise OutOfResourcesError(f"storage commit failed: {error.strerror}") from error
        self._done = True
        return StoredObject(key=self.key, size=self._size, sha256=self._hash.hexdigest())

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temp_path.unlink()


class FilesystemStorage:
    """Objects as files under ``root`` in shards by write time (``YYYYMMDD/HHMM``)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        (self.root / _TMP_DIR).mkdir(parents=True, exist_ok=True)
        self._directory_sync = DirectorySync()
        # Every process using this storage holds a shared lock for its lifetime; crash
        # recovery needs it exclusively (see maintenance()). Blocks while a sweep runs.
        self._lock_fd: int | None = os.open(self.root / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def close(self) -> None:
        """Release this process's claim on the storage directory."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def maintenance(self) -> Iterator[bool]:
        if self._lock_fd is None:
            raise RuntimeError("storage is closed")
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # flock(2): converting a lock is not atomic, a failed upgrade may have dropped
            # our shared lock; take it again before going on.
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    @staticmethod
    def new_key() -> str:
        """A fresh random key in the shard of the current minute (never from DICOM data)."""
        return time.strftime("%Y%m%d/%H%M/", time.gmtime()) + uuid.uuid4().hex + ".dcm"

    def _path(self, key: str) -> Path:
        if not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key

    def begin_write(self) -> FilesystemPendingWrite:
        return FilesystemPendingWrite(self.root, self.new_key(), self._directory_sync)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as error:
            raise NotFoundError(f"stored object {key} is missing") from error

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as error:
            raise NotFoundError(f"stored object {key} is missing") from error

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            _fsync_directory(path.parent)

    def iter_keys(self, modified_since: float | None = None) -> Iterator[str]:
        """Walk the fan-out; with ``modified_since`` skip shards whose mtime is older.

        A rename into a shard updates that directory's mtime, so a crash-recovery sweep
        only needs to look at shards touched since the last clean start.
        """
        for first in sorted(os.scandir(self.root), key=lambda entry: entry.name):
            if first.name == _TMP_DIR or not first.is_dir():
                continue
            for second in os.scandir(first.path):
                if not second.is_dir():
                    continue
                if modified_since is not None and second.stat().st_mtime < modified_since:
                    continue
                for entry in os.scandir(second.path):
                    key = f"{first.name}/{second.name}/{entry.name}"
                    if _KEY_PATTERN.fullmatch(key):
                        yield key

    def sweep_temporary(self) -> int:
        removed = 0
        for entry in os.scandir(self.root / _TMP_DIR):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        return removed
