"""``openvna import`` and ``openvna verify`` run as real subprocesses on a fresh data dir.

Assertions read the index (SQLite) and the stored Part 10 files directly: the stored data
set bytes must be exactly the imported ones.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from openvna.sample import GeneratedStudy
from tests.conftest import dataset_bytes, openvna_command, stored_object_files

pytestmark = pytest.mark.integration

Samples = tuple[Path, list[GeneratedStudy]]
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


# -- helpers ------------------------------------------------------------------------------


def run_cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``openvna <args> --data-dir <data_dir>``; a wide console so rich never wraps."""
    result = subprocess.run(
        [*openvna_command(), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "1000", **(env or {})},
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def summary_counts(output: str) -> dict[str, int]:
    counts = {}
    for name in ("imported", "duplicates", "rejected"):
        found = re.search(rf"│\s*{name}\s*│\s*(\d+)\s*│", output)
        assert found, f"no '{name}' row in the import summary:\n{output}"
        counts[name] = int(found.group(1))
    return counts


def query(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(data_dir / "index.sqlite")
    try:
        return list(connection.execute(sql))
    finally:
        connection.close()


def count(data_dir: Path, table: str) -> int:
    return int(query(data_dir, f"SELECT count(*) FROM {table}")[0][0])


def storage_files(data_dir: Path) -> list[Path]:
    """Committed objects (everything under storage/ except temp files and the lock)."""
    return sorted(stored_object_files(data_dir).values())


def temp_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "storage" / "tmp").iterdir())


def sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def stored_by_uid(data_dir: Path) -> dict[str, list[tuple[int, bool, str, Path]]]:
    """SOP Instance UID -> [(version, is_latest, sha256, stored file)] from the index."""
    rows: dict[str, list[tuple[int, bool, str, Path]]] = {}
    for uid, version, latest, digest, key in query(
        data_dir,
        "SELECT sop_instance_uid, version, is_latest, sha256, storage_key "
        "FROM instances ORDER BY sop_instance_uid, version",
    ):
        rows.setdefault(str(uid), []).append(
            (int(version), bool(latest), str(digest), data_dir / "storage" / str(key))
        )
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_sample_files(sample_studies: Samples) -> list[Path]:
    _root, studies = sample_studies
    return [path for study in studies for path in study.paths]


def study_files(sample_studies: Samples, modality: str) -> list[Path]:
    _root, studies = sample_studies
    return list(next(study for study in studies if study.modality == modality).paths)


def assert_stored_exactly(data_dir: Path, sources: list[Path]) -> None:
    """The index holds exactly ``sources`` (one version each), stored byte for byte."""
    rows = stored_by_uid(data_dir)
    assert sorted(rows) == sorted(sop_instance_uid(path) for path in sources)
    for path in sources:
        [(version, latest, digest, stored)] = rows[sop_instance_uid(path)]
        assert (version, latest) == (1, True)
        assert sha256(stored) == digest
        assert dataset_bytes(stored) == dataset_bytes(path)
    assert len(storage_files(data_dir)) == len(sources)
    assert temp_files(data_dir) == []


# -- folders, zip archives, DICOMDIRs ------------------------------------------------------


def test_import_folder_then_reimport_is_all_duplicates(
    sample_studies: Samples,
    tmp_path: Path,
) -> None:
    root, studies = sample_studies
    files = all_sample_files(sample_studies)
    assert sorted(files) == sorted(root.rglob("*.dcm"))
    data_dir = tmp_path / "archive"

    first = run_cli(data_dir, "import", str(root))

    assert first.returncode == 0, first.stdout
    assert "importing" in first.stdout
    assert summary_counts(first.stdout) == {"imported": len(files), "duplicates": 0, "rejected": 0}
    assert count(data_dir, "instances") == len(files)
    assert count(data_dir, "series") == len(
        {dcmread(path, stop_before_pixels=True).SeriesInstanceUID for path in files}
    )
    assert count(data_dir, "studies") == len(studies)
    assert count(data_dir, "patients") == len({study.patient_id for study in studies})
    assert_stored_exactly(data_dir, files)
    keys_before = query(data_dir, "SELECT sop_instance_uid, storage_key, sha256 FROM instances")
    # one Data Import audit record (DCM 110107) per imported study, by the command's user
    imports = query(data_dir, "SELECT study_uids, user_id FROM audit_log WHERE event_id='110107'")
    assert sorted(uids for uids, _ in imports) == sorted(s.study_instance_uid for s in studies)
    assert {user for _, user in imports} == {f"system:cli:{getpass.getuser()}"}

    again = run_cli(data_dir, "import", str(root))

    assert again.returncode == 0, again.stdout
    assert summary_counts(again.stdout) == {"imported": 0, "duplicates": len(files), "rejected": 0}
    assert (
        query(data_dir, "SELECT sop_instance_uid, storage_key, sha256 FROM instances")
        == keys_before
    )
    assert len(storage_files(data_dir)) == len(files)
    assert temp_files(data_dir) == []


def test_import_zip_archive(sample_studies: Samples, tmp_path: Path) -> None:
    files = study_files(sample_studies, "CT")[:4] + study_files(sample_studies, "US")
    bundle = tmp_path / "studies.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("export/", "")  # a directory entry is not a file to import
        for number, path in enumerate(files):
            archive.write(path, f"export/{number:03d}/{path.name}")
    data_dir = tmp_path / "archive"

    result = run_cli(data_dir, "import", str(bundle))

    assert result.returncode == 0, result.stdout
    assert summary_counts(result.stdout) == {"imported": len(files), "duplicates": 0, "rejected": 0}
    assert_stored_exactly(data_dir, files)  # also: spooled members removed from storage/tmp


def test_import_dicomdir_imports_referenced_files(sample_studies: Samples, tmp_path: Path) -> None:
    sources = study_files(sample_studies, "MR")[:3] + study_files(sample_studies, "CT")[:2]
    fileset = FileSet()
    for path in sources:
        fileset.add(dcmread(path))
    media = tmp_path / "media"
    fileset.write(media)
    dicomdir = media / "DICOMDIR"
    assert dicomdir.is_file()
    referenced = sorted(path for path in media.rglob("*") if path.is_file() and path != dicomdir)
    assert len(referenced) == len(sources)
    data_dir = tmp_path / "archive"

    result = run_cli(data_dir, "import", str(dicomdir))

    assert result.returncode == 0, result.stdout
    assert summary_counts(result.stdout) == {
        "imported": len(sources),
        "duplicates": 0,
        "rejected": 0,
    }
    assert sorted(stored_by_uid(data_dir)) == sorted(sop_instance_uid(p) for p in sources)
    assert_stored_exactly(data_dir, referenced)  # the files on the media, as written there
    dicomdir_uid = str(dcmread(dicomdir).file_meta.MediaStorageSOPInstanceUID)
    assert dicomdir_uid not in stored_by_uid(data_dir)
    assert query(
        data_dir,
        f"SELECT count(*) FROM instances WHERE sop_class_uid = '{MEDIA_STORAGE_DIRECTORY}'",
    ) == [(0,)]

    # The folder holding the DICOMDIR: its files again (duplicates), the DICOMDIR skipped.
    folder = run_cli(data_dir, "import", str(media))
    assert folder.returncode == 0, folder.stdout
    assert summary_counts(folder.stdout) == {
        "imported": 0,
        "duplicates": len(sources),
        "rejected": 0,
    }
    assert count(data_dir, "instances") == len(sources)


# -- mixed input, reasons -------------------------------------------------------------------


def test_mixed_folder_counts_and_reasons(sample_studies: Samples, tmp_path: Path) -> None:
    good = study_files(sample_studies, "CT")[:3]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for number, path in enumerate(good):
        shutil.copyfile(path, incoming / f"good-{number}.dcm")
    (incoming / "notes.txt").write_text("scanned on Tuesday\n")
    data = good[0].read_bytes()
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")
    assert pixel_data > 0
    (incoming / "cut-short.dcm").write_bytes(data[: pixel_data + 12 + 500])
    data_dir = tmp_path / "archive"

    result = run_cli(data_dir, "import", str(incoming))

    assert result.returncode == 0, result.stdout  # something was imported
    assert summary_counts(result.stdout) == {"imported": 3, "duplicates": 0, "rejected": 2}
    assert re.search(r"1 × not a DICOM file", result.stdout), result.stdout
    assert re.search(r"1 × truncated", result.stdout), result.stdout
    assert "notes.txt" not in result.stdout and "cut-short.dcm" not in result.stdout
    assert_stored_exactly(data_dir, good)

    listed = run_cli(data_dir, "import", str(incoming), "--show-rejected")

    assert listed.returncode == 0, listed.stdout
    assert summary_counts(listed.stdout) == {"imported": 0, "duplicates": 3, "rejected": 2}
    assert re.search(r"notes\.txt: not a DICOM file", listed.stdout), listed.stdout
    assert re.search(r"cut-short\.dcm: truncated: element \(7FE0,0010\)", listed.stdout), (
        listed.stdout
    )
    assert not re.search(r"good-\d\.dcm:", listed.stdout)
    assert_stored_exactly(data_dir, good)


# -- same SOP Instance UID, different content ----------------------------------------------


def import_original_and_changed(
    sample_studies: Samples, tmp_path: Path, policy: str | None
) -> tuple[Path, Path, Path, subprocess.CompletedProcess[str]]:
    original = study_files(sample_studies, "CT")[0]
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    shutil.copyfile(original, first_dir / "slice.dcm")
    changed = dcmread(original)
    changed.ImageComments = "re-sent with a corrected comment"
    changed.save_as(second_dir / "slice.dcm")
    assert dataset_bytes(second_dir / "slice.dcm") != dataset_bytes(original)
    data_dir = tmp_path / "archive"
    env = {"OPENVNA_INGEST__DUPLICATE_POLICY": policy} if policy else None

    first = run_cli(data_dir, "import", str(first_dir), env=env)
    assert summary_counts(first.stdout) == {"imported": 1, "duplicates": 0, "rejected": 0}
    second = run_cli(data_dir, "import", str(second_dir), "--show-rejected", env=env)
    return data_dir, original, second_dir / "slice.dcm", second


def test_duplicate_with_different_content_is_reported_and_kept(
    sample_studies: Samples,
    tmp_path: Path,
) -> None:
    data_dir, original, _changed, result = import_original_and_changed(
        sample_studies, tmp_path, None
    )

    assert result.returncode == 0, result.stdout
    assert summary_counts(result.stdout) == {"imported": 0, "duplicates": 1, "rejected": 0}
    assert "1 × duplicate UID with different content, existing kept" in result.stdout
    assert re.search(
        r"slice\.dcm: SOP Instance \S+ is already stored with different content", result.stdout
    ), result.stdout
    [(version, latest, digest, stored)] = stored_by_uid(data_dir)[sop_instance_uid(original)]
    assert (version, latest) == (1, True)
    assert sha256(stored) == digest
    assert dataset_bytes(stored) == dataset_bytes(original)
    assert storage_files(data_dir) == [stored]
    assert temp_files(data_dir) == []


def test_duplicate_policy_overwrite_replaces_content(
    sample_studies: Samples,
    tmp_path: Path,
) -> None:
    data_dir, original, changed, result = import_original_and_changed(
        sample_studies, tmp_path, "overwrite"
    )

    assert result.returncode == 0, result.stdout
    assert summary_counts(result.stdout) == {"imported": 1, "duplicates": 0, "rejected": 0}
    [(version, latest, digest, stored)] = stored_by_uid(data_dir)[sop_instance_uid(original)]
    assert (version, latest) == (1, True)
    assert sha256(stored) == digest
    assert dataset_bytes(stored) == dataset_bytes(changed)
    assert storage_files(data_dir) == [stored]  # the replaced file was deleted
    assert count(data_dir, "instances") == 1


def test_duplicate_policy_keep_both_keeps_two_versions(
    sample_studies: Samples,
    tmp_path: Path,
) -> None:
    data_dir, original, changed, result = import_original_and_changed(
        sample_studies, tmp_path, "keep-both"
    )

    assert result.returncode == 0, result.stdout
    assert summary_counts(result.stdout) == {"imported": 1, "duplicates": 0, "rejected": 0}
    versions = stored_by_uid(data_dir)[sop_instance_uid(original)]
    assert [(version, latest) for version, latest, _digest, _path in versions] == [
        (1, False),
        (2, True),
    ]
    (_v1, _l1, digest1, stored1), (_v2, _l2, digest2, stored2) = versions
    assert dataset_bytes(stored1) == dataset_bytes(original) and sha256(stored1) == digest1
    assert dataset_bytes(stored2) == dataset_bytes(changed) and sha256(stored2) == digest2
    assert storage_files(data_dir) == sorted([stored1, stored2])


# -- verify -------------------------------------------------------------------------------


def test_verify_clean_then_corrupted(sample_studies: Samples, tmp_path: Path) -> None:
    files = study_files(sample_studies, "CT")
    data_dir = tmp_path / "archive"
    imported = run_cli(data_dir, "import", *map(str, files))
    assert summary_counts(imported.stdout)["imported"] == len(files)

    clean = run_cli(data_dir, "verify")

    assert clean.returncode == 0, clean.stdout
    assert "verifying" in clean.stdout
    assert f"{len(files)} instances checked, 0 problem(s)" in clean.stdout

    victim_uid, victim_key = query(
        data_dir, "SELECT sop_instance_uid, storage_key FROM instances ORDER BY pk LIMIT 1"
    )[0]
    victim = data_dir / "storage" / str(victim_key)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern flipped inside the pixel data
    victim.write_bytes(bytes(data))

    corrupted = run_cli(data_dir, "verify")

    assert corrupted.returncode == 1, corrupted.stdout
    assert f"{len(files)} instances checked, 1 problem(s)" in corrupted.stdout
    problem_lines = [line for line in corrupted.stdout.splitlines() if "✗" in line]
    assert len(problem_lines) == 1, corrupted.stdout
    assert str(victim_uid) in problem_lines[0] and str(victim_key) in problem_lines[0]
    assert "content hash mismatch" in problem_lines[0]


def test_dicomdir_naming_a_missing_file_rejects_it_and_imports_the_rest(
    sample_studies: Samples, tmp_path: Path
) -> None:
    sources = study_files(sample_studies, "CT")[:3]
    fileset = FileSet()
    for path in sources:
        fileset.add(dcmread(path))
    media = tmp_path / "media"
    fileset.write(media)
    referenced = sorted(p for p in media.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    referenced[0].unlink()  # the media lost one file the DICOMDIR still lists
    data_dir = tmp_path / "archive"

    result = run_cli(data_dir, "import", "--show-rejected", str(media / "DICOMDIR"))

    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert summary_counts(result.stdout) == {"imported": 2, "duplicates": 0, "rejected": 1}
    assert "unreadable source file" in result.stdout
    assert_stored_exactly(data_dir, referenced[1:])
