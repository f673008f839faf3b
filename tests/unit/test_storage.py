"""Filesystem storage: crash-safe writes, opaque keys, nothing left behind."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openvna.errors import NotFoundError
from openvna.storage.filesystem import FilesystemStorage

KEY = re.compile(r"^\d{8}/\d{4}/[0-9a-f]{32}\.dcm$")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FilesystemStorage]:
    store = FilesystemStorage(tmp_path / "storage")
    yield store
    store.close()


def temp_files(storage: FilesystemStorage) -> list[Path]:
    return list((storage.root / "tmp").iterdir())


def test_commit_makes_the_object_visible_with_its_hash(storage: FilesystemStorage) -> None:
    chunks = [b"DICM" * 1000, b"", b"\x00\x01\x02" * 777]
    pending = storage.begin_write()
    for chunk in chunks:
        pending.write(chunk)
    assert pending.size == sum(len(c) for c in chunks)
    assert not storage.exists(pending.key)  # invisible until commit
    stored = pending.commit()
    data = b"".join(chunks)
    assert stored.key == pending.key
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.exists(stored.key)
    assert storage.size(stored.key) == len(data)
    with storage.open(stored.key) as handle:
        assert handle.read() == data
    assert storage.local_path(stored.key) == str(storage.root / stored.key)
    assert temp_files(storage) == []


def test_key_format_is_the_utc_minute_shard_and_a_random_name(
    storage: FilesystemStorage,
) -> None:
    before = time.strftime("%Y%m%d/%H%M", time.gmtime())
    keys = {storage.begin_write().key for _ in range(20)}
    after = time.strftime("%Y%m%d/%H%M", time.gmtime())
    assert len(keys) == 20
    for key in keys:
        assert KEY.match(key), key
        assert key[:13] in {before, after}


def test_reader_sees_bytes_before_commit(storage: FilesystemStorage) -> None:
    pending = storage.begin_write()
    pending.write(b"abc")
    pending.write(b"def")
    with pending.reader() as reader:
        assert reader.read() == b"abcdef"
    pending.discard()


def test_discard_leaves_nothing(storage: FilesystemStorage) -> None:
    pending = storage.begin_write()
    pending.write(b"half an instance")
    assert len(temp_files(storage)) == 1
    pending.discard()
    pending.discard()  # idempotent
    assert temp_files(storage) == []
    assert not storage.exists(pending.key)
    assert list(storage.iter_keys()) == []


def test_discard_after_commit_keeps_the_object(storage: FilesystemStorage) -> None:
    pending = storage.begin_write()
    pending.write(b"kept")
    stored = pending.commit()
    pending.discard()
    assert storage.exists(stored.key)


def test_delete_and_missing_objects(storage: FilesystemStorage) -> None:
    pending = storage.begin_write()
    pending.write(b"x")
    key = pending.commit().key
    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # deleting twice is harmless
    with pytest.raises(NotFoundError):
        storage.open(key)
    with pytest.raises(NotFoundError):
        storage.size(key)


def test_iter_keys_lists_committed_objects_only(storage: FilesystemStorage) -> None:
    keys = set()
    for n in range(3):
        pending = storage.begin_write()
        pending.write(bytes([n]))
        keys.add(pending.commit().key)
    storage.begin_write().write(b"uncommitted")
    (storage.root / "20240101" / "0000").mkdir(parents=True)
    (storage.root / "20240101" / "0000" / "notes.txt").write_text("not an object")
    assert set(storage.iter_keys()) == keys
    assert set(storage.iter_keys(modified_since=time.time() + 3600)) == set()


def test_sweep_temporary_removes_unfinished_writes(storage: FilesystemStorage) -> None:
    for _ in range(2):
        storage.begin_write().write(b"crash")
    assert storage.sweep_temporary() == 2
    assert temp_files(storage) == []


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "../../etc/passwd",
        "20240101/1200/../../../escape.dcm",
        "/etc/passwd",
        "20240101/1200/" + "A" * 32 + ".dcm",
        "20240101/1200/" + "a" * 31 + ".dcm",
        "20240101/1200/" + "a" * 32 + ".dcm/..",
        "20240101/1200/" + "a" * 32 + ".txt",
        "2024010/1200/" + "a" * 32 + ".dcm",
        "20240101/1200/" + "a" * 32 + ".dcm\n",
        "",
    ],
)
def test_invalid_keys_are_rejected(storage: FilesystemStorage, key: str) -> None:
    (storage.root.parent / "escape.dcm").write_bytes(b"secret")
    for operation in (storage.open, storage.exists, storage.size, storage.delete):
        with pytest.raises(ValueError, match="not a storage key"):
            operation(key)
    with pytest.raises(ValueError):
        storage.local_path(key)
    assert (storage.root.parent / "escape.dcm").exists()


def test_maintenance_when_alone_and_after_close(tmp_path: Path) -> None:
    first = FilesystemStorage(tmp_path / "storage")
    try:
        with first.maintenance() as alone:
            assert alone is True
    finally:
        first.close()
    with pytest.raises(RuntimeError), first.maintenance():
        pass


def test_concurrent_commits_share_directory_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit of directory fsyncs: eight writers committing into one shard at once
    cost fewer syncs than writers, and each returns only after a sync that began after
    its own rename (so its directory entry is durable)."""
    import threading

    from openvna.storage import filesystem

    syncs: list[tuple[float, float]] = []
    shard_syncs: list[Path] = []
    real_fsync = filesystem._fsync_directory

    def slow_fsync(path: Path) -> None:
        started = time.monotonic()
        time.sleep(0.02)  # a slow disk: writers pile up behind the running sync
        real_fsync(path)
        syncs.append((started, time.monotonic()))
        if len(path.relative_to(tmp_path / "storage").parts) == 2:  # YYYYMMDD/HHMM
            shard_syncs.append(path)

    monkeypatch.setattr(filesystem, "_fsync_directory", slow_fsync)
    storage = FilesystemStorage(tmp_path / "storage")
    renamed_at: dict[str, float] = {}
    returned_at: dict[str, float] = {}
    real_replace = filesystem.os.replace

    def recording_replace(source: object, target: object) -> None:
        real_replace(source, target)  # type: ignore[arg-type]
        renamed_at[Path(str(target)).name] = time.monotonic()

    monkeypatch.setattr(filesystem.os, "replace", recording_replace)

    def write(number: int) -> None:
        pending = storage.begin_write()
        pending.write(b"instance %d" % number)
        stored = pending.commit()
        returned_at[Path(stored.key).name] = time.monotonic()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    storage.close()
    assert len(returned_at) == 8
    assert 1 <= len(shard_syncs) < 8  # shared: fewer syncs of the shard than writers
    for name, renamed in renamed_at.items():
        covering = [s for s in syncs if s[0] >= renamed and s[1] <= returned_at[name]]
        assert covering, f"{name} returned without a directory sync after its rename"
