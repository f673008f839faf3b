"""Crash durability: SIGKILL the archive while four associations send, restart, check.

The promise under test (ARCHITECTURE.md property 1): the archive never acknowledges an
instance it has not durably stored, and a crash never leaves anything partial visible.
Each round starts an archive, runs four concurrent ``storescu`` senders, SIGKILLs the
archive once the index holds a (seeded, varied) share of the instances, restarts it on
the same data directory and then checks, from the senders' own logs and the files they
sent, that

* every acknowledged SOP Instance has an index row and its stored data set bytes equal
  the bytes that were sent (so does every other indexed instance);
* ``openvna verify`` passes (every stored file's SHA-256 matches the index);
* nothing partial is visible: the files under storage are exactly the index's storage
  keys, the temp folder was swept empty, every stored file parses completely, and the
  patient/study/series counters agree with the instance rows;
* the restarted archive accepts new C-STOREs.

``OPENVNA_DURABILITY_ROUNDS`` (default 3) sets the number of kill/restart rounds and
``OPENVNA_DURABILITY_SEED`` the base seed of the kill moments (printed in every
assertion message, so a failing round can be rerun with the same plan).

Only a process crash is simulated: the kernel's page cache survives SIGKILL, so this
test proves the ordering of write, rename, index commit and answer, not that fsync
reaches the disk (that needs power-loss simulation below the filesystem).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from openvna.sample import generate_ct_series
from tests.conftest import (
    DCMTK_ENV,
    ArchiveProcess,
    dataset_bytes,
    require_tool,
    run_tool,
    stored_object_files,
    wait_until,
)

ROUNDS = int(os.environ.get("OPENVNA_DURABILITY_ROUNDS", "3"))
BASE_SEED = int(os.environ.get("OPENVNA_DURABILITY_SEED", "20250101"))
SENDERS = 4
INSTANCES_PER_SENDER = 80
MATRIX = 256
#: Share of all instances indexed when the kill comes, cycled over the rounds (each
#: jittered by the round's seeded random).
KILL_FRACTIONS = (0.1, 0.3, 0.6)

_SENDING = re.compile(r"^I: Sending file: (?P<path>.+?)\s*$")
_RESPONSE = re.compile(r"^I: Received Store Response \((?P<status>[^)]*)\)")


@dataclass(frozen=True)
class SendPlan:
    """The generated data: one folder per association plus a few for after the restart."""

    folders: tuple[Path, ...]
    after_restart: Path
    uid_of: dict[Path, str]  # every generated file (resolved path) -> SOPInstanceUID
    path_of: dict[str, Path]  # SOPInstanceUID -> generated file

    @property
    def total(self) -> int:
        return sum(len(list(folder.glob("*.dcm"))) for folder in self.folders)


@pytest.fixture(scope="module")
def send_plan(tmp_path_factory: pytest.TempPathFactory) -> SendPlan:
    root = tmp_path_factory.mktemp("durability-data")
    folders = []
    for index in range(SENDERS):
        folder = root / f"sender{index}"
        generate_ct_series(
            folder,
            instances=INSTANCES_PER_SENDER,
            rows=MATRIX,
            columns=MATRIX,
            seed=9100 + index,
            patient_id=f"DURABLE{index}",
            patient_name=f"DURABLE^SENDER{index}",
        )
        folders.append(folder)
    after = root / "after-restart"
    generate_ct_series(
        after,
        instances=2,
        rows=64,
        columns=64,
        seed=9199,
        patient_id="DURABLE-AFTER",
        patient_name="DURABLE^AFTER",
    )
    uid_of = {}
    for path in sorted(root.rglob("*.dcm")):
        uid_of[path.resolve()] = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    path_of = {uid: path for path, uid in uid_of.items()}
    assert len(path_of) == len(uid_of), "generated SOP Instance UIDs must be distinct"
    return SendPlan(tuple(folders), after, uid_of, path_of)


# -- helpers ------------------------------------------------------------------------------


def _index_path(archive: ArchiveProcess) -> Path:
    return archive.data_dir / "index.sqlite"


def _storage_root(archive: ArchiveProcess) -> Path:
    return archive.data_dir / "storage"


@contextlib.contextmanager
def _read_only_index(archive: ArchiveProcess) -> Iterator[sqlite3.Connection]:
    uri = f"{_index_path(archive).resolve().as_uri()}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        yield connection
    finally:
        connection.close()


def _indexed_count(archive: ArchiveProcess) -> int:
    """Instance rows committed so far (a fresh read-only connection per poll)."""
    if not _index_path(archive).exists():
        return 0
    try:
        with _read_only_index(archive) as connection:
            return int(connection.execute("SELECT count(*) FROM instances").fetchone()[0])
    except sqlite3.OperationalError:  # busy, or the schema not created yet
        return 0


def _start_sender(archive: ArchiveProcess, folder: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                require_tool("storescu"),
                "-v",
                "+sd",
                "-aec",
                archive.ae_title,
                *archive.address,
                str(folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )


def _acknowledged(log_text: str) -> tuple[list[Path], list[str]]:
    """Files whose Sending line is followed by a Success (or Warning) Store Response.

    A C-STORE Warning status (0xB000, 0xB007, 0xB006) also means "stored", so it binds
    the archive as much as Success does. Returns (acknowledged files, other statuses).
    """
    acknowledged: list[Path] = []
    others: list[str] = []
    current: Path | None = None
    for line in log_text.splitlines():
        if match := _SENDING.match(line):
            current = Path(match["path"]).resolve()
        elif match := _RESPONSE.match(line):
            status = match["status"]
            assert current is not None, f"Store Response without a Sending line:\n{log_text}"
            if status.startswith(("Success", "Warning")):
                acknowledged.append(current)
            else:
                others.append(f"{_label(current)}: {status}")
            current = None
    return acknowledged, others


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# -- the test -----------------------------------------------------------------------------


@pytest.mark.parametrize("round_index", range(ROUNDS), ids=lambda index: f"round{index}")
def test_sigkill_during_concurrent_stores_loses_nothing_acknowledged(
    round_index: int,
    start_archive: Callable[..., ArchiveProcess],
    send_plan: SendPlan,
    tmp_path: Path,
) -> None:
    require_tool("storescu")
    seed = BASE_SEED + round_index
    rng = random.Random(seed)
    total = send_plan.total
    fraction = KILL_FRACTIONS[round_index % len(KILL_FRACTIONS)] * rng.uniform(0.75, 1.25)
    kill_at = max(1, round(total * fraction))
    where = (
        f"[round {round_index}, seed {seed} (OPENVNA_DURABILITY_SEED={BASE_SEED}), "
        f"kill once {kill_at}/{total} instances are indexed]"
    )
    began = time.monotonic()

    archive: ArchiveProcess = start_archive()
    logs = [tmp_path / f"storescu{index}.log" for index in range(SENDERS)]
    senders = [
        _start_sender(archive, folder, log)
        for folder, log in zip(send_plan.folders, logs, strict=True)
    ]
    try:
        wait_until(
            lambda: (
                _indexed_count(archive) >= kill_at
                or all(sender.poll() is not None for sender in senders)
            ),
            60,
            f"{kill_at} indexed instances {where}",
        )
        still_sending = sum(sender.poll() is None for sender in senders)
        assert archive.process is not None and archive.process.poll() is None, (
            f"archive died before the kill {where}:\n{archive.log_path.read_text()}"
        )
        indexed_at_kill = _indexed_count(archive)  # committed: all of these must survive
        archive.kill()
        wait_until(
            lambda: all(sender.poll() is not None for sender in senders),
            60,
            f"storescu senders to end after the kill {where}",
        )
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    assert still_sending > 0, (
        f"every sender had finished before the kill: nothing was interrupted {where}; "
        "make the data set larger"
    )

    acknowledged_paths: list[Path] = []
    for log in logs:
        text = log.read_text(errors="replace")
        acked, others = _acknowledged(text)
        assert not others, f"unexpected C-STORE statuses before the crash {where}: {others}"
        acknowledged_paths += acked
    acknowledged = {
        str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): path
        for path in acknowledged_paths
    }
    assert len(acknowledged) == len(acknowledged_paths), f"a file was acknowledged twice {where}"
    assert len(acknowledged) < total, (
        f"all {total} instances were acknowledged: the kill came too late {where}"
    )

    archive.start()  # same data directory and port: the start-up sweep runs first
    storage = _storage_root(archive)

    # The sweep removed everything a crash left in the temp folder.
    leftovers = sorted(path.name for path in (storage / "tmp").iterdir())
    assert not leftovers, f"temp folder not empty after restart {where}: {leftovers}"

    with _read_only_index(archive) as connection:
        rows = connection.execute(
            "SELECT sop_instance_uid, storage_key, sha256, size_bytes FROM instances"
        ).fetchall()
        counter_mismatches = connection.execute(
            """
            SELECT 'series', s.series_instance_uid, s.number_of_instances,
                   (SELECT count(*) FROM instances i WHERE i.series_pk = s.pk AND i.is_latest)
            FROM series s
            UNION ALL
            SELECT 'study', st.study_instance_uid, st.number_of_instances,
                   (SELECT count(*) FROM instances i JOIN series s ON i.series_pk = s.pk
                    WHERE s.study_pk = st.pk AND i.is_latest)
            FROM studies st
            UNION ALL
            SELECT 'study bytes', st.study_instance_uid, st.size_bytes,
                   (SELECT coalesce(sum(i.size_bytes), 0) FROM instances i
                    JOIN series s ON i.series_pk = s.pk WHERE s.study_pk = st.pk AND i.is_latest)
            FROM studies st
            """
        ).fetchall()
    counter_mismatches = [row for row in counter_mismatches if row[2] != row[3]]
    assert not counter_mismatches, (
        f"index counters disagree with instance rows {where}: {counter_mismatches}"
    )
    indexed = {row[0]: row for row in rows}
    assert len(indexed) == len(rows), f"duplicate instance rows {where}"

    # Every acknowledged instance survived the crash.
    lost = sorted(set(acknowledged) - set(indexed))
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} acknowledged instances lost {where}: "
        f"{[_label(acknowledged[uid]) for uid in lost]}"
    )
    strangers = sorted(set(indexed) - set(send_plan.path_of))
    assert not strangers, f"index rows for instances nobody sent {where}: {strangers}"
    assert len(indexed) >= indexed_at_kill, (
        f"{indexed_at_kill} rows were committed before the kill, {len(indexed)} after "
        f"the restart {where}"
    )

    # openvna verify: every stored file's SHA-256 matches the index.
    result = archive.cli("verify", check=False)
    assert result.returncode == 0, (
        f"openvna verify failed {where}:\n{result.stdout}\n{result.stderr}"
    )

    # Nothing partial is visible: storage holds exactly the indexed objects, complete.
    on_disk = stored_object_files(storage.parent)
    assert len(on_disk) == len(rows), (
        f"{len(on_disk)} files under storage but {len(rows)} index rows {where}"
    )
    assert set(on_disk) == {row[1] for row in rows}, (
        f"storage and index disagree {where}: "
        f"files without a row {sorted(set(on_disk) - {row[1] for row in rows})}, "
        f"rows without a file {sorted({row[1] for row in rows} - set(on_disk))}"
    )
    for uid, key, _sha256, size_bytes in rows:
        stored_path = on_disk[key]
        sent_path = send_plan.path_of[uid]
        assert stored_path.stat().st_size == size_bytes, f"{key} size differs from index {where}"
        stored = dcmread(stored_path)
        assert stored.SOPInstanceUID == uid, f"{key} holds another instance {where}"
        assert stored.file_meta.MediaStorageSOPInstanceUID == uid, f"{key} meta {where}"
        assert len(stored.PixelData) == stored.Rows * stored.Columns * 2, (
            f"{key} ({_label(sent_path)}) has truncated pixel data {where}"
        )
        assert dataset_bytes(stored_path) == dataset_bytes(sent_path), (
            f"stored data set of {_label(sent_path)} differs from what was sent {where}"
        )

    # The restarted archive takes new C-STOREs.
    result = run_tool(
        "storescu",
        "-v",
        "+sd",
        "-aec",
        archive.ae_title,
        *archive.address,
        str(send_plan.after_restart),
    )
    after_acked, after_other = _acknowledged(result.stdout + result.stderr)
    assert len(after_acked) == 2 and not after_other, (
        f"stores after the restart not acknowledged {where}:\n{result.stdout}{result.stderr}"
    )
    new_uids = {send_plan.uid_of[path] for path in after_acked}
    assert new_uids <= {uid for (uid,) in _select_uids(archive)}, (
        f"instances stored after the restart are not indexed {where}"
    )

    elapsed = time.monotonic() - began
    print(
        f"{where}: {len(acknowledged)} acknowledged, {indexed_at_kill} indexed at the kill, "
        f"{len(indexed)} after the restart, {still_sending} senders interrupted, "
        f"{elapsed:.1f} s"
    )


def _select_uids(archive: ArchiveProcess) -> list[tuple[str]]:
    with _read_only_index(archive) as connection:
        return connection.execute("SELECT sop_instance_uid FROM instances").fetchall()
