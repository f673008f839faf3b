"""TLS contexts for DICOM TLS and HTTPS, hardened per BCP 195 (RFC 9325).

DICOM's "BCP 195 Non-Downgrading" secure transport profile (PS3.15 B.9) and RFC 9325
ask for the same things, and every listener and outbound connection of OpenVNA gets
them from here, so that no adapter configures TLS on its own:

- TLS 1.2 and newer only (RFC 8996 deprecated 1.0 and 1.1; RFC 9325 4.1);
- no TLS-level compression (CRIME, RFC 9325 3.3) and no renegotiation;
- forward secrecy through ECDHE key exchange, and AEAD ciphers only (AES-GCM,
  ChaCha20-Poly1305; RFC 9325 4.2). TLS 1.3 suites are all AEAD with ECDHE;
- the server's cipher order, and OpenSSL security level 2 (keys of 2048 bits or more,
  no SHA-1 signatures).

Client certificates are verified against ``security.tls.ca_certificates`` (PS3.15 B.9
mutual authentication): required when ``require_client_certificate`` is on, otherwise
verified when the peer presents one. :func:`peer_certificate_subject` gives the
authorisation of DICOM associations the common name of the peer's verified certificate.
"""

from __future__ import annotations

import logging
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openvna.config import TlsSettings
from openvna.errors import OpenVNAError

logger = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
"""BCP 195: TLS 1.2 and newer (1.3 is negotiated whenever both sides have it)."""

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:@SECLEVEL=2"
"""TLS 1.2 cipher suites: ECDHE key exchange with an AEAD cipher, nothing else. Includes
TLS_ECDHE_RSA_WITH_AES_128/256_GCM, the suites of the DICOM BCP 195 profile (PS3.15
B.9) that dcmtk offers by default."""

_HARDENING_OPTIONS = (
    ssl.OP_NO_COMPRESSION
    | ssl.OP_CIPHER_SERVER_PREFERENCE
    | ssl.OP_SINGLE_ECDH_USE
    | ssl.OP_NO_RENEGOTIATION
)


class TlsConfigurationError(OpenVNAError):
    """The TLS settings name files that are missing, unreadable or do not match."""


@dataclass(frozen=True)
class ServerContexts:
    """The server contexts of one archive: DICOM TLS and HTTPS differ in client
    certificates (see :func:`server_contexts`)."""

    dimse: ssl.SSLContext
    https: ssl.SSLContext


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_VERSION
    context.options |= _HARDENING_OPTIONS
    context.set_ciphers(TLS12_CIPHERS)


def _existing(path: Path, setting: str) -> Path:
    if not path.is_file():
        raise TlsConfigurationError(f"{setting}: {path} does not exist or is not a file")
    return path


def _warn_if_key_readable_by_others(private_key: Path) -> None:
    mode = private_key.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "the TLS private key %s can be read by other users (mode %o): chmod 600 it",
            private_key,
            stat.S_IMODE(mode),
        )


def _load_certificate_chain(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    _existing(certificate, "security.tls.certificate")
    _existing(private_key, "security.tls.private_key")
    try:
        context.load_cert_chain(certfile=certificate, keyfile=private_key)
    except (ssl.SSLError, OSError) as error:
        raise TlsConfigurationError(
            f"cannot use the TLS certificate {certificate} with the key {private_key} "
            f"(not PEM, encrypted, or not a pair): {error}"
        ) from error
    _warn_if_key_readable_by_others(private_key)


def _load_trusted_cas(context: ssl.SSLContext, ca_certificates: Path) -> None:
    _existing(ca_certificates, "security.tls.ca_certificates")
    try:
        context.load_verify_locations(cafile=ca_certificates)
    except (ssl.SSLError, OSError) as error:
        raise TlsConfigurationError(
            f"cannot read the CA certificates {ca_certificates}: {error}"
        ) from error


def server_context(
    tls: TlsSettings, *, require_client_certificate: bool | None = None
) -> ssl.SSLContext:
    """A server context with this archive's certificate and the BCP 195 hardening.

    Parameters
    ----------
    tls
        ``security.tls``; ``certificate`` and ``private_key`` must be set.
    require_client_certificate
        Refuse peers without a certificate chaining to ``ca_certificates``; default:
        ``tls.require_client_certificate``. Without it, a peer that presents a
        certificate must still present one that verifies (``CERT_OPTIONAL``), so
        ``peer_certificate_subject`` only ever names verified peers.

    Raises
    ------
    TlsConfigurationError
        A file is missing or unreadable, the key does not match the certificate, or a
        client certificate is required without ``ca_certificates`` to check it against.
    """
    if tls.certificate is None or tls.private_key is None:
        raise TlsConfigurationError(
            "TLS needs both security.tls.certificate and security.tls.private_key "
            "(create them with 'openvna tls init-ca' and 'openvna tls issue')"
        )
    required = (
        tls.require_client_certificate
        if require_client_certificate is None
        else require_client_certificate
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_certificate_chain(context, tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load_trusted_cas(context, tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    elif required:
        raise TlsConfigurationError(
            "security.tls.require_client_certificate needs security.tls.ca_certificates "
            "(the CA that client certificates must chain to)"
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def server_contexts(tls: TlsSettings) -> ServerContexts | None:
    """Both server contexts, or None when no certificate is configured (plain HTTP and
    no DICOM TLS listener).

    DICOM TLS follows ``require_client_certificate``; HTTPS never requires a client
    certificate (browsers and OHIF authenticate with tokens) but verifies one that is
    offered. Built once, before worker processes are forked, so that a wrong file
    stops the start with one clear error.

    Raises
    ------
    TlsConfigurationError
        As :func:`server_context`; also when ``dimse_port`` is set without a certificate.
    """
    if tls.certificate is None and tls.private_key is None:
        if tls.dimse_port is not None:
            raise TlsConfigurationError(
                "security.tls.dimse_port needs security.tls.certificate and "
                "security.tls.private_key"
            )
        return None
    return ServerContexts(
        dimse=server_context(tls),
        https=with_alpn(server_context(tls, require_client_certificate=False), ["http/1.1"]),
    )


def with_alpn(context: ssl.SSLContext, protocols: list[str]) -> ssl.SSLContext:
    """``context`` advertising ``protocols`` by ALPN (RFC 7301), e.g. HTTP/1.1 for HTTPS."""
    context.set_alpn_protocols(protocols)
    return context


def client_context(
    *,
    ca_certificates: Path | None = None,
    certificate: Path | None = None,
    private_key: Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context with the same hardening, for outbound TLS (DICOM peers, syslog).

    The server must present a certificate chaining to ``ca_certificates`` (the system's
    trusted CAs when None) and, with ``check_hostname``, naming the host connected to.
    ``certificate`` and ``private_key``, when given, are presented for mutual TLS.

    Raises
    ------
    TlsConfigurationError
        A file is missing or unreadable, or the key does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED
    _harden(context)
    context.check_hostname = check_hostname
    if ca_certificates is not None:
        _load_trusted_cas(context, ca_certificates)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate is not None and private_key is not None:
        _load_certificate_chain(context, certificate, private_key)
    elif certificate is not None or private_key is not None:
        raise TlsConfigurationError("a client certificate needs both the certificate and its key")
    return context


def certificate_common_name(certificate: dict[str, Any] | None) -> str | None:
    """The subject CN of a certificate as :meth:`ssl.SSLSocket.getpeercert` gives it."""
    if not certificate:
        return None  # None: no certificate; {}: one that was not verified (CERT_NONE)
    for relative_name in certificate.get("subject", ()):
        for attribute, value in relative_name:
            if attribute == "commonName":
                return str(value)
    return None


def peer_certificate_subject(assoc: Any) -> str | None:
    """The subject common name of the TLS peer of a pynetdicom association, or None.

    None when the association is not over TLS, the peer presented no certificate, or
    the certificate was not verified (no ``ca_certificates``): only a certificate that
    chains to the configured CA names anyone. Used to match
    ``security.dicom_aes[].certificate_subject`` when the association is requested.
    """
    association_socket = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(association_socket, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        certificate = sock.getpeercert()
    except (ValueError, OSError):  # handshake not done, or the socket already closed
        return None
    return certificate_common_name(certificate)
