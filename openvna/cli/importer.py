"""File sources for ``openvna import``: files, folders, zip archives and DICOMDIRs.

Every source is turned into a seekable file and handed to the one ingest path; the
importer only enumerates and reports.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

from openvna.archive.ingest import Origin
from openvna.archive.service import Archive
from openvna.errors import DuplicateInstanceError, OpenVNAError
from openvna.index.repository import StoreOutcome
from openvna.security.audit import AuditEvent, StudyRef
from openvna.security.audit import events as audit_events
from openvna.security.principal import system_principal

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass
class ImportSummary:
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    rejected_files: list[tuple[str, str]] = field(default_factory=list)
    study_sop_classes: dict[str, Counter[str]] = field(default_factory=dict)
    """Instances imported per study and SOP class: what the Data Import audit names."""

    def import_events(self, source: str) -> list[AuditEvent]:
        """One Data Import (DCM 110107) record per imported study (PS3.15 A.5.3.5)."""
        principal = system_principal(f"cli:{getpass.getuser()}")
        return [
            audit_events.data_import(
                principal,
                "",
                [StudyRef(study_uid, sop_classes=tuple(sorted(classes.items())))],
                source=source,
            )
            for study_uid, classes in sorted(self.study_sop_classes.items())
        ]


@dataclass(frozen=True)
class ImportItem:
    """One thing to import: a display name and how to open it."""

    name: str
    path: Path | None = None
    zip_path: Path | None = None
    member: str | None = None

    @contextmanager
    def open(self, spool_dir: Path) -> Iterator[BinaryIO]:
        if self.path is not None:
            with open(self.path, "rb") as handle:
                yield handle
            return
        assert self.zip_path is not None and self.member is not None
        with (
            zipfile.ZipFile(self.zip_path) as archive,
            archive.open(self.member) as member,
            tempfile.TemporaryFile(dir=spool_dir) as spooled,
        ):
            shutil.copyfileobj(member, spooled, 1024 * 1024)
            spooled.seek(0)
            yield spooled


def is_dicomdir(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    try:  # File Meta only: a Deflated data set would be inflated whole (a bomb)
        meta = read_file_meta_info(path)
    except Exception:
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY


def dicomdir_items(dicomdir: Path) -> Iterator[ImportItem]:
    """Files referenced by a DICOMDIR (PS3.10 8.6, ReferencedFileID components)."""
    directory = dcmread(dicomdir)
    root = dicomdir.parent
    for record in directory.DirectoryRecordSequence:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        candidate = root.joinpath(*parts)
        if not candidate.exists():  # media written upper-case, file system lower-case
            candidate = root.joinpath(*(p.lower() for p in parts))
        yield ImportItem(name=str(candidate), path=candidate)


def enumerate_items(paths: list[Path]) -> Iterator[ImportItem]:
    for path in paths:
        if path.is_dir():
            for folder, _dirs, files in os.walk(path):
                for name in sorted(files):
                    file_path = Path(folder) / name
                    if name.upper() == "DICOMDIR":
                        continue  # its referenced files are in this tree already
                    yield from _file_items(file_path)
        elif path.is_file() and is_dicomdir(path):
            yield from dicomdir_items(path)
        elif path.is_file():
            yield from _file_items(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def _file_items(path: Path) -> Iterator[ImportItem]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.is_dir():
                    yield ImportItem(
                        name=f"{path}!{member.filename}", zip_path=path, member=member.filename
                    )
        return
    yield ImportItem(name=str(path), path=path)


def import_item(
    archive: Archive, item: ImportItem, summary: ImportSummary, spool_dir: Path
) -> None:
    try:
        with item.open(spool_dir) as source:
            result = archive.ingest_file(source, origin=Origin(protocol="import"))
    except DuplicateInstanceError as error:
        summary.duplicates += 1
        summary.reasons["duplicate UID with different content, existing kept"] += 1
        summary.rejected_files.append((item.name, str(error)))
        return
    except OpenVNAError as error:
        summary.rejected += 1
        reason = str(error).split(":")[0]
        summary.reasons[reason] += 1
        summary.rejected_files.append((item.name, str(error)))
        return
    except (OSError, zipfile.BadZipFile) as error:
        # a file a DICOMDIR names but that is missing, unreadable or a damaged zip member:
        # one bad source must not stop the import of the others
        summary.rejected += 1
        summary.reasons["unreadable source file"] += 1
        summary.rejected_files.append((item.name, f"unreadable source file: {error}"))
        return
    if result.outcome is StoreOutcome.DUPLICATE_SAME:
        summary.duplicates += 1
    else:
        summary.imported += 1
        classes = summary.study_sop_classes.setdefault(result.study_instance_uid, Counter())
        classes[result.sop_class_uid] += 1
