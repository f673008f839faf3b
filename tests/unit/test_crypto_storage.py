"""Encryption at rest: chunked AES-256-GCM objects, tamper detection, keys and rotation
(openvna/storage/crypto.py, envelope.py, decrypting.py, rekey.py, security/keys.py).

Real files, real keys, real AES (cryptography): the storage under test is the
filesystem store wrapped by :class:`EncryptedStorage`, exactly as ``open_archive``
composes it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from openvna.config import load_settings
from openvna.security.keys import (
    Keyring,
    KeyringError,
    KeyringProvider,
    KeyUnwrapError,
    StaticKeyProvider,
    UnknownMasterKeyError,
    key_provider,
    read_keyring,
    write_keyring,
)
from openvna.storage.crypto import (
    EncryptedStorage,
    StoredObjectIntegrityError,
    encrypt_if_enabled,
)
from openvna.storage.envelope import (
    HEADER_BYTES,
    SLOT_BYTES,
    SLOT_OFFSETS,
    TAG_BYTES,
    encode_slot,
)
from openvna.storage.filesystem import FilesystemStorage
from openvna.storage.rekey import census, rewrap_all, scrub_all

CHUNK = 64 * 1024
SEED = 20260505
SENTINEL = b"PHI-SENTINEL-7f3a9c"
SIZES = [0, 1, 15, 16, 17, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 5, 1_000_003]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    print(f"random seed {SEED} ({request.node.name})")  # shown when the test fails
    return random.Random(SEED)


def payload(rng: random.Random, size: int) -> bytes:
    """Random bytes with the PHI sentinel inside (when it fits)."""
    data = bytearray(rng.randbytes(size))
    if size > len(SENTINEL):
        at = rng.randrange(0, size - len(SENTINEL))
        data[at : at + len(SENTINEL)] = SENTINEL
    return bytes(data)


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def storage(tmp_path: Path, master_key: bytes) -> Iterator[EncryptedStorage]:
    store = EncryptedStorage(FilesystemStorage(tmp_path / "storage"), StaticKeyProvider(master_key))
    yield store
    store.close()


def store(storage: EncryptedStorage, data: bytes, rng: random.Random) -> str:
    """Write ``data`` in random-sized pieces (as ingest does in 1 MiB ones) and commit."""
    pending = storage.begin_write()
    position = 0
    while position < len(data):
        step = rng.randint(1, 200_000)
        pending.write(data[position : position + step])
        position += step
    stored = pending.commit()
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    return stored.key


def file_of(storage: EncryptedStorage, key: str) -> Path:
    path = storage.inner.local_path(key)
    assert path is not None
    return Path(path)


def read_all(storage: EncryptedStorage, key: str) -> bytes:
    with storage.open(key) as handle:
        return handle.read()


# -- round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_of_every_size(storage: EncryptedStorage, rng: random.Random, size: int):
    data = payload(rng, size)
    key = store(storage, data, rng)
    assert read_all(storage, key) == data
    assert storage.size(key) == size
    with storage.open(key) as handle:
        buffer = bytearray(size + 10)
        assert handle.readinto(buffer) == size
        assert bytes(buffer[:size]) == data
        assert handle.read() == b""
    # the file is ciphertext: header, chunks and one tag per chunk, no sentinel
    raw = file_of(storage, key).read_bytes()
    chunks = max(1, -(-size // CHUNK))
    assert len(raw) == HEADER_BYTES + size + chunks * TAG_BYTES
    assert SENTINEL not in raw
    assert storage.local_path(key) is None


def test_pending_reader_sees_plaintext_before_commit(storage: EncryptedStorage, rng: random.Random):
    data = payload(rng, 3 * CHUNK + 123)
    pending = storage.begin_write()
    pending.write(data[: 2 * CHUNK + 7])
    with pending.reader() as reader:
        assert reader.read() == data[: 2 * CHUNK + 7]
        reader.seek(CHUNK - 3)
        assert reader.read(10) == data[CHUNK - 3 : CHUNK + 7]
    pending.write(data[2 * CHUNK + 7 :])
    with pending.reader() as reader:
        assert reader.read() == data
    key = pending.commit().key
    assert read_all(storage, key) == data


def test_discard_leaves_nothing(storage: EncryptedStorage, rng: random.Random, tmp_path: Path):
    pending = storage.begin_write()
    pending.write(payload(rng, 2 * CHUNK))
    pending.discard()
    assert list(storage.iter_keys()) == []
    assert list((tmp_path / "storage" / "tmp").iterdir()) == []


def test_random_access_reads_equal_plaintext_slices(storage: EncryptedStorage, rng: random.Random):
    data = payload(rng, 5 * CHUNK + 4321)
    key = store(storage, data, rng)
    with storage.open(key) as handle:
        for _ in range(300):
            start = rng.randrange(0, len(data) + 5)
            length = rng.choice([0, 1, 2, 7, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 10**7])
            assert handle.seek(start) == start
            assert handle.read(length) == data[start : start + length]
            assert handle.tell() == max(start, min(len(data), start + length))
        for _ in range(100):  # readinto decrypts whole chunks straight into the buffer
            start = rng.choice([0, CHUNK, 2 * CHUNK, rng.randrange(0, len(data))])
            buffer = bytearray(rng.choice([1, CHUNK, 2 * CHUNK + 3, 20 * CHUNK]))
            handle.seek(start)
            count = handle.readinto(buffer)
            assert bytes(buffer[:count]) == data[start : start + len(buffer)]
            assert handle.tell() == start + count
        handle.seek(-10, os.SEEK_END)
        assert handle.read() == data[-10:]
        handle.seek(CHUNK - 2)
        handle.seek(5, os.SEEK_CUR)
        assert handle.read(4) == data[CHUNK + 3 : CHUNK + 7]
        with pytest.raises(ValueError):
            handle.seek(-1)


def test_pydicom_reads_deferred_values_through_the_decrypting_file(
    storage: EncryptedStorage, rng: random.Random, tmp_path: Path
):
    """Deferred reads go back to the open file (never to a path of ciphertext)."""
    from openvna.sample import generate_samples

    studies = generate_samples(tmp_path / "s", seed=3, patients=1, small=True)
    source = studies[0].paths[0]
    data = source.read_bytes()
    key = store(storage, data, rng)
    with storage.open(key) as handle:
        dataset = dcmread(handle, defer_size=256)
        assert dataset.PixelData == dcmread(source).PixelData
        assert dataset.SOPInstanceUID == dcmread(source).SOPInstanceUID


# -- tampering -----------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_byte_in_any_chunk_raises(storage: EncryptedStorage, rng: random.Random):
    data = payload(rng, 4 * CHUNK + 99)
    for chunk_index in range(5):
        key = store(storage, data, rng)
        offset = HEADER_BYTES + chunk_index * (CHUNK + TAG_BYTES) + rng.randrange(0, 80)
        flip(file_of(storage, key), offset)
        with pytest.raises(StoredObjectIntegrityError, match="integrity check"):
            read_all(storage, key)
    # readinto into the caller's buffer: the damaged chunk's bytes are not left there
    key = store(storage, data, rng)
    flip(file_of(storage, key), HEADER_BYTES + 1 * (CHUNK + TAG_BYTES) + 5)
    with storage.open(key) as handle:
        buffer = bytearray(len(data))
        with pytest.raises(StoredObjectIntegrityError):
            handle.readinto(buffer)
        assert buffer[:CHUNK] == data[:CHUNK]
        assert buffer[CHUNK : 2 * CHUNK] == bytes(CHUNK)
    # a read that never touches the damaged chunk returns authentic bytes
    key = store(storage, data, rng)
    flip(file_of(storage, key), HEADER_BYTES + 2 * (CHUNK + TAG_BYTES) + 5)
    with storage.open(key) as handle:
        assert handle.read(CHUNK) == data[:CHUNK]
        with pytest.raises(StoredObjectIntegrityError):
            handle.read()


def test_a_flipped_tag_or_header_byte_raises(storage: EncryptedStorage, rng: random.Random):
    data = payload(rng, CHUNK + 10)
    for offset in (
        HEADER_BYTES + CHUNK + 3,  # inside the first tag
        len(data) + HEADER_BYTES + 2 * TAG_BYTES - 1,  # last byte of the file
        16,  # nonce prefix (bound in every chunk)
        10,  # chunk size
        0,  # magic
        SLOT_OFFSETS[0] + 200,  # the wrapped data key of the only slot
    ):
        key = store(storage, data, rng)
        flip(file_of(storage, key), offset)
        with pytest.raises((StoredObjectIntegrityError, KeyUnwrapError)):
            read_all(storage, key)


def test_an_empty_object_is_checked_too(storage: EncryptedStorage, rng: random.Random):
    key = store(storage, b"", rng)
    flip(file_of(storage, key), HEADER_BYTES + 3)
    with pytest.raises(StoredObjectIntegrityError):
        storage.open(key)


@pytest.mark.parametrize(
    "cut",
    [
        HEADER_BYTES + 2 * (CHUNK + TAG_BYTES),  # exactly at a chunk boundary
        HEADER_BYTES + CHUNK + TAG_BYTES + 100,  # inside a chunk
        HEADER_BYTES + 5,  # no whole chunk
        HEADER_BYTES,  # header only
        500,  # inside the header
    ],
)
def test_a_truncated_file_raises_at_open(storage: EncryptedStorage, rng: random.Random, cut: int):
    key = store(storage, payload(rng, 3 * CHUNK + 500), rng)
    os.truncate(file_of(storage, key), cut)
    with pytest.raises(StoredObjectIntegrityError):
        storage.open(key)


def test_appended_bytes_raise(storage: EncryptedStorage, rng: random.Random):
    key = store(storage, payload(rng, 2 * CHUNK + 1), rng)
    with open(file_of(storage, key), "ab") as handle:
        handle.write(b"\x00" * 100)
    with pytest.raises(StoredObjectIntegrityError):
        storage.open(key)


def test_swapped_chunks_raise(storage: EncryptedStorage, rng: random.Random):
    key = store(storage, payload(rng, 3 * CHUNK + 7), rng)
    path = file_of(storage, key)
    raw = bytearray(path.read_bytes())
    first = slice(HEADER_BYTES, HEADER_BYTES + CHUNK + TAG_BYTES)
    second = slice(HEADER_BYTES + CHUNK + TAG_BYTES, HEADER_BYTES + 2 * (CHUNK + TAG_BYTES))
    raw[first], raw[second] = raw[second], raw[first]
    path.write_bytes(bytes(raw))
    with pytest.raises(StoredObjectIntegrityError):
        read_all(storage, key)


def test_a_chunk_or_file_from_elsewhere_raises(storage: EncryptedStorage, rng: random.Random):
    data = payload(rng, 2 * CHUNK + 3)
    one, two = store(storage, data, rng), store(storage, data, rng)
    # a chunk of another object, same position, same plaintext: another data key
    raw_one = bytearray(file_of(storage, one).read_bytes())
    raw_two = file_of(storage, two).read_bytes()
    chunk = slice(HEADER_BYTES, HEADER_BYTES + CHUNK + TAG_BYTES)
    raw_one[chunk] = raw_two[chunk]
    file_of(storage, one).write_bytes(bytes(raw_one))
    with pytest.raises(StoredObjectIntegrityError):
        read_all(storage, one)
    # a whole file moved under another key: the storage key is bound in every chunk
    file_of(storage, one).write_bytes(raw_two)
    with pytest.raises(StoredObjectIntegrityError):
        read_all(storage, one)
    assert read_all(storage, two) == data


def test_a_plaintext_file_is_refused(storage: EncryptedStorage, rng: random.Random):
    key = store(storage, b"x", rng)
    file_of(storage, key).write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 2000)
    with pytest.raises(StoredObjectIntegrityError, match="not an encrypted"):
        storage.open(key)


# -- keys ----------------------------------------------------------------------------


def test_wrong_master_key_raises(tmp_path: Path, storage: EncryptedStorage, rng: random.Random):
    key = store(storage, payload(rng, 1000), rng)
    other = EncryptedStorage(storage.inner, StaticKeyProvider(os.urandom(32)))
    with pytest.raises(UnknownMasterKeyError, match="not available"):
        other.open(key)
    # same key id, other key material (a keyring restored from the wrong backup)
    key_id = storage.keys.active_key_id()
    impostor = StaticKeyProvider(os.urandom(32))
    impostor._keys = {key_id: os.urandom(32)}
    with pytest.raises(KeyUnwrapError, match="does not unwrap"):
        EncryptedStorage(storage.inner, impostor).open(key)


def keyring_storage(tmp_path: Path) -> tuple[Path, EncryptedStorage]:
    path = tmp_path / "keys" / "keyring.json"
    write_keyring(path, Keyring.create())
    store_ = EncryptedStorage(FilesystemStorage(tmp_path / "storage"), KeyringProvider(path))
    return path, store_


def test_keyring_file_is_private_and_refused_when_not(tmp_path: Path):
    path = tmp_path / "keys" / "keyring.json"
    keyring = Keyring.create()
    write_keyring(path, keyring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_keyring(path) == keyring
    path.chmod(0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        read_keyring(path)


def test_settings_without_a_key_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in list(os.environ):
        if name.startswith("OPENVNA_"):
            monkeypatch.delenv(name)
    settings = load_settings(data_dir=tmp_path, **{"security.encryption.enabled": True})
    inner = FilesystemStorage(tmp_path / "storage")
    with pytest.raises(KeyringError, match="openvna keys init"):
        encrypt_if_enabled(inner, settings)
    short = base64.b64encode(os.urandom(16)).decode()
    settings = load_settings(
        data_dir=tmp_path,
        **{"security.encryption.enabled": True, "security.encryption.master_key": short},
    )
    with pytest.raises(KeyringError, match="32 bytes"):
        key_provider(settings)
    good = base64.b64encode(os.urandom(32)).decode()
    settings = load_settings(
        data_dir=tmp_path,
        **{"security.encryption.enabled": True, "security.encryption.master_key": good},
    )
    wrapped = encrypt_if_enabled(FilesystemStorage(tmp_path / "storage"), settings)
    assert isinstance(wrapped, EncryptedStorage)
    wrapped.close()
    disabled = load_settings(data_dir=tmp_path)
    plain = FilesystemStorage(tmp_path / "storage")
    assert encrypt_if_enabled(plain, disabled) is plain
    plain.close()


# -- rotation ------------------------------------------------------------------------


def rotate_keyring(path: Path) -> Keyring:
    keyring = read_keyring(path).rotated()
    write_keyring(path, keyring)
    return keyring


def test_rotation_keeps_everything_readable_and_rewraps_headers(tmp_path: Path, rng: random.Random):
    path, storage = keyring_storage(tmp_path)
    old = read_keyring(path).active_key
    objects = {store(storage, payload(rng, size), rng): None for size in SIZES}
    contents = {key: read_all(storage, key) for key in objects}
    headers_before = {key: file_of(storage, key).read_bytes()[:HEADER_BYTES] for key in objects}
    bodies_before = {key: file_of(storage, key).read_bytes()[HEADER_BYTES:] for key in objects}

    new = rotate_keyring(path).active
    report = rewrap_all(storage, new, key_changed_at=0.0, settle=0.0)
    assert report.rewrapped == len(objects) and not report.failed
    assert census(storage).by_key == {new: len(objects)}
    for key, data in contents.items():
        raw = file_of(storage, key).read_bytes()
        assert raw[HEADER_BYTES:] == bodies_before[key]  # content never re-encrypted
        assert raw[:HEADER_BYTES] != headers_before[key]
        assert read_all(storage, key) == data
    # a second run has nothing to do
    assert rewrap_all(storage, new, key_changed_at=0.0, settle=0.0).rewrapped == 0

    # retiring: clear the old slots, drop the old key; a reader with the new key only
    scrub = scrub_all(storage, new)
    assert scrub.complete and scrub.cleared == len(objects)
    write_keyring(path, read_keyring(path).retired())
    assert [k.key_id for k in read_keyring(path).keys] == [new]
    fresh = EncryptedStorage(storage.inner, KeyringProvider(path))
    for key, data in contents.items():
        assert read_all(fresh, key) == data
        assert all(slot.key_id == new for slot in fresh.header(key).newest_first())
    # and the retired key, should it leak later, opens nothing: its slots are cleared
    leaked = tmp_path / "leaked" / "keyring.json"
    write_keyring(leaked, Keyring(active=old.key_id, keys=(old,)))
    with_old_key = EncryptedStorage(storage.inner, KeyringProvider(leaked))
    for key in contents:
        with pytest.raises(UnknownMasterKeyError):
            with_old_key.open(key)
    storage.close()


def test_a_server_reading_during_rotation_reloads_the_keyring(tmp_path: Path, rng: random.Random):
    """A reader that loaded the keyring before the rotation opens re-wrapped objects (it
    reloads on an unknown key id), and a write begun before the rotation re-wraps itself
    at commit."""
    path, rotator = keyring_storage(tmp_path)
    server = EncryptedStorage(rotator.inner, KeyringProvider(path))
    data = payload(rng, 2 * CHUNK + 5)
    key = store(server, data, rng)
    pending = server.begin_write()
    pending.write(data)
    new = rotate_keyring(path).active
    assert rewrap_all(rotator, new, key_changed_at=0.0, settle=0.0).rewrapped == 1
    assert read_all(server, key) == data  # unknown key id → forced reload
    server.keys.refresh(force=True)
    late = pending.commit().key
    assert server.key_id_of(late) == new
    assert read_all(server, late) == data
    assert server.keys.active_key_id() == new
    assert server.key_id_of(store(server, data, rng)) == new
    rotator.close()


def test_a_keyring_from_before_the_rotation_still_reads(tmp_path: Path, rng: random.Random):
    """Until --retire-old the older slot keeps the data key wrapped by the old key: a
    keyring restored from a backup taken before the rotation reads every object."""
    path, storage = keyring_storage(tmp_path)
    backup = tmp_path / "backup" / "keyring.json"
    write_keyring(backup, read_keyring(path))
    contents = {}
    for size in (0, 10, 3 * CHUNK):
        data = payload(rng, size)
        contents[store(storage, data, rng)] = data
    new = rotate_keyring(path).active
    assert rewrap_all(storage, new, key_changed_at=0.0, settle=0.0).rewrapped == 3
    restored = EncryptedStorage(storage.inner, KeyringProvider(backup))
    for key, data in contents.items():
        assert restored.key_id_of(key) == new  # the newest slot: a key it does not have
        assert read_all(restored, key) == data
    storage.close()


class Crash(Exception):
    pass


def test_rotation_interrupted_midway_leaves_everything_readable(tmp_path: Path, rng: random.Random):
    path, storage = keyring_storage(tmp_path)
    old = read_keyring(path).active
    contents = {}
    for size in SIZES * 2:
        data = payload(rng, size)
        contents[store(storage, data, rng)] = data
    new = rotate_keyring(path).active
    done: list[str] = []

    def crash_after_seven(key: str, changed: bool) -> None:
        done.append(key)
        if len(done) == 7:
            raise Crash

    with pytest.raises(Crash):
        rewrap_all(storage, new, key_changed_at=0.0, settle=0.0, progress=crash_after_seven)
    # and a slot write torn by the crash on the eighth object (half a slot on disk)
    eighth = next(key for key in sorted(contents) if key not in done)
    header = storage.header(eighth)
    newest = header.newest_first()[0]
    torn = encode_slot(newest.generation + 1, new, os.urandom(40))[: SLOT_BYTES // 2]
    with open(file_of(storage, eighth), "r+b") as handle:
        handle.seek(SLOT_OFFSETS[1 - newest.position])
        handle.write(torn)

    counts = census(storage).by_key
    assert counts == {new: 7, old: len(contents) - 7}
    reader = EncryptedStorage(storage.inner, KeyringProvider(path))
    for key, data in contents.items():
        assert read_all(reader, key) == data

    # --resume: the same active key, what is left
    report = rewrap_all(storage, new, key_changed_at=0.0, settle=0.0)
    assert report.rewrapped == len(contents) - 7 and not report.failed
    assert census(storage).by_key == {new: len(contents)}
    for key, data in contents.items():
        assert read_all(reader, key) == data
    storage.close()


def test_retiring_is_refused_while_objects_use_the_old_key(tmp_path: Path, rng: random.Random):
    path, storage = keyring_storage(tmp_path)
    key = store(storage, payload(rng, 10), rng)
    new = rotate_keyring(path).active
    report = scrub_all(storage, new)
    assert not report.complete and report.not_on_active == [key]
    storage.close()


# -- the `openvna keys` commands -------------------------------------------------------------


def test_keys_commands(tmp_path: Path, rng: random.Random, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from openvna.cli.main import app

    for name in list(os.environ):
        if name.startswith("OPENVNA_"):
            monkeypatch.delenv(name)
    runner = CliRunner()
    data_dir = ["--data-dir", str(tmp_path)]
    created = runner.invoke(app, ["keys", "init", *data_dir])
    assert created.exit_code == 0, created.output
    keyring_file = tmp_path / "keys" / "keyring.json"
    first = read_keyring(keyring_file).active
    assert runner.invoke(app, ["keys", "init", *data_dir]).exit_code == 1  # never overwrites
    assert read_keyring(keyring_file).active == first

    storage = EncryptedStorage(
        FilesystemStorage(tmp_path / "storage"), KeyringProvider(keyring_file)
    )
    contents = {}
    for size in (0, CHUNK + 1, 5000):
        data = payload(rng, size)
        contents[store(storage, data, rng)] = data
    status = runner.invoke(app, ["keys", "status", *data_dir], env={"COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    assert first in status.output and "3" in status.output

    rotated = runner.invoke(app, ["keys", "rotate", "--retire-old", *data_dir])
    assert rotated.exit_code == 0, rotated.output
    keyring = read_keyring(keyring_file)
    assert keyring.active != first and [k.key_id for k in keyring.keys] == [keyring.active]
    assert census(storage).by_key == {keyring.active: 3}
    for key, data in contents.items():
        assert read_all(storage, key) == data

    # an object nobody can read makes status fail
    file_of(storage, next(iter(contents))).write_bytes(b"plaintext, not ours")
    assert runner.invoke(app, ["keys", "status", *data_dir]).exit_code == 1
    storage.close()

    env = {"OPENVNA_SECURITY__ENCRYPTION__MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    refused = runner.invoke(app, ["keys", "rotate", *data_dir], env=env)
    assert refused.exit_code == 1 and "needs a keyring" in " ".join(refused.output.split())
