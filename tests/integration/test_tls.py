"""DICOM TLS and HTTPS of a real ``openvna serve``, with certificates from ``openvna tls``.

dcmtk's echoscu, storescu and findscu speak DICOM over TLS (``+tls KEY CERT +cf CA``,
their default BCP 195 Non-Downgrading profile) to the TLS port; requests and Python's
ssl module speak HTTPS. Two archives: one with several DIMSE processes sharing the TLS
socket and optional client certificates, one single-process archive that requires them.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from openvna.sample import GeneratedStudy
from tests.conftest import (
    ArchiveProcess,
    free_port,
    openvna_command,
    run_tool,
    wait_until,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path
    stranger_certificate: Path
    stranger_key: Path


@dataclass
class TlsArchive:
    archive: ArchiveProcess
    tls_port: int

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.archive.http_port}"


def _openvna(*args: str) -> str:
    result = subprocess.run(
        [*openvna_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, f"openvna {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, and
    a second CA with a client certificate of the same name: all made by ``openvna tls``."""
    root = tmp_path_factory.mktemp("pki")
    _openvna("tls", "init-ca", "--out", str(root / "ca"))
    _openvna(
        "tls", "issue", "--ca", str(root / "ca"), "--name", "localhost",
        "--san", "localhost", "--san", "127.0.0.1", "--out", str(root / "server"),
    )  # fmt: skip
    _openvna(
        "tls", "issue", "--ca", str(root / "ca"), "--name", "MODALITY1", "--client",
        "--out", str(root / "client"),
    )  # fmt: skip
    _openvna("tls", "init-ca", "--out", str(root / "other-ca"), "--name", "Another CA")
    _openvna(
        "tls", "issue", "--ca", str(root / "other-ca"), "--name", "MODALITY1", "--client",
        "--out", str(root / "stranger"),
    )  # fmt: skip
    return Pki(
        root / "ca" / "ca.crt",
        root / "other-ca" / "ca.crt",
        root / "server" / "localhost.crt",
        root / "server" / "localhost.key",
        root / "client" / "MODALITY1.crt",
        root / "client" / "MODALITY1.key",
        root / "stranger" / "MODALITY1.crt",
        root / "stranger" / "MODALITY1.key",
    )


@contextmanager
def _tls_archive(
    directory: Path, pki: Pki, *, processes: int, require_client_certificate: bool
) -> Iterator[TlsArchive]:
    tls_port = free_port()
    env = {
        **os.environ,
        "OPENVNA_DIMSE__PROCESSES": str(processes),
        "OPENVNA_AI__ENABLED": "false",  # not under test here; spares the shared CPU
        "OPENVNA_SECURITY__TLS__CERTIFICATE": str(pki.server_certificate),
        "OPENVNA_SECURITY__TLS__PRIVATE_KEY": str(pki.server_key),
        "OPENVNA_SECURITY__TLS__CA_CERTIFICATES": str(pki.ca),
        "OPENVNA_SECURITY__TLS__DIMSE_PORT": str(tls_port),
        "OPENVNA_SECURITY__TLS__REQUIRE_CLIENT_CERTIFICATE": str(
            require_client_certificate
        ).lower(),
    }
    archive = ArchiveProcess(
        directory / "data", free_port(), "OPENVNA", None, directory / "log", (), env
    )
    archive.start()
    running = TlsArchive(archive, tls_port)
    try:
        wait_until(lambda: _https_up(running, pki), 30, "HTTPS to answer")
        yield running
    finally:
        archive.stop()


def _https_up(archive: TlsArchive, pki: Pki) -> bool:
    try:
        requests.get(f"{archive.https_url}/api/health", verify=str(pki.ca), timeout=2)
    except requests.RequestException:
        return False
    return True


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsArchive]:
    """Two DIMSE processes sharing the TLS socket; client certificates optional."""
    with _tls_archive(
        tmp_path_factory.mktemp("tls-shared"), pki, processes=2, require_client_certificate=False
    ) as archive:
        yield archive


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsArchive]:
    """One process; DICOM TLS peers must present a certificate from the CA."""
    with _tls_archive(
        tmp_path_factory.mktemp("tls-strict"), pki, processes=1, require_client_certificate=True
    ) as archive:
        yield archive


def _echo(archive: TlsArchive, *tls: str) -> subprocess.CompletedProcess[str]:
    return run_tool(
        "echoscu", "-v", "-to", "10", "-ta", "10", *tls, "-aec", "OPENVNA",
        "127.0.0.1", str(archive.tls_port), check=False,
    )  # fmt: skip


def _echoed(result: subprocess.CompletedProcess[str]) -> bool:
    return (
        result.returncode == 0
        and "Received Echo Response (Success)" in result.stdout + result.stderr
    )


def _mutual(pki: Pki) -> tuple[str, ...]:
    return ("+tls", str(pki.client_key), str(pki.client_certificate), "+cf", str(pki.ca))


# --- DICOM TLS --------------------------------------------------------------------


def test_echoscu_over_tls(shared: TlsArchive, pki: Pki) -> None:
    assert _echoed(_echo(shared, *_mutual(pki)))
    # client certificates are optional here: anonymous TLS that verifies the server works
    assert _echoed(_echo(shared, "+tla", "+cf", str(pki.ca)))


def test_storescu_and_findscu_over_tls(
    shared: TlsArchive,
    pki: Pki,
    sample_studies: tuple[Path, list[GeneratedStudy]],
    tmp_path: Path,
) -> None:
    study = sample_studies[1][0]
    run_tool(
        "storescu", *_mutual(pki), "-aec", "OPENVNA", "127.0.0.1", str(shared.tls_port),
        *map(str, study.paths),
    )  # fmt: skip
    out = tmp_path / "find"
    out.mkdir()
    run_tool(
        "findscu", "-S", *_mutual(pki), "-X", "-od", str(out), "-aec", "OPENVNA",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_instance_uid}",
        "-k", "NumberOfStudyRelatedInstances=", "127.0.0.1", str(shared.tls_port),
    )  # fmt: skip
    responses = [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    assert [r.StudyInstanceUID for r in responses] == [study.study_instance_uid]
    assert int(responses[0].NumberOfStudyRelatedInstances) == len(study.paths)


def test_plain_association_to_the_tls_port_fails(shared: TlsArchive, pki: Pki) -> None:
    assert not _echoed(_echo(shared))
    log = shared.archive.log_path
    wait_until(
        lambda: "DICOM TLS handshake with 127.0.0.1 failed" in log.read_text(errors="replace"),
        10,
        "the refused handshake to be logged",
    )
    assert _echoed(_echo(shared, *_mutual(pki)))  # the listener goes on


def test_client_trusting_another_ca_fails(shared: TlsArchive, pki: Pki) -> None:
    wrong_trust = ("+tls", str(pki.client_key), str(pki.client_certificate))
    assert not _echoed(_echo(shared, *wrong_trust, "+cf", str(pki.other_ca)))
    assert _echoed(_echo(shared, *wrong_trust, "+cf", str(pki.ca)))


def test_client_certificate_from_another_ca_fails(
    shared: TlsArchive, strict: TlsArchive, pki: Pki
) -> None:
    stranger = ("+tls", str(pki.stranger_key), str(pki.stranger_certificate), "+cf", str(pki.ca))
    for archive in (shared, strict):  # optional or required: an offered one must verify
        assert not _echoed(_echo(archive, *stranger))


def test_required_client_certificate(strict: TlsArchive, pki: Pki) -> None:
    assert not _echoed(_echo(strict, "+tla", "+cf", str(pki.ca)))
    assert _echoed(_echo(strict, *_mutual(pki)))


def test_tls_listener_runs_in_every_dimse_process(shared: TlsArchive, strict: TlsArchive) -> None:
    shared_log = shared.archive.log_path.read_text(errors="replace")
    assert shared_log.count(f"DICOM TLS listening on 127.0.0.1:{shared.tls_port}") == 2
    strict_log = strict.archive.log_path.read_text(errors="replace")
    assert strict_log.count(f"DICOM TLS listening on 127.0.0.1:{strict.tls_port}") == 1


# --- HTTPS --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["shared", "strict"])
def test_https_with_the_ca_succeeds(which: str, request: pytest.FixtureRequest, pki: Pki) -> None:
    archive: TlsArchive = request.getfixturevalue(which)
    response = requests.get(f"{archive.https_url}/api/system", verify=str(pki.ca), timeout=10)
    assert response.status_code == 200
    assert response.json()["dicomweb"] == f"{archive.https_url}/dicom-web"
    log = archive.archive.log_path.read_text(errors="replace")
    assert f"Status: {archive.https_url}/api/system" in log
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{archive.https_url}/api/system", verify=str(pki.other_ca), timeout=10)


def test_https_presents_the_configured_certificate(shared: TlsArchive, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    with (
        socket.create_connection(("127.0.0.1", shared.archive.http_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        presented = tls.getpeercert(binary_form=True)
        assert tls.selected_alpn_protocol() in {None, "http/1.1"}
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    configured = ssl.PEM_cert_to_DER_cert(pki.server_certificate.read_text())
    assert presented == configured


def _legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client offering only ``version``; unit tests show it really does, against a
    server that allows it (test_tls_context.test_tls_1_0_and_1_1_clients_are_refused)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
@pytest.mark.parametrize("port", ["https", "dicom-tls"])
def test_tls_1_0_and_1_1_are_refused(
    shared: TlsArchive, version: ssl.TLSVersion, port: str
) -> None:
    number = shared.archive.http_port if port == "https" else shared.tls_port
    with (
        socket.create_connection(("127.0.0.1", number), timeout=10) as raw,
        pytest.raises(ssl.SSLError) as refused,
    ):
        _legacy_client(version).wrap_socket(raw, server_hostname="localhost")
    # the DICOM port answers with a protocol_version alert; uvloop (HTTPS) just closes
    assert (
        isinstance(refused.value, ssl.SSLEOFError)
        or "PROTOCOL_VERSION" in str(refused.value).upper()
    )
    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modern.check_hostname = False
    modern.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", number), timeout=10) as raw,
        modern.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def test_plain_http_to_the_https_port_fails(shared: TlsArchive) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{shared.archive.http_port}/api/system", timeout=10)
