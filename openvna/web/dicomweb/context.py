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
        return origin(request) + DICOMWEB_ROOT

    def viewer_url(self, request: Request) -> str:
        if self.http.public_url:
            return self.http.public_url.rstrip("/") + "/viewer"
        return origin(request) + "/viewer"

    def study_url(self, request: Request, study_uid: str) -> str:
        return resource_url(self.base_url(request), study_uid)

    def instance_url(
        self, request: Request, study_uid: str, series_uid: str, sop_instance_uid: str
    ) -> str:
        return resource_url(self.base_url(request), study_uid, series_uid, sop_instance_uid)


def resource_url(
    base: str, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
) -> str:
    """The WADO-RS URL of a study, series or instance under the DICOMweb root ``base``."""
    url = f"{base}/studies/{study_uid}"
    if series_uid is not None:
        url += f"/series/{series_uid}"
        if sop_instance_uid is not None:
            url += f"/instances/{sop_instance_uid}"
    return url


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(request: Request) -> str:
    """``scheme://host[:port]`` of this server as the client addressed it.

    Some clients (dicomweb-client among them) send a Host header without the port even
    on a non-default port; when the Host header has no port, the port the connection
    actually reached is used, unless that is the scheme's default. Behind a proxy, set
    ``http.public_url`` instead.
    """
    scheme = request.url.scheme
    host = request.headers.get("host", "")
    server = request.scope.get("server")
    if not host:
        if server is None:
            return f"{scheme}://localhost"
        host = f"{server[0]}:{server[1]}"
    elif not _has_port(host) and server is not None:
        port = int(server[1])
        if port != _DEFAULT_PORTS.get(scheme):
            host = f"{host}:{port}"
    return f"{scheme}://{host}"


def _has_port(host: str) -> bool:
    if host.startswith("["):  # IPv6 literal: [::1]:8042
        return "]:" in host
    return ":" in host
