"""``openvna audit``: check the hash chain, list records, export them (DICOM or FHIR).

Works on the archive's index directly (``--data-dir``/``--config`` like every command),
whether or not a server runs. Listing and exporting show patient data, so they are
themselves recorded (Audit Log Used, by the operating-system user who ran them).
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from openvna.cli.common import ConfigOption, DataDirOption, cli_settings, open_index
from openvna.config import Settings
from openvna.security.audit import events
from openvna.security.audit.chain import ChainedAuditTrail
from openvna.security.audit.fhir import export_bundle
from openvna.security.audit.store import (
    MAX_LIMIT,
    AuditFilter,
    AuditRecord,
    parse_time,
    query_records,
    resolve_event_id,
)
from openvna.security.audit.verify import verify_archive
from openvna.security.principal import system_principal

audit_app = typer.Typer(
    help="The audit trail: verify the hash chain, list and export records.",
    no_args_is_help=True,
)
console = Console()

SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="From this date or time (ISO 8601, UTC unless given)."),
]
UntilOption = Annotated[str | None, typer.Option("--until", help="Before this date or time.")]


def _open(config: Path | None, data_dir: Path | None) -> tuple[Settings, Engine]:
    settings = cli_settings(config, data_dir)
    engine = open_index(settings)
    return settings, engine


def _time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error


def _record_use(settings: Settings, engine: Engine, what: str) -> None:
    """Audit Log Used (A.5.3.2), by the operating-system user, written before returning."""
    if not settings.security.audit.enabled:
        return
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    trail = ChainedAuditTrail(settings, engine)
    trail.record(events.audit_log_used(system_principal(f"cli:{user}"), "", what))
    trail.close()


@audit_app.command("verify")
def verify(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Walk the hash chain; exit 1 naming the first broken record (edited, deleted,
    truncated), 0 when every record holds."""
    settings, engine = _open(config, data_dir)
    report = verify_archive(engine, settings.data_dir)
    engine.dispose()
    if report.ok:
        console.print(
            f"[green]audit chain intact[/green]: {report.records} records, "
            f"last seq {report.last_seq}"
        )
        return
    console.print(
        f"[red]audit chain broken at seq {report.broken_seq}[/red]: {report.problem} "
        f"({report.records} records verified before it)",
        soft_wrap=True,
    )
    raise typer.Exit(1)


@audit_app.command("list")
def list_records(
    since: SinceOption = None,
    until: UntilOption = None,
    event: Annotated[
        str | None, typer.Option("--event", help="Event ID (e.g. 110112) or name (Query).")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Requestor user ID (user:alice, ae:CT01).")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    outcome: Annotated[
        int | None, typer.Option("--outcome", help="0 success, 4, 8, 12 failures.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_LIMIT)] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines with the XML messages.")
    ] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """List audit records in chain order, filtered."""
    settings, engine = _open(config, data_dir)
    try:
        event_id = resolve_event_id(event) if event else ""
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    where = AuditFilter(
        since=_time(since),
        until=_time(until),
        event_id=event_id,
        user_id=user or "",
        study_uid=study or "",
        outcome=outcome,
        limit=limit,
        offset=offset,
    )
    records = query_records(engine, where)
    _record_use(settings, engine, f"openvna audit list: {len(records)} records")
    engine.dispose()
    if as_json:
        for record in records:
            sys.stdout.write(json.dumps(record.as_json()) + "\n")
        return
    table = Table("seq", "time (UTC)", "event", "action", "outcome", "user", "address", "studies")
    for record in records:
        table.add_row(
            str(record.seq),
            record.recorded_iso,
            f"{record.event_id} {record.event_name}",
            record.event_action,
            str(record.outcome),
            record.user_id,
            record.address,
            " ".join(record.study_uids),
        )
    console.print(table)


class ExportFormat:
    DICOM = "dicom"
    FHIR = "fhir"


@audit_app.command("export")
def export(
    export_format: Annotated[
        str,
        typer.Option(
            "--format", help="dicom: one PS3.15 audit message per line; fhir: a FHIR Bundle."
        ),
    ] = ExportFormat.DICOM,
    since: SinceOption = None,
    until: UntilOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write here instead of standard output.")
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Export audit records as DICOM audit messages or FHIR R4 AuditEvents."""
    if export_format not in (ExportFormat.DICOM, ExportFormat.FHIR):
        console.print("[red]--format is dicom or fhir[/red]")
        raise typer.Exit(2)
    settings, engine = _open(config, data_dir)
    records = _all_records(engine, _time(since), _time(until))
    target: TextIO = sys.stdout if output is None else output.open("w", encoding="utf-8")
    count = 0
    try:
        if export_format == ExportFormat.FHIR:
            listed = list(records)
            count = len(listed)
            bundle = export_bundle(listed, settings.security.audit.source_id)
            target.write(json.dumps(bundle.model_dump(mode="json", exclude_none=True), indent=1))
            target.write("\n")
        else:
            for record in records:  # streamed: memory stays flat with the log's length
                target.write(record.message + "\n")
                count += 1
    finally:
        if output is not None:
            target.close()
    _record_use(settings, engine, f"openvna audit export ({export_format}): {count} records")
    engine.dispose()
    if output is not None:
        console.print(f"{count} records written to {output}")


def _all_records(engine: Engine, since: float | None, until: float | None) -> Iterator[AuditRecord]:
    after = 0
    while batch := query_records(
        engine, AuditFilter(since=since, until=until, after_seq=after, limit=MAX_LIMIT)
    ):
        yield from batch
        after = batch[-1].seq
