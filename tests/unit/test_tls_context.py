"""TLS contexts (BCP 195 / RFC 9325), the local CA, and DICOM TLS in the association server.

Handshakes are real: both ends are Python ssl sockets or pynetdicom AEs on loopback,
with certificates issued by openvna.security.certificates.
"""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from openvna.config import TlsSettings
from openvna.dimse.server import TunedAssociationServer
from openvna.security.certificates import (
    CertificateError,
    create_ca,
    file_stem,
    issue_certificate,
    subject_alternative_name,
)
from openvna.security.tls import (
    MINIMUM_VERSION,
    TlsConfigurationError,
    client_context,
    peer_certificate_subject,
    server_context,
    server_contexts,
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path
    other_ca: Path
    other_client_certificate: Path
    other_client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    create_ca(root / "ca")
    server = issue_certificate(
        root / "ca", "localhost", root / "server", alternative_names=["localhost", "127.0.0.1"]
    )
    client = issue_certificate(root / "ca", "MODALITY1", root / "client", client=True)
    create_ca(root / "other-ca", name="Somebody else's CA")
    stranger = issue_certificate(root / "other-ca", "MODALITY1", root / "stranger", client=True)
    return Pki(
        root / "ca" / "ca.crt",
        server.certificate,
        server.private_key,
        client.certificate,
        client.private_key,
        root / "other-ca" / "ca.crt",
        stranger.certificate,
        stranger.private_key,
    )


def _tls(pki: Pki, **overrides: Any) -> TlsSettings:
    values: dict[str, Any] = {
        "certificate": pki.server_certificate,
        "private_key": pki.server_key,
        "ca_certificates": pki.ca,
    }
    values.update(overrides)
    return TlsSettings(**values)


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[str | None, str | None, BaseException | None, BaseException | None]:
    """Handshake over a socket pair; (protocol, cipher, server error, client error)."""
    server_end, client_end = socket.socketpair()
    server_end.settimeout(10)
    client_end.settimeout(10)
    errors: dict[str, BaseException] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(server_end, server_side=True) as tls:
                tls.recv(1)  # wait for the client's byte: the handshake is over both ways
        except (ssl.SSLError, OSError) as error:
            errors["server"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    protocol = cipher = None
    try:
        with client.wrap_socket(client_end, server_hostname=server_hostname) as tls:
            protocol = tls.version()
            cipher = tls.cipher()[0]  # type: ignore[index]
            tls.sendall(b"x")
    except (ssl.SSLError, OSError) as error:
        errors["client"] = error
    thread.join(10)
    return protocol, cipher, errors.get("server"), errors.get("client")


def _legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers only ``version`` (TLS 1.0/1.1 need OpenSSL security level 0)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1 is
        context.minimum_version = version
        context.maximum_version = version
    return context


# --- the context --------------------------------------------------------------------


def test_server_context_requires_tls_1_2_or_newer(pki: Pki) -> None:
    context = server_context(_tls(pki))
    assert context.minimum_version == MINIMUM_VERSION
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED


def test_only_ecdhe_aead_suites_are_enabled(pki: Pki) -> None:
    ciphers = server_context(_tls(pki)).get_ciphers()
    for cipher in ciphers:
        if cipher["protocol"] == "TLSv1.3":
            continue  # every TLS 1.3 suite is AEAD with (EC)DHE
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"], cipher["name"]
    names = {cipher["name"] for cipher in ciphers}
    # the DICOM BCP 195 profile's suites (PS3.15 B.9), which dcmtk offers by default
    assert {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"} <= names
    assert not any("CBC" in name or "SHA1" in name or name.endswith("-SHA") for name in names)


def test_compression_and_renegotiation_are_off(pki: Pki) -> None:
    for context in (server_context(_tls(pki)), client_context(ca_certificates=pki.ca)):
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.options & ssl.OP_NO_RENEGOTIATION
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_certificate_verification_follows_the_settings(pki: Pki) -> None:
    assert server_context(_tls(pki, require_client_certificate=True)).verify_mode == (
        ssl.CERT_REQUIRED
    )
    assert server_context(_tls(pki)).verify_mode == ssl.CERT_OPTIONAL
    assert server_context(_tls(pki, ca_certificates=None)).verify_mode == ssl.CERT_NONE
    with pytest.raises(TlsConfigurationError, match="ca_certificates"):
        server_context(_tls(pki, ca_certificates=None, require_client_certificate=True))


def test_https_never_requires_a_client_certificate(pki: Pki) -> None:
    contexts = server_contexts(_tls(pki, require_client_certificate=True, dimse_port=0))
    assert contexts is not None
    assert contexts.dimse.verify_mode == ssl.CERT_REQUIRED
    assert contexts.https.verify_mode == ssl.CERT_OPTIONAL


def test_no_certificate_means_no_tls(pki: Pki) -> None:
    assert server_contexts(TlsSettings()) is None
    with pytest.raises(TlsConfigurationError, match="dimse_port"):
        server_contexts(TlsSettings(dimse_port=2762))
    with pytest.raises(TlsConfigurationError, match="private_key"):
        server_contexts(TlsSettings(certificate=pki.server_certificate))


def test_missing_and_mismatched_files_are_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.crt"
    with pytest.raises(TlsConfigurationError, match=r"nowhere\.crt"):
        server_context(_tls(pki, certificate=missing))
    with pytest.raises(TlsConfigurationError, match="not a pair"):
        server_context(_tls(pki, private_key=pki.client_key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsConfigurationError, match=r"garbage\.pem"):
        server_context(_tls(pki, ca_certificates=garbage))


# --- real handshakes ----------------------------------------------------------------


def test_tls_1_2_handshake_uses_ecdhe_aead(pki: Pki) -> None:
    client = client_context(ca_certificates=pki.ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    protocol, cipher, server_error, client_error = _handshake(server_context(_tls(pki)), client)
    assert (server_error, client_error) == (None, None)
    assert protocol == "TLSv1.2"
    assert cipher is not None and cipher.startswith("ECDHE-RSA-") and "GCM" in cipher


def test_tls_1_3_is_negotiated_when_both_have_it(pki: Pki) -> None:
    protocol, _cipher, server_error, client_error = _handshake(
        server_context(_tls(pki)), client_context(ca_certificates=pki.ca)
    )
    assert (server_error, client_error, protocol) == (None, None, "TLSv1.3")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_clients_are_refused(pki: Pki, version: ssl.TLSVersion) -> None:
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(pki.server_certificate, pki.server_key)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    # control: this client really speaks the old version here (else the test proves nothing)
    protocol, _cipher, _server_error, client_error = _handshake(permissive, _legacy_client(version))
    assert client_error is None and protocol in {"TLSv1", "TLSv1.1"}
    protocol, _cipher, server_error, client_error = _handshake(
        server_context(_tls(pki)), _legacy_client(version)
    )
    assert protocol is None
    assert isinstance(server_error, ssl.SSLError) and isinstance(client_error, ssl.SSLError)
    assert "PROTOCOL" in str(server_error.reason)


def test_cbc_only_client_is_refused(pki: Pki) -> None:
    client = client_context(ca_certificates=pki.ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384")
    protocol, _cipher, server_error, client_error = _handshake(server_context(_tls(pki)), client)
    assert protocol is None and server_error is not None and client_error is not None


def test_client_context_checks_the_ca_and_the_host_name(pki: Pki) -> None:
    server = server_context(_tls(pki))
    trusted = client_context(ca_certificates=pki.ca)
    assert _handshake(server, trusted)[3] is None
    assert _handshake(server, trusted, server_hostname="127.0.0.1")[3] is None
    wrong_host = _handshake(server, trusted, server_hostname="pacs.example.org")[3]
    assert isinstance(wrong_host, ssl.SSLCertVerificationError)
    other = _handshake(server, client_context(ca_certificates=pki.other_ca))[3]
    assert isinstance(other, ssl.SSLCertVerificationError)


def test_required_client_certificate(pki: Pki) -> None:
    server = server_context(_tls(pki, require_client_certificate=True))
    with_certificate = client_context(
        ca_certificates=pki.ca, certificate=pki.client_certificate, private_key=pki.client_key
    )
    assert _handshake(server, with_certificate)[2:] == (None, None)
    _protocol, _cipher, server_error, _client_error = _handshake(
        server, client_context(ca_certificates=pki.ca)
    )
    assert isinstance(server_error, ssl.SSLError)
    assert "CERTIFICATE" in str(server_error.reason)
    stranger = client_context(
        ca_certificates=pki.ca,
        certificate=pki.other_client_certificate,
        private_key=pki.other_client_key,
    )
    assert isinstance(_handshake(server, stranger)[2], ssl.SSLError)


def test_an_offered_certificate_must_verify_even_when_optional(pki: Pki) -> None:
    stranger = client_context(
        ca_certificates=pki.ca,
        certificate=pki.other_client_certificate,
        private_key=pki.other_client_key,
    )
    assert isinstance(_handshake(server_context(_tls(pki)), stranger)[2], ssl.SSLError)


# --- the local CA -------------------------------------------------------------------


def test_keys_are_private_and_certificates_chain(pki: Pki) -> None:
    for key in (pki.server_key, pki.client_key, pki.ca.with_name("ca.key")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_certificate.read_bytes())
    client = x509.load_pem_x509_certificate(pki.client_certificate.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    server_usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    client_usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(server_usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert list(client_usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_existing_files_are_never_overwritten(pki: Pki, tmp_path: Path) -> None:
    before = pki.ca.read_bytes()
    with pytest.raises(CertificateError, match="overwrite"):
        create_ca(pki.ca.parent)
    assert pki.ca.read_bytes() == before
    with pytest.raises(CertificateError, match="overwrite"):
        issue_certificate(pki.ca.parent, "localhost", pki.server_certificate.parent)
    with pytest.raises(CertificateError, match="no CA"):
        issue_certificate(tmp_path, "x", tmp_path / "out")


def test_a_server_certificate_names_itself_by_default(pki: Pki, tmp_path: Path) -> None:
    files = issue_certificate(pki.ca.parent, "pacs.example.org", tmp_path, days=30)
    certificate = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["pacs.example.org"]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


def test_subject_alternative_names_are_parsed() -> None:
    assert subject_alternative_name("10.0.0.7") == x509.IPAddress(ip_address("10.0.0.7"))
    assert isinstance(subject_alternative_name("::1"), x509.IPAddress)
    assert subject_alternative_name("DNS:pacs.local") == x509.DNSName("pacs.local")
    assert subject_alternative_name("*.example.org") == x509.DNSName("*.example.org")
    for bad in ("IP:pacs.local", "not a host", "-bad.example", "a..b"):
        with pytest.raises(CertificateError):
            subject_alternative_name(bad)
    assert file_stem("ae:CT 1/../x") == "ae_CT_1_.._x"


# --- DICOM TLS in the association server ----------------------------------------------


@dataclass
class TlsScp:
    port: int
    subjects: list[str | None]
    refused: list[tuple[str, str]]


@pytest.fixture
def tls_scp(pki: Pki) -> Iterator[TlsScp]:
    """pynetdicom AE with OpenVNA's association server class and server context."""
    subjects: list[str | None] = []
    refused: list[tuple[str, str]] = []

    def on_requested(event: evt.Event) -> None:
        subjects.append(peer_certificate_subject(event.assoc))

    ae = AE(ae_title="OPENVNA")
    ae.acse_timeout = 5
    ae.add_supported_context(Verification)
    server = cast(
        TunedAssociationServer,
        ae.make_server(
            ("127.0.0.1", 0),
            evt_handlers=[(evt.EVT_REQUESTED, on_requested)],
            ssl_context=server_context(_tls(pki)),
            server_class=TunedAssociationServer,
        ),
    )
    server.tls_refused = lambda address, reason: refused.append((address, reason))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ae._servers.append(server)
    yield TlsScp(int(server.server_address[1]), subjects, refused)
    ae.shutdown()


def _echo(port: int, context: ssl.SSLContext | None) -> int | None:
    """C-ECHO status over TLS with ``context`` (None: plain TCP); None: no association."""
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = 5
    ae.add_requested_context(Verification)
    tls_args = (context, "localhost") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="OPENVNA", tls_args=tls_args)
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if status else None


def test_peer_certificate_subject_names_the_verified_client(pki: Pki, tls_scp: TlsScp) -> None:
    mutual = client_context(
        ca_certificates=pki.ca, certificate=pki.client_certificate, private_key=pki.client_key
    )
    assert _echo(tls_scp.port, mutual) == 0x0000
    assert _echo(tls_scp.port, client_context(ca_certificates=pki.ca)) == 0x0000
    assert tls_scp.subjects == ["MODALITY1", None]


def test_failed_handshakes_are_reported_and_the_listener_goes_on(pki: Pki, tls_scp: TlsScp) -> None:
    assert _echo(tls_scp.port, None) is None  # plain DICOM on the TLS port
    deadline = time.monotonic() + 10
    while not tls_scp.refused and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tls_scp.refused and tls_scp.refused[0][0] == "127.0.0.1"
    assert _echo(tls_scp.port, client_context(ca_certificates=pki.ca)) == 0x0000


def test_a_silent_connection_does_not_stall_the_listener(pki: Pki, tls_scp: TlsScp) -> None:
    """pynetdicom itself handshakes in the accept loop, where a peer that connects and
    says nothing blocks every other caller; ours handshakes in the association's thread."""
    with socket.create_connection(("127.0.0.1", tls_scp.port)):
        started = time.monotonic()
        assert _echo(tls_scp.port, client_context(ca_certificates=pki.ca)) == 0x0000
        assert time.monotonic() - started < 4  # well inside the 5 s ACSE timeout
