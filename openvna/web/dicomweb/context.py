"""What every DICOMweb endpoint needs: the archive facade and the HTTP settings."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from openvna.archive.service import Archive
from openvna.config import HttpSettings

DICOMWEB_ROOT = "/dicom-web"


@dataclass(frozen=True)
class DicomWebContext:
    archive: Archive
    http: HttpSettings

    def base_url(self, request: Request) -> str:
        """Absolute URL of the DICOMweb root as the client reaches it (no trailing slash).

        ``http.public_url`` wins (a reverse proxy in front); otherwise the request's own
        scheme and Host header, so that RetrieveURL and BulkDataURI work for the client
        that asked.
        """
        if self.http.public_url:
            return self.http.public_url.rstrip("/") + DICOMWEB_ROOT
        return str(request.base_url).rstrip("/") + DICOMWEB_ROOT

    def study_url(self, request: Request, study_uid: str) -> str:
        return f"{self.base_url(request)}/studies/{study_uid}"

    def series_url(self, request: Request, study_uid: str, series_uid: str) -> str:
        return f"{self.study_url(request, study_uid)}/series/{series_uid}"

    def instance_url(
        self, request: Request, study_uid: str, series_uid: str, sop_instance_uid: str
    ) -> str:
        return f"{self.series_url(request, study_uid, series_uid)}/instances/{sop_instance_uid}"
