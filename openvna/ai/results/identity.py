"""Who made a result, and the identifiers every result object shares.

Result UIDs are derived from the job's UID (a name-based UUID under the ``2.25`` root,
PS3.5 B.2) rather than drawn at random, so writing back the same job twice produces the
same SOP Instance UIDs and the archive's ingest path sees a duplicate instead of a second
copy of the same result.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset

_UID_NAMESPACE = uuid.UUID("0f6e2d4b-3a0c-5c55-9d7e-4f1b8a2c6e01")


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The algorithm a result came from (PS3.16 TID 4019 Algorithm Identification).

    ``artifact_sha256`` pins the exact model build; ``job_uid`` names the AI job that
    produced the output and seeds every UID of its result objects.
    """

    name: str
    version: str
    manufacturer: str = "OpenVNA"
    artifact_sha256: str = ""
    job_uid: str = ""

    @property
    def label(self) -> str:
        """``"<name> <version>"``: how the algorithm is named to people."""
        return f"{self.name} {self.version}"

    @property
    def series_description(self) -> str:
        """Series Description (0008,103E) of every result series, at most 64 characters."""
        return f"AI {self.label}"[:64]

    def uid(self, *parts: object) -> str:
        """A UID for one result object or item of this job, stable across write-backs.

        Without a job UID there is nothing stable to derive from, so a fresh random UID
        is returned.
        """
        if not self.job_uid:
            return str(hd.UID())
        name = "/".join(str(part) for part in (self.job_uid, *parts))
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"

    def device_uid(self) -> str:
        """Device Observer UID (PS3.16 TID 1004): one per algorithm build, whatever
        the job, so every report of the same model names the same device."""
        name = f"{self.manufacturer}/{self.name}/{self.version}/{self.artifact_sha256}"
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"

    def content_creator_name(self) -> str:
        """Content Creator's Name (0070,0084) for a SEG: a PN naming the device, as the
        standard has no other slot for an automated creator there."""
        return f"{self.manufacturer}^{self.name}"[:64]


def stamp_creation(dataset: Dataset, created: datetime) -> None:
    """Instance Creation Date and Time (SOP Common module, PS3.3 C.12.1): when the
    result object was made, which highdicom leaves to the caller."""
    dataset.InstanceCreationDate = dicom_date(created)
    dataset.InstanceCreationTime = dicom_time(created)


def dicom_date(moment: datetime) -> str:
    """DA value (YYYYMMDD) of ``moment`` in its own time zone."""
    return moment.strftime("%Y%m%d")


def dicom_time(moment: datetime) -> str:
    """TM value (HHMMSS.FFFFFF) of ``moment`` in its own time zone."""
    return moment.strftime("%H%M%S.%f")
