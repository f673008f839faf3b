"""The start-up sweep removes crash leftovers, but never while another process writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from openvna.app import open_archive
from openvna.config import Settings, load_settings


def _settings(data_dir: Path) -> Settings:
    return load_settings(None, data_dir=data_dir)


def test_sweep_removes_temp_files_and_unreferenced_objects(tmp_path: Path) -> None:
    archive, executor = open_archive(_settings(tmp_path))
    try:
        pending = archive.storage.begin_write()
        pending.write(b"half an instance")  # a crash before commit
        orphan = archive.storage.begin_write()
        orphan.write(b"renamed, never indexed")
        orphan_key = orphan.commit().key  # a crash between rename and index commit
        report = archive.sweep()
        assert report.skipped is False
        assert report.temporary_removed == 1
        assert report.orphans_removed == 1
        assert not archive.storage.exists(orphan_key)
        assert list((archive.storage.root / "tmp").iterdir()) == []  # type: ignore[attr-defined]
    finally:
        executor.shutdown()
        archive.close()


def test_sweep_is_skipped_while_another_process_uses_the_storage(tmp_path: Path) -> None:
    """A second process (an import, another server) may be between rename and index."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from pathlib import Path
                from openvna.storage.filesystem import FilesystemStorage
                storage = FilesystemStorage(Path({str(tmp_path / "storage")!r}))
                pending = storage.begin_write()
                pending.write(b"in flight")
                key = pending.commit().key
                print(key, flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        in_flight_key = holder.stdout.readline().strip()
        archive, executor = open_archive(_settings(tmp_path))
        try:
            report = archive.sweep()
            assert report.skipped is True
            assert archive.storage.exists(in_flight_key)
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=10)
            # the failed upgrade must not have cost this archive its own shared lock
            assert not _exclusive_lock_possible(tmp_path / "storage" / ".lock")
        finally:
            executor.shutdown()
            archive.close()
        assert _exclusive_lock_possible(tmp_path / "storage" / ".lock")
    finally:
        if holder.poll() is None:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=10)
    # once the other process is gone the sweep runs again and removes the orphan
    archive, executor = open_archive(_settings(tmp_path))
    try:
        report = archive.sweep()
        assert report.skipped is False
        assert report.orphans_removed == 1
        assert not archive.storage.exists(in_flight_key)
    finally:
        executor.shutdown()
        archive.close()


def _exclusive_lock_possible(lock_file: Path) -> bool:
    """Whether another process could lock the storage exclusively right now."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
            str(lock_file),
        ],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0
