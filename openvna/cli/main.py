"""The ``openvna`` command line (typer; output with rich)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from openvna.app import open_archive, peer_registry, start_archive
from openvna.archive.service import Archive
from openvna.cli.access import access_app
from openvna.cli.ai import ai_app
from openvna.cli.audit import audit_app
from openvna.cli.common import ConfigOption, DataDirOption, cli_settings
from openvna.cli.importer import ImportSummary, enumerate_items, import_item
from openvna.cli.keys import keys_app
from openvna.cli.tls import tls_app
from openvna.cli.users import apikey_app, user_app
from openvna.config import PeerConfig, Settings
from openvna.errors import OpenVNAError
from openvna.tasks.inprocess import InProcessExecutor

app = typer.Typer(
    help="OpenVNA: open-source, AI-native vendor-neutral archive.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a traceback must never print keys or passwords
)
peers_app = typer.Typer(
    help="Remote DICOM application entities (C-MOVE destinations).", no_args_is_help=True
)
samples_app = typer.Typer(
    help="Synthetic sample studies (no real patient data).", no_args_is_help=True
)
app.add_typer(peers_app, name="peers")
app.add_typer(samples_app, name="samples")
app.add_typer(ai_app, name="ai")
app.add_typer(audit_app, name="audit")
app.add_typer(access_app, name="access")
app.add_typer(keys_app, name="keys")
app.add_typer(tls_app, name="tls")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
console = Console()


def _open(settings: Settings) -> tuple[Archive, InProcessExecutor]:
    """The archive for a one-off command; a configuration problem (a missing encryption
    key, say) is one red line, not a traceback."""
    try:
        return open_archive(settings)
    except OpenVNAError as error:
        console.print(str(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from error


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    # highdicom narrates every module it copies into a result object at INFO
    logging.getLogger("highdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.command()
def serve(
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DIMSE port (default 11112).")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default 8042).")] = None,
    aet: Annotated[str | None, typer.Option(help="Our AE title (default OPENVNA).")] = None,
    stable_after: Annotated[
        float | None,
        typer.Option(help="Seconds without new instances before a study is stable (default 60)."),
    ] = None,
    viewer_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of the built OHIF viewer to serve at /viewer."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start the archive: DIMSE and HTTP listeners and the study stability monitor."""
    _configure_logging(verbose)
    settings = cli_settings(
        config,
        data_dir,
        host=host,
        stable_after=stable_after,
        **{
            "dimse.port": dicom_port,
            "http.port": http_port,
            "dimse.ae_title": aet,
            "http.viewer_dir": viewer_dir,
        },
    )
    try:
        running = start_archive(settings)
    except OpenVNAError as error:  # e.g. secure-by-default refusal: say why, no traceback
        console.print(str(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from error
    count = running.archive.repository.count_instances()
    http_url = running.http_url
    tls_line = (
        f"  DICOM TLS: {settings.host}:{running.dimse_tls_port}  (e.g. echoscu +tls KEY CERT "
        f"+cf CA -aec {settings.dimse.ae_title} {settings.host} {running.dimse_tls_port})\n"
        if running.dimse_tls_port is not None
        else ""
    )
    console.print(
        f"[bold green]OpenVNA[/bold green] serving {count} instances from "
        f"[cyan]{settings.data_dir.resolve()}[/cyan]\n"
        f"  DICOM:  AE [bold]{settings.dimse.ae_title}[/bold] at "
        f"{settings.host}:{running.dimse_port}\n"
        f"          e.g. echoscu -aec {settings.dimse.ae_title} {settings.host} "
        f"{running.dimse_port}\n"
        f"          findscu -S -aec {settings.dimse.ae_title} -k QueryRetrieveLevel=STUDY "
        f"-k PatientName= -k StudyDate= {settings.host} {running.dimse_port}\n"
        f"{tls_line}"
        f"  DICOMweb: {http_url}/dicom-web  (e.g. curl {http_url}/dicom-web/studies)\n"
        f"  Viewer: {http_url}/viewer/  (OHIF; installed by make run)\n"
        f"  Status: {http_url}/api/system\n"
        "  Press Ctrl+C to stop."
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    console.print("stopping…")
    running.stop()


@app.command("import")
def import_command(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders, zip archives, DICOMDIRs.")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    show_rejected: Annotated[bool, typer.Option(help="List every rejected file.")] = False,
) -> None:
    """Import DICOM files through the same ingest path as C-STORE."""
    settings = cli_settings(config, data_dir)
    archive, executor = _open(settings)
    summary = ImportSummary()
    try:
        items = list(enumerate_items(paths))
    except FileNotFoundError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    spool_dir = settings.storage_dir / "tmp"
    with Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not items,
    ) as progress:
        task = progress.add_task("import", total=len(items))
        for item in items:
            import_item(archive, item, summary, spool_dir)
            progress.advance(task)
    for event in summary.import_events(", ".join(str(path) for path in paths)):
        archive.security.audit.record(event)
    executor.shutdown()
    archive.close()
    table = Table(title="Import summary")
    table.add_column("result")
    table.add_column("files", justify="right")
    table.add_row("imported", str(summary.imported))
    table.add_row("duplicates", str(summary.duplicates))
    table.add_row("rejected", str(summary.rejected))
    console.print(table)
    for reason, count in summary.reasons.most_common():
        console.print(f"  {count:>5} × {reason}")
    if show_rejected:
        for name, why in summary.rejected_files:
            console.print(f"  [red]✗[/red] {name}: {why}")
    if summary.rejected and not summary.imported and not summary.duplicates:
        raise typer.Exit(1)


@app.command()
def verify(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Re-hash every stored instance and report any that differ from the index (scrub)."""
    settings = cli_settings(config, data_dir)
    archive, executor = _open(settings)
    total = archive.repository.count_instances()
    problems = []
    with Progress(
        TextColumn("[bold]verifying"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        task = progress.add_task("verify", total=total)
        for _uid, problem in archive.verify():
            if problem is not None:
                problems.append(problem)
            progress.advance(task)
    executor.shutdown()
    archive.close()
    for problem in problems:
        console.print(
            f"[red]✗ {problem.sop_instance_uid}[/red] ({problem.storage_key}): {problem.problem}"
        )
    console.print(f"{total} instances checked, {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


@peers_app.command("add")
def peers_add(
    ae_title: str,
    host: str,
    port: int,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Add or replace a peer; a running server uses it at once."""
    settings = cli_settings(config, data_dir)
    try:
        peer = PeerConfig(ae_title=ae_title, host=host, port=port)
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    peer_registry(settings).add(peer)
    console.print(f"peer {ae_title} → {host}:{port} added")


@peers_app.command("list")
def peers_list(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List configured and added peers."""
    settings = cli_settings(config, data_dir)
    table = Table("AE title", "host", "port")
    for peer in peer_registry(settings).all():
        table.add_row(peer.ae_title, peer.host, str(peer.port))
    console.print(table)


@peers_app.command("remove")
def peers_remove(
    ae_title: str, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Remove a peer added with ``peers add`` (peers from the config file stay)."""
    settings = cli_settings(config, data_dir)
    if not peer_registry(settings).remove(ae_title):
        console.print(f"[red]no peer {ae_title} was added with 'peers add'[/red]")
        raise typer.Exit(1)
    console.print(f"peer {ae_title} removed")


@samples_app.command("generate")
def samples_generate(
    out_dir: Path,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 1,
    patients: Annotated[int, typer.Option(help="Number of synthetic patients.")] = 4,
    small: Annotated[bool, typer.Option(help="Small images (for tests).")] = False,
) -> None:
    """Write synthetic CT, MR, CR/DX and US studies (several patients over several years)."""
    from openvna.sample import generate_samples

    studies = generate_samples(out_dir, seed=seed, patients=patients, small=small)
    files = sum(len(study.paths) for study in studies)
    console.print(f"{len(studies)} studies, {files} files written to {out_dir}")


@samples_app.command("load")
def samples_load(
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    seed: Annotated[int, typer.Option(help="Same seed, same studies.")] = 1,
) -> None:
    """Generate the sample studies (once) and import them; re-running changes nothing."""
    from openvna.sample import generate_samples

    settings = cli_settings(config, data_dir)
    samples_dir = settings.data_dir / "samples"
    if not samples_dir.is_dir():
        generate_samples(samples_dir, seed=seed)
    archive, executor = _open(settings)
    summary = ImportSummary()
    items = list(enumerate_items([samples_dir]))
    for item in items:
        import_item(archive, item, summary, settings.storage_dir / "tmp")
    for event in summary.import_events(str(samples_dir)):
        archive.security.audit.record(event)
    executor.shutdown()
    archive.close()
    console.print(
        f"sample studies: {summary.imported} imported, "
        f"{summary.duplicates} already present, {summary.rejected} rejected"
    )
    if summary.rejected:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
