"""Encryption at rest against a real ``openvna serve`` (security.encryption.enabled).

Instances whose PatientName and a private text element carry a PHI sentinel go in
through dcmtk's storescu and STOW-RS; no byte under the storage directory shows the
sentinel, and WADO-RS (instances, frames, bulk data, metadata), WADO-URI and C-GET give
back exactly what was sent. ``openvna keys rotate`` runs while a client keeps
retrieving, and ``openvna verify`` plus every retrieval refuse an object with one
flipped byte instead of returning it.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import RLELossless, generate_uid

from openvna.sample import GeneratedStudy
from openvna.security.keys import KeyringProvider, read_keyring
from openvna.storage.crypto import EncryptedStorage
from openvna.storage.envelope import CHUNK_SIZE_LOG2, HEADER_BYTES, MAGIC, TAG_BYTES
from openvna.storage.filesystem import FilesystemStorage
from openvna.storage.rekey import census
from tests.conftest import (
    ArchiveProcess,
    dataset_bytes,
    free_port,
    openvna_command,
    run_tool,
    stored_object_files,
    wait_until,
)

pytestmark = pytest.mark.integration

Samples = tuple[Path, list[GeneratedStudy]]
SENTINEL = "ZQXPHI7731"
PRIVATE_CREATOR = "OPENVNA ENCRYPTION TEST"
CHUNK = 1 << CHUNK_SIZE_LOG2
BOUNDARY = "openvna-encryption-test"
SINGLE = "application/dicom; transfer-syntax=*"
MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def encrypted_env() -> dict[str, str]:
    return {**os.environ, "OPENVNA_SECURITY__ENCRYPTION__ENABLED": "true", "COLUMNS": "200"}


def openvna(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """An ``openvna`` command on the archive's data dir, encryption enabled as the server."""
    result = subprocess.run(
        [*openvna_command(), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=encrypted_env(),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openvna {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Sent:
    """Instances written with the sentinel: SOP Instance UID → file as sent."""

    by_storescu: dict[str, Path] = field(default_factory=dict)
    by_stow: dict[str, Path] = field(default_factory=dict)

    @property
    def all(self) -> dict[str, Path]:
        return {**self.by_storescu, **self.by_stow}

    def dataset(self, uid: str) -> Dataset:
        return dcmread(self.all[uid])


def with_sentinel(source: Path, target: Path, *, rle: bool = False) -> tuple[str, Path]:
    dataset = dcmread(source)
    dataset.PatientName = f"{SENTINEL}^PATIENT"
    block = dataset.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LT", f"referral note mentioning {SENTINEL}")
    if rle:
        dataset.compress(RLELossless)  # a new SOP Instance UID
    target.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(target, enforce_file_format=True)
    assert SENTINEL.encode() in target.read_bytes()  # the control: plaintext has it
    return str(dataset.SOPInstanceUID), target


def prepare(samples: Samples, out: Path, modalities: tuple[str, ...]) -> Sent:
    """Sentinel copies of the first patient's studies of ``modalities``: CT and US go by
    storescu, the others and an RLE copy of the US by STOW-RS."""
    _, studies = samples
    patient = studies[0].patient_id
    sent = Sent()
    seen: dict[str, int] = {}
    for study in studies:
        if study.patient_id != patient or study.modality not in modalities:
            continue
        seen[study.modality] = seen.get(study.modality, 0) + 1
        prefix = study.modality + ("" if seen[study.modality] == 1 else str(seen[study.modality]))
        for index, path in enumerate(study.paths):
            name = f"{prefix}-{index}.dcm"
            if study.modality in ("CT", "US"):
                uid, target = with_sentinel(path, out / "storescu" / name)
                sent.by_storescu[uid] = target
            else:
                uid, target = with_sentinel(path, out / "stow" / name)
                sent.by_stow[uid] = target
            if study.modality == "US":
                uid, target = with_sentinel(path, out / "stow" / "us-rle.dcm", rle=True)
                sent.by_stow[uid] = target
    return sent


def store(archive: ArchiveProcess, sent: Sent) -> None:
    directory = next(iter(sent.by_storescu.values())).parent
    run_tool("storescu", "+sd", "+r", "-aec", archive.ae_title, *archive.address, str(directory))
    body = b"".join(
        f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes()
        for p in sent.by_stow.values()
    )
    body += f"\r\n--{BOUNDARY}--\r\n".encode()
    response = requests.post(
        f"{archive.http_url}/dicom-web/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text


def start_encrypted(directory: Path) -> ArchiveProcess:
    data_dir = directory / "data"
    created = openvna(data_dir, "keys", "init")
    assert "created keyring" in created.stdout
    archive = ArchiveProcess(
        data_dir, free_port(), "OPENVNA", None, directory / "log", (), encrypted_env()
    )
    archive.start()
    return archive


@dataclass
class Loaded:
    archive: ArchiveProcess
    sent: Sent

    def url(self, uid: str) -> str:
        ds = self.sent.dataset(uid)
        return (
            f"{self.archive.http_url}/dicom-web/studies/{ds.StudyInstanceUID}"
            f"/series/{ds.SeriesInstanceUID}/instances/{uid}"
        )

    def uid_of(self, name: str) -> str:
        return next(uid for uid, path in self.sent.all.items() if path.name == name)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples) -> Iterator[Loaded]:
    directory = tmp_path_factory.mktemp("encrypted")
    sent = prepare(sample_studies, directory / "sent", ("CT", "US", "DX", "CR", "MR"))
    archive = start_encrypted(directory)
    try:
        store(archive, sent)
        yield Loaded(archive, sent)
    finally:
        archive.stop()


def parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related answer (RFC 2046 5.1)."""
    content_type = response.headers["Content-Type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    body = response.content
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    found = []
    for chunk in body[: -len(boundary) - 6].split(b"--" + boundary + b"\r\n")[1:]:
        _, _, payload = chunk.partition(b"\r\n\r\n")
        found.append(payload.removesuffix(b"\r\n"))
    return found


def data_set_of(part10: bytes, scratch: Path) -> bytes:
    scratch.write_bytes(part10)
    return dataset_bytes(scratch)


# -- nothing readable at rest -------------------------------------------------------------


def test_no_stored_byte_shows_the_sentinel(loaded: Loaded) -> None:
    storage_dir = loaded.archive.data_dir / "storage"
    every_file = [p for p in storage_dir.rglob("*") if p.is_file()]
    objects = list(stored_object_files(loaded.archive.data_dir).values())
    assert len(objects) == len(loaded.sent.all)
    for path in every_file:
        content = path.read_bytes()
        assert SENTINEL.encode() not in content, path
        assert SENTINEL.encode("utf-16-le") not in content, path
    for path in objects:
        assert path.read_bytes().startswith(MAGIC)
    # nor anywhere else in the data dir (spools, keys), the index excepted (below)
    elsewhere = [
        p
        for p in loaded.archive.data_dir.rglob("*")
        if p.is_file() and not p.name.startswith("index.sqlite")
    ]
    for path in elsewhere:
        assert SENTINEL.encode() not in path.read_bytes(), path
    keyring = loaded.archive.data_dir / "keys" / "keyring.json"
    assert keyring.stat().st_mode & 0o777 == 0o600
    # the index is not encrypted (docs/encryption.md says so): the archive still finds
    # the patient by name
    found = requests.get(
        f"{loaded.archive.http_url}/dicom-web/studies",
        params={"PatientName": f"{SENTINEL}*"},
        timeout=30,
    )
    assert found.status_code == 200 and len(found.json()) >= 3


# -- everything comes back as sent ----------------------------------------------------------


def test_wado_rs_instances_are_the_bytes_sent(loaded: Loaded, tmp_path: Path) -> None:
    scratch = tmp_path / "received.dcm"
    for uid, path in loaded.sent.all.items():
        single = requests.get(loaded.url(uid), headers={"Accept": SINGLE}, timeout=60)
        assert single.status_code == 200, single.text
        assert int(single.headers["Content-Length"]) == len(single.content)
        assert data_set_of(single.content, scratch) == dataset_bytes(path)
        multipart = requests.get(loaded.url(uid), headers={"Accept": MULTIPART}, timeout=60)
        assert multipart.status_code == 200
        [part] = parts(multipart)
        assert part == single.content
    studies = {loaded.sent.dataset(uid).StudyInstanceUID for uid in loaded.sent.all}
    for study in studies:
        response = requests.get(
            f"{loaded.archive.http_url}/dicom-web/studies/{study}",
            headers={"Accept": MULTIPART},
            timeout=60,
        )
        assert response.status_code == 200
        received = {dcmread(io.BytesIO(p)).SOPInstanceUID: p for p in parts(response)}
        assert received
        for uid, part10 in received.items():
            assert data_set_of(part10, scratch) == dataset_bytes(loaded.sent.all[uid])


def test_frames_bulk_data_and_metadata(loaded: Loaded) -> None:
    us = loaded.uid_of("US-0.dcm")
    original = loaded.sent.dataset(us)
    frames = int(original.NumberOfFrames)
    frame_bytes = len(original.PixelData) // frames
    for numbers in ([1], [frames, 2], list(range(1, frames + 1))):
        response = requests.get(
            f"{loaded.url(us)}/frames/{','.join(map(str, numbers))}",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
            timeout=60,
        )
        assert response.status_code == 200
        assert parts(response) == [
            original.PixelData[(n - 1) * frame_bytes : n * frame_bytes] for n in numbers
        ]
    rle = loaded.uid_of("us-rle.dcm")
    rle_original = loaded.sent.dataset(rle)
    response = requests.get(
        f"{loaded.url(rle)}/frames/3,7",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        timeout=60,
    )
    assert response.status_code == 200
    fragments = list(generate_frames(rle_original.PixelData, number_of_frames=frames))
    assert parts(response) == [fragments[2], fragments[6]]

    bulk = f"{loaded.url(us)}/bulkdata/7FE00010"
    whole = requests.get(bulk, headers={"Accept": "application/octet-stream"}, timeout=60)
    assert whole.status_code == 200 and whole.content == original.PixelData
    start, end = CHUNK - 10, 3 * CHUNK + 10  # across chunk boundaries
    ranged = requests.get(
        bulk,
        headers={"Accept": "application/octet-stream", "Range": f"bytes={start}-{end}"},
        timeout=60,
    )
    assert ranged.status_code == 206 and ranged.content == original.PixelData[start : end + 1]

    metadata = requests.get(f"{loaded.url(us)}/metadata", timeout=60).json()[0]
    assert metadata["00100010"]["Value"][0]["Alphabetic"] == f"{SENTINEL}^PATIENT"
    assert metadata["00110010"]["Value"] == [PRIVATE_CREATOR]
    assert metadata["00111001"]["Value"] == [f"referral note mentioning {SENTINEL}"]
    rendered = requests.get(f"{loaded.url(us)}/frames/4/rendered", timeout=60)
    assert rendered.status_code == 200 and rendered.headers["Content-Type"] == "image/jpeg"


def test_wado_uri_returns_the_bytes_sent(loaded: Loaded, tmp_path: Path) -> None:
    for uid, path in loaded.sent.all.items():
        ds = loaded.sent.dataset(uid)
        response = requests.get(
            f"{loaded.archive.http_url}/wado",
            params={
                "requestType": "WADO",
                "studyUID": ds.StudyInstanceUID,
                "seriesUID": ds.SeriesInstanceUID,
                "objectUID": uid,
                "contentType": "application/dicom",
            },
            timeout=60,
        )
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(response.content)
        assert data_set_of(response.content, tmp_path / "uri.dcm") == dataset_bytes(path)


def c_get(archive: ArchiveProcess, out: Path, *keys: str, extra: tuple[str, ...] = ()) -> str:
    out.mkdir(parents=True, exist_ok=True)
    arguments = [arg for key in keys for arg in ("-k", key)]
    result = run_tool(
        "getscu", "-S", "-aec", archive.ae_title, "-od", str(out), *extra, *arguments,
        *archive.address, check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


def received_by_uid(out: Path) -> dict[str, Path]:
    return {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}


def test_c_get_returns_the_bytes_sent(loaded: Loaded, tmp_path: Path) -> None:
    studies = {loaded.sent.dataset(uid).StudyInstanceUID for uid in loaded.sent.all}
    byte_identical = 0
    for number, study in enumerate(sorted(studies)):
        out = tmp_path / f"get{number}"
        report = c_get(
            loaded.archive,
            out,
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={study}",
            extra=("+B",),  # bit-preserving
        )
        received = received_by_uid(out)
        expected = {u for u in loaded.sent.all if loaded.sent.dataset(u).StudyInstanceUID == study}
        assert set(received) == expected, report
        for uid, path in received.items():
            original = loaded.sent.dataset(uid)
            got = dcmread(path)
            if got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID:
                assert dataset_bytes(path) == dataset_bytes(loaded.sent.all[uid])
                byte_identical += 1
                continue
            # getscu takes Explicit VR Little Endian (and no RLE): the RLE copy and the
            # implicit VR DX samples are decoded from the decrypted stream and converted
            assert {e.tag: e.value for e in got if e.tag != 0x7FE00010} == {
                e.tag: e.value for e in original if e.tag != 0x7FE00010
            }
            assert (got.pixel_array == original.pixel_array).all()
    converted = {
        uid
        for uid, path in loaded.sent.all.items()
        if loaded.sent.dataset(uid).file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.1"
    }
    assert byte_identical == len(loaded.sent.all) - len(converted)


# -- rotation while serving -----------------------------------------------------------------


@dataclass
class RetrievalLoop:
    """A client retrieving every instance (WADO-RS, frames, WADO-URI) again and again."""

    loaded: Loaded
    scratch: Path
    rounds: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.one_round()
            except Exception as error:  # every failure is the finding
                self.errors.append(repr(error))
            self.rounds += 1

    def one_round(self) -> None:
        for uid, path in self.loaded.sent.all.items():
            response = requests.get(self.loaded.url(uid), headers={"Accept": SINGLE}, timeout=60)
            if response.status_code != 200:
                self.errors.append(f"{uid}: HTTP {response.status_code} {response.text[:200]}")
                continue
            if data_set_of(response.content, self.scratch) != dataset_bytes(path):
                self.errors.append(f"{uid}: different bytes")
        us = self.loaded.uid_of("US-0.dcm")
        frames = requests.get(
            f"{self.loaded.url(us)}/frames/2,9",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
            timeout=60,
        )
        if frames.status_code != 200:
            self.errors.append(f"frames: HTTP {frames.status_code}")


def test_rotation_while_a_client_keeps_retrieving(tmp_path: Path, sample_studies: Samples) -> None:
    sent = prepare(sample_studies, tmp_path / "sent", ("CT", "US"))
    archive = start_encrypted(tmp_path)
    try:
        store(archive, sent)
        loaded = Loaded(archive, sent)
        keyring_file = archive.data_dir / "keys" / "keyring.json"
        first_key = read_keyring(keyring_file).active
        loop = RetrievalLoop(loaded, tmp_path / "loop.dcm")
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        wait_until(lambda: loop.rounds >= 1, 120, "a first retrieval round")

        rotated = openvna(archive.data_dir, "keys", "rotate")
        rounds_at_rotation = loop.rounds
        second_key = read_keyring(keyring_file).active
        assert second_key != first_key
        assert f"{len(sent.all)} object(s) re-wrapped" in rotated.stdout
        wait_until(lambda: loop.rounds >= rounds_at_rotation + 2, 120, "retrievals after it")

        # a new instance now goes under the new key (the server reloaded the keyring)
        _, path = with_sentinel(next(iter(sent.by_storescu.values())), tmp_path / "new.dcm")
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(path, enforce_file_format=True)
        run_tool("storescu", "-aec", archive.ae_title, *archive.address, str(path))

        status = openvna(archive.data_dir, "keys", "status")
        assert second_key in status.stdout
        storage = EncryptedStorage(
            FilesystemStorage(archive.data_dir / "storage"), KeyringProvider(keyring_file)
        )
        try:
            assert census(storage).by_key == {second_key: len(sent.all) + 1}
        finally:
            storage.close()

        # retire the old key while retrieving: old slots cleared, the key gone
        retired = openvna(archive.data_dir, "keys", "rotate", "--resume", "--retire-old")
        assert f"retired {first_key}" in retired.stdout
        assert [key.key_id for key in read_keyring(keyring_file).keys] == [second_key]
        rounds_at_retire = loop.rounds
        wait_until(lambda: loop.rounds >= rounds_at_retire + 2, 120, "retrievals after retiring")
        loop.stop.set()
        thread.join(timeout=120)
        assert loop.errors == []
        assert loop.rounds >= rounds_at_retire + 2

        out = tmp_path / "get"
        study = next(iter(sent.all.values()))
        c_get(
            archive,
            out,
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={dcmread(study).StudyInstanceUID}",
            extra=("+B",),
        )
        for got_uid, got in received_by_uid(out).items():
            if got_uid in sent.all:
                assert dataset_bytes(got) == dataset_bytes(sent.all[got_uid])
        assert openvna(archive.data_dir, "verify").returncode == 0
    finally:
        archive.stop()


# -- tampering ----------------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


def test_a_flipped_byte_is_reported_and_never_served(
    tmp_path: Path, sample_studies: Samples
) -> None:
    sent = prepare(sample_studies, tmp_path / "sent", ("CT", "US"))
    archive = start_encrypted(tmp_path)
    try:
        store(archive, sent)
        loaded = Loaded(archive, sent)
        clean = openvna(archive.data_dir, "verify")
        assert f"{len(sent.all)} instances checked, 0 problem(s)" in clean.stdout

        # which file holds which instance: decrypt each with the keyring, as the server
        keyring_file = archive.data_dir / "keys" / "keyring.json"
        storage = EncryptedStorage(
            FilesystemStorage(archive.data_dir / "storage"), KeyringProvider(keyring_file)
        )
        try:
            files = {}
            for key in storage.iter_keys():
                with storage.open(key) as handle:
                    uid = dcmread(handle, stop_before_pixels=True).SOPInstanceUID
                files[uid] = Path(str(storage.inner.local_path(key)))
        finally:
            storage.close()
        ct = next(uid for uid, p in sent.all.items() if p.name == "CT-3.dcm")
        us = loaded.uid_of("US-0.dcm")
        flip(files[ct], HEADER_BYTES + 1000)  # a one-chunk instance
        flip(files[us], HEADER_BYTES + 2 * (CHUNK + TAG_BYTES) + 100)  # its third chunk

        damaged = openvna(archive.data_dir, "verify", check=False)
        assert damaged.returncode == 1
        assert f"{len(sent.all)} instances checked, 2 problem(s)" in damaged.stdout
        assert ct in damaged.stdout and us in damaged.stdout
        assert "failed its integrity check" in " ".join(damaged.stdout.split())

        for uid in (ct, us):
            for accept in (SINGLE, MULTIPART):
                response = requests.get(loaded.url(uid), headers={"Accept": accept}, timeout=60)
                assert response.status_code == 500, (uid, accept)
                assert SENTINEL.encode() not in response.content
            ds = sent.dataset(uid)
            uri = requests.get(
                f"{archive.http_url}/wado",
                params={
                    "requestType": "WADO",
                    "studyUID": ds.StudyInstanceUID,
                    "seriesUID": ds.SeriesInstanceUID,
                    "objectUID": uid,
                    "contentType": "application/dicom",
                },
                timeout=60,
            )
            assert uri.status_code == 500
        # frames in the damaged chunk fail; frames elsewhere are authentic and served
        original = sent.dataset(us)
        frame_bytes = len(original.PixelData) // int(original.NumberOfFrames)
        octets = {"Accept": 'multipart/related; type="application/octet-stream"'}
        all_frames = ",".join(str(n) for n in range(1, int(original.NumberOfFrames) + 1))
        bad = requests.get(f"{loaded.url(us)}/frames/{all_frames}", headers=octets, timeout=60)
        assert bad.status_code == 500
        good = requests.get(f"{loaded.url(us)}/frames/1", headers=octets, timeout=60)
        assert good.status_code == 200 and parts(good) == [original.PixelData[:frame_bytes]]

        # C-GET of the CT study: the damaged slice fails its sub-operation, the rest come
        out = tmp_path / "get"
        report = c_get(
            archive,
            out,
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={sent.dataset(ct).StudyInstanceUID}",
            extra=("+B",),
        )
        received = received_by_uid(out)
        ct_series = {u for u, p in sent.all.items() if p.name.startswith("CT-")}
        assert set(received) == ct_series - {ct}, report
        for uid, path in received.items():
            assert dataset_bytes(path) == dataset_bytes(sent.all[uid])
    finally:
        archive.stop()
