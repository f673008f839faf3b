"""The duplicate policy decides what a second copy of a SOP Instance UID does."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from sqlalchemy import select

from openvna.app import open_archive
from openvna.archive.events import InstanceStored
from openvna.archive.ingest import ExpectedIdentity, IngestResult, Origin
from openvna.archive.service import Archive
from openvna.config import DuplicatePolicy, load_settings
from openvna.errors import DuplicateInstanceError, MissingAttributeError, StudyMismatchError
from openvna.index.repository import StoreOutcome
from openvna.index.schema import instances, series, studies
from openvna.tasks.inprocess import InProcessExecutor

SOP_UID = "1.2.826.0.1.3680043.8.498.21.1.1.1"
OTHER_SOP_UID = "1.2.826.0.1.3680043.8.498.21.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.8.498.21.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.21.1.1"


def write_instance(path: Path, comment: str, sop_uid: str = SOP_UID) -> Path:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.PatientID = "DUP"
    ds.PatientName = "Duplicate^Test"
    ds.Modality = "CT"
    ds.ImageComments = comment
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Harness:
    archive: Archive
    executor: InProcessExecutor
    events: list[InstanceStored]
    first_event: threading.Event
    root: Path

    def ingest(self, path: Path, calling_aet: str = "MODALITY") -> IngestResult:
        with path.open("rb") as source:
            return self.archive.ingest_file(source, origin=Origin("test", calling_aet=calling_aet))

    def rows(self) -> list[tuple[int, bool, str, str]]:
        """(version, is_latest, storage_key, sha256) of every row of SOP_UID."""
        with self.archive.engine.connect() as connection:
            return [
                (int(r.version), bool(r.is_latest), str(r.storage_key), str(r.sha256))
                for r in connection.execute(
                    select(
                        instances.c.version,
                        instances.c.is_latest,
                        instances.c.storage_key,
                        instances.c.sha256,
                    )
                    .where(instances.c.sop_instance_uid == SOP_UID)
                    .order_by(instances.c.version)
                )
            ]

    def referenced_keys(self) -> set[str]:
        with self.archive.engine.connect() as connection:
            return {str(k) for (k,) in connection.execute(select(instances.c.storage_key))}

    def stored_keys(self) -> set[str]:
        return set(self.archive.storage.iter_keys())

    def counts(self) -> tuple[int, int, int]:
        with self.archive.engine.connect() as connection:
            study = connection.execute(
                select(studies.c.number_of_instances, studies.c.size_bytes)
            ).one()
            in_series = connection.execute(select(series.c.number_of_instances)).scalar_one()
        return int(study[0]), int(in_series), int(study[1])

    def stored_bytes(self, key: str) -> bytes:
        with self.archive.storage.open(key) as handle:
            return handle.read()

    def drain(self) -> list[InstanceStored]:
        """Wait for every delivery the bus handed to the executor."""
        self.executor.shutdown(wait=True)
        return list(self.events)


def harness(tmp_path: Path, policy: DuplicatePolicy) -> Harness:
    settings = load_settings(
        None, data_dir=tmp_path / "data", **{"ingest.duplicate_policy": policy}
    )
    assert settings.ingest.duplicate_policy is policy
    archive, executor = open_archive(settings)
    events: list[InstanceStored] = []
    first = threading.Event()
    lock = threading.Lock()

    def on_stored(event: InstanceStored) -> None:
        with lock:
            events.append(event)
        first.set()

    archive.bus.subscribe(InstanceStored, on_stored)
    return Harness(archive, executor, events, first, tmp_path)


@pytest.fixture(params=list(DuplicatePolicy))
def any_policy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = harness(tmp_path, request.param)
    yield h
    h.executor.shutdown()
    h.archive.close()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        h.executor.shutdown()
        h.archive.close()


def open_with(policy: DuplicatePolicy, tmp_path: Path, made: list[Harness]) -> Harness:
    h = harness(tmp_path, policy)
    made.append(h)
    return h


def test_first_store_publishes_instance_stored(any_policy: Harness) -> None:
    h = any_policy
    result = h.ingest(write_instance(h.root / "a.dcm", "first"), calling_aet="CT01")
    assert result.outcome is StoreOutcome.STORED
    assert result.storage_key is not None
    assert h.first_event.wait(5), "InstanceStored was not delivered"
    (event,) = h.drain()
    assert event == InstanceStored(
        study_instance_uid=STUDY_UID,
        series_instance_uid=SERIES_UID,
        sop_instance_uid=SOP_UID,
        sop_class_uid=CTImageStorage,
        storage_key=result.storage_key,
        calling_aet="CT01",
        outcome="stored",
    )


def test_identical_copy_is_a_harmless_duplicate_under_every_policy(any_policy: Harness) -> None:
    h = any_policy
    path = write_instance(h.root / "a.dcm", "same")
    first = h.ingest(path)
    again = h.ingest(path)
    assert again.outcome is StoreOutcome.DUPLICATE_SAME
    assert again.storage_key is None
    assert len(h.rows()) == 1
    assert h.stored_keys() == h.referenced_keys() == {first.storage_key}
    assert h.counts()[:2] == (1, 1)
    assert [e.outcome for e in h.drain()] == ["stored"]  # no event for the copy


def test_reject_keeps_the_stored_instance(tmp_path: Path, make: list[Harness]) -> None:
    h = open_with(DuplicatePolicy.REJECT, tmp_path, make)
    first = h.ingest(write_instance(tmp_path / "a.dcm", "original"))
    assert first.storage_key is not None
    original = h.stored_bytes(first.storage_key)
    with pytest.raises(DuplicateInstanceError, match=SOP_UID) as caught:
        h.ingest(write_instance(tmp_path / "b.dcm", "changed"))
    assert caught.value.dicom_status == 0xB000
    assert caught.value.http_status == 409
    assert h.rows() == [(1, True, first.storage_key, hashlib.sha256(original).hexdigest())]
    assert h.stored_keys() == h.referenced_keys() == {first.storage_key}  # no orphan
    assert h.stored_bytes(first.storage_key) == original
    assert list((h.archive.storage.root / "tmp").iterdir()) == []  # type: ignore[attr-defined]
    assert h.counts()[:2] == (1, 1)
    assert [e.outcome for e in h.drain()] == ["stored"]


def test_overwrite_replaces_bytes_and_row(tmp_path: Path, make: list[Harness]) -> None:
    h = open_with(DuplicatePolicy.OVERWRITE, tmp_path, make)
    first = h.ingest(write_instance(tmp_path / "a.dcm", "original"))
    second = h.ingest(write_instance(tmp_path / "b.dcm", "changed, and longer too"))
    assert second.outcome is StoreOutcome.OVERWRITTEN
    assert second.storage_key is not None and second.storage_key != first.storage_key
    replacement = h.stored_bytes(second.storage_key)
    assert b"changed, and longer too" in replacement
    assert h.rows() == [(1, True, second.storage_key, hashlib.sha256(replacement).hexdigest())]
    assert h.stored_keys() == h.referenced_keys() == {second.storage_key}  # old bytes gone
    assert h.counts() == (1, 1, len(replacement))
    events = h.drain()
    assert sorted(e.outcome for e in events) == ["overwritten", "stored"]
    assert {e.storage_key for e in events} == {first.storage_key, second.storage_key}


def test_keep_both_adds_a_version(tmp_path: Path, make: list[Harness]) -> None:
    h = open_with(DuplicatePolicy.KEEP_BOTH, tmp_path, make)
    first = h.ingest(write_instance(tmp_path / "a.dcm", "original"))
    second = h.ingest(write_instance(tmp_path / "b.dcm", "changed"))
    third = h.ingest(write_instance(tmp_path / "c.dcm", "changed again"))
    assert second.outcome is StoreOutcome.NEW_VERSION
    assert third.outcome is StoreOutcome.NEW_VERSION
    keys = [first.storage_key, second.storage_key, third.storage_key]
    assert [(v, latest, key) for v, latest, key, _ in h.rows()] == [
        (1, False, keys[0]),
        (2, False, keys[1]),
        (3, True, keys[2]),
    ]
    assert h.stored_keys() == h.referenced_keys() == set(keys)
    assert h.counts()[:2] == (1, 1)  # versions of one instance count once
    # retrieval sees only the latest version
    (retrievable,) = h.archive.find_retrievable(sop_instance_uids=(SOP_UID,))
    assert retrievable.storage_key == third.storage_key
    assert sorted(e.outcome for e in h.drain()) == ["new-version", "new-version", "stored"]


def test_other_instances_are_unaffected(tmp_path: Path, make: list[Harness]) -> None:
    h = open_with(DuplicatePolicy.REJECT, tmp_path, make)
    h.ingest(write_instance(tmp_path / "a.dcm", "one"))
    other = h.ingest(write_instance(tmp_path / "b.dcm", "two", sop_uid=OTHER_SOP_UID))
    assert other.outcome is StoreOutcome.STORED
    assert h.counts()[:2] == (2, 2)
    assert len(h.stored_keys()) == 2


def test_expected_study_is_checked_on_the_header(tmp_path: Path, make: list[Harness]) -> None:
    """STOW-RS ``POST /studies/{study}`` refuses an instance of another study (0xC409)."""
    h = open_with(DuplicatePolicy.REJECT, tmp_path, make)
    path = write_instance(tmp_path / "a.dcm", "study")
    other_study = "1.2.826.0.1.3680043.8.498.21.2"
    with path.open("rb") as source, pytest.raises(StudyMismatchError) as caught:
        h.archive.ingest_file(
            source,
            origin=Origin("test"),
            expected=ExpectedIdentity(
                sop_class_uid="", sop_instance_uid="", study_instance_uid=other_study
            ),
        )
    assert isinstance(caught.value, MissingAttributeError)
    assert (caught.value.dicom_status, caught.value.http_status) == (0xC409, 409)
    assert STUDY_UID in str(caught.value) and other_study in str(caught.value)
    assert h.stored_keys() == set() and h.rows() == []

    # the right study, and C-STORE's two positional UIDs without a study, are stored
    with path.open("rb") as source:
        result = h.archive.ingest_file(
            source,
            origin=Origin("test"),
            expected=ExpectedIdentity("", "", study_instance_uid=STUDY_UID),
        )
    assert result.outcome is StoreOutcome.STORED
    with path.open("rb") as source:
        again = h.archive.ingest_file(
            source, origin=Origin("test"), expected=ExpectedIdentity(CTImageStorage, SOP_UID)
        )
    assert again.outcome is StoreOutcome.DUPLICATE_SAME
