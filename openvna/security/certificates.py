"""A local certificate authority for testing and small sites (``openvna tls``).

Creates a CA and issues server and client certificates that satisfy DICOM's BCP 195
profile (PS3.15 B.9) and RFC 9325: RSA 3072-bit keys (the profile's default suites,
TLS_ECDHE_RSA_WITH_AES_*_GCM, need RSA keys; 3072 bits keeps them strong past 2030),
SHA-256 signatures, the extensions that strict verifiers (OpenSSL's X509_STRICT,
Python 3.13's default) insist on, and subject alternative names, since clients match
the host name against those and not the common name (RFC 9110 4.3.4). Private keys are
written readable by their owner only (0600) and never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openvna.errors import OpenVNAError

KEY_BITS = 3072
CA_CERTIFICATE = "ca.crt"
CA_KEY = "ca.key"
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class CertificateError(OpenVNAError):
    """A CA or certificate cannot be created (a file exists, a name is invalid)."""


@dataclass(frozen=True)
class IssuedFiles:
    """Where a key and its certificate were written."""

    certificate: Path
    private_key: Path


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _refuse_existing(*paths: Path) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise CertificateError(f"refusing to overwrite {', '.join(existing)}: remove first")


def _write_private_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """PKCS#8 PEM, unencrypted (a server reads it unattended), created 0600 and never
    over an existing file (O_EXCL), so no other user can ever read it."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)  # in case the umask or file system widened it


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _prepare_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def create_ca(directory: Path, *, days: int = 3650, name: str = "OpenVNA local CA") -> IssuedFiles:
    """Create ``ca.key`` and a self-signed ``ca.crt`` in ``directory``.

    The CA may sign end-entity certificates only (path length 0).

    Raises
    ------
    CertificateError
        ``days`` is not positive, or either file already exists (replacing a CA would
        invalidate every certificate it issued).
    """
    if days < 1:
        raise CertificateError("--days must be at least 1")
    _prepare_directory(directory)
    files = IssuedFiles(directory / CA_CERTIFICATE, directory / CA_KEY)
    _refuse_existing(files.certificate, files.private_key)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenVNA"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_private_key(files.private_key, key)
    _write_certificate(files.certificate, certificate)
    return files


def load_ca(directory: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The CA certificate and key written by :func:`create_ca`.

    Raises
    ------
    CertificateError
        A file is missing, not PEM, or not an RSA key.
    """
    try:
        certificate = x509.load_pem_x509_certificate((directory / CA_CERTIFICATE).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise CertificateError(
            f"{directory} holds no CA made by 'openvna tls init-ca': {error}"
        ) from error
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError(f"{directory / CA_KEY} is not an RSA key")
    return certificate, key


def _is_host_name(value: str) -> bool:
    """RFC 1123 host name, optionally a wildcard in the leftmost label (RFC 6125 6.4.3)."""
    labels = value.removeprefix("*.").removesuffix(".").split(".")
    return len(value) <= 253 and all(_LABEL.match(label) for label in labels)


def subject_alternative_name(value: str) -> x509.GeneralName:
    """An IP address or DNS name; ``IP:`` and ``DNS:`` prefixes say which.

    Raises
    ------
    CertificateError
        Neither an IP address nor a host name (or not what its prefix says).
    """
    kind, separator, rest = value.partition(":")
    prefix = kind.upper() if separator and kind.upper() in {"IP", "DNS"} else ""
    if prefix:
        value = rest
    if prefix in {"IP", ""}:
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            if prefix == "IP":
                raise CertificateError(f"{value!r} is not an IP address") from None
    if not _is_host_name(value):
        raise CertificateError(f"{value!r} is neither an IP address nor a DNS name")
    return x509.DNSName(value)


def file_stem(name: str) -> str:
    """The file name for ``name``'s key and certificate: unsafe characters become ``_``."""
    stem = _UNSAFE_IN_FILE_NAME.sub("_", name).strip(".")
    if not stem:
        raise CertificateError(f"{name!r} gives no usable file name")
    return stem


def issue_certificate(
    ca_directory: Path,
    name: str,
    out_directory: Path,
    *,
    alternative_names: list[str] | None = None,
    client: bool = False,
    days: int = 825,
) -> IssuedFiles:
    """Issue a certificate with subject CN ``name``; write ``<name>.key`` and ``.crt``.

    A server certificate (the default) is valid for TLS servers and clients (the archive
    also opens associations to its peers) and names ``alternative_names``, or ``name``
    itself when none are given. A ``client`` certificate is for client authentication
    only; its CN is what ``security.dicom_aes[].certificate_subject`` matches. Validity
    ends with the CA's at the latest.

    Raises
    ------
    CertificateError
        The CA cannot be read, a name is invalid, ``days`` is not positive, or the
        files already exist.
    """
    if not name.strip():
        raise CertificateError("--name must not be empty")
    if days < 1:
        raise CertificateError("--days must be at least 1")
    ca_certificate, ca_key = load_ca(ca_directory)
    names = list(alternative_names or [])
    if not names and not client:
        names = [name]
    general_names = [subject_alternative_name(value) for value in names]
    _prepare_directory(out_directory)
    stem = file_stem(name)
    files = IssuedFiles(out_directory / f"{stem}.crt", out_directory / f"{stem}.key")
    _refuse_existing(files.certificate, files.private_key)
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=days), ca_certificate.not_valid_after_utc)
    usages = (
        [ExtendedKeyUsageOID.CLIENT_AUTH]
        if client
        else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenVNA"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    _write_private_key(files.private_key, key)
    _write_certificate(files.certificate, certificate)
    return files
