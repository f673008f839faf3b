"""``openvna tls``: a local certificate authority and the certificates it issues.

For tests, evaluation and small sites without a PKI: ``init-ca`` once, then ``issue``
a server certificate for the archive and client certificates for DICOM peers. Sites
with their own PKI configure its files in ``security.tls`` instead (docs/tls.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from openvna.security.certificates import (
    CA_CERTIFICATE,
    CertificateError,
    create_ca,
    issue_certificate,
)

tls_app = typer.Typer(
    help="A local certificate authority and certificates for HTTPS and DICOM TLS.",
    no_args_is_help=True,
)
console = Console()


@tls_app.command("init-ca")
def init_ca(
    out: Annotated[Path, typer.Option("--out", help="Folder for ca.crt and ca.key.")],
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 3650,
    name: Annotated[
        str, typer.Option("--name", help="Common name of the CA.")
    ] = "OpenVNA local CA",
) -> None:
    """Create a local CA: a self-signed certificate (ca.crt) and its key (ca.key, 0600)."""
    try:
        files = create_ca(out, days=days, name=name)
    except CertificateError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    console.print(
        f"CA certificate [cyan]{files.certificate}[/cyan] (give it to clients: "
        f"+cf for dcmtk, verify= for httpx)\n"
        f"CA key         [cyan]{files.private_key}[/cyan] (keep it secret)"
    )


@tls_app.command("issue")
def issue(
    ca: Annotated[Path, typer.Option("--ca", help="Folder of the CA made by init-ca.")],
    name: Annotated[
        str, typer.Option("--name", help="Subject common name (host name, or a peer's name).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for NAME.crt and NAME.key.")],
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san",
            help="Subject alternative name: DNS name or IP address (repeatable); "
            "default for a server certificate: NAME.",
        ),
    ] = None,
    client: Annotated[
        bool, typer.Option("--client", help="A client certificate (client authentication only).")
    ] = False,
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 825,
) -> None:
    """Issue a server (default) or client certificate signed by the local CA."""
    try:
        files = issue_certificate(ca, name, out, alternative_names=san, client=client, days=days)
    except CertificateError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    kind = "client" if client else "server"
    console.print(
        f"{kind} certificate [cyan]{files.certificate}[/cyan]\n"
        f"private key        [cyan]{files.private_key}[/cyan] (mode 0600)"
    )
    if not client:
        console.print(
            "configure it with:\n"
            "  \\[security.tls]\n"
            f'  certificate = "{files.certificate.resolve()}"\n'
            f'  private_key = "{files.private_key.resolve()}"\n'
            f'  ca_certificates = "{(ca / CA_CERTIFICATE).resolve()}"'
        )
