"""A freshly started archive answers C-ECHO and its HTTP status endpoints."""

from __future__ import annotations

import json
import urllib.request

from tests.conftest import ArchiveProcess, run_tool


def test_echo_succeeds(archive: ArchiveProcess) -> None:
    result = run_tool("echoscu", "-v", "-aec", archive.ae_title, *archive.address)
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


def test_http_system_and_health(archive: ArchiveProcess) -> None:
    with urllib.request.urlopen(f"{archive.http_url}/api/health", timeout=10) as response:
        assert response.status == 200
        assert json.load(response) == {"status": "ok"}
    with urllib.request.urlopen(f"{archive.http_url}/api/system", timeout=10) as response:
        system = json.load(response)
    assert system["name"] == "OpenVNA"
    assert system["dicom"] == {"aeTitle": "OPENVNA", "host": "127.0.0.1", "port": archive.port}
    assert system["counts"] == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
