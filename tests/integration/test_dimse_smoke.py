"""C-ECHO against a freshly started archive (the fixture's own health check, made explicit)."""

from __future__ import annotations

from tests.conftest import ArchiveProcess, run_tool


def test_echo_succeeds(archive: ArchiveProcess) -> None:
    result = run_tool("echoscu", "-v", "-aec", archive.ae_title, *archive.address)
    assert "Received Echo Response (Success)" in result.stderr + result.stdout
