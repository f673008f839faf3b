"""``openvna access``: explicit study grants, their revocation, and break-the-glass.

Acts on the archive's index directly (``--data-dir``/``--config`` like every command),
so it works whether or not a server is running: a running server sees a new grant on the
next request. Every change is recorded in the audit trail as a security alert.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from openvna.archive.header import is_valid_uid
from openvna.cli.common import ConfigOption, DataDirOption, cli_settings, open_index
from openvna.config import Settings
from openvna.index import access_repository
from openvna.security.audit import Outcome, StudyRef
from openvna.security.audit import events as audit_events
from openvna.security.context import SecurityContext, build_security
from openvna.security.principal import system_principal

access_app = typer.Typer(
    help="Study-level access: explicit grants and break-the-glass.", no_args_is_help=True
)
console = Console()

ByOption = Annotated[str, typer.Option("--by", help="Who does this (recorded).")]


@contextmanager
def _index(config: Path | None, data_dir: Path | None) -> Iterator[tuple[Engine, SecurityContext]]:
    settings: Settings = cli_settings(config, data_dir)
    engine = open_index(settings)
    security = build_security(settings, engine)
    try:
        yield engine, security
    finally:
        security.close()  # flushes the audit records written here
        engine.dispose()


def _study_uid(value: str) -> str:
    if not is_valid_uid(value.strip()):
        console.print(f"[red]{value!r} is not a valid Study Instance UID[/red]")
        raise typer.Exit(2)
    return value.strip()


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


@access_app.command("grant")
def grant(
    subject: Annotated[str, typer.Argument(help="Who: user:NAME, apikey:ID, oidc:SUB, ae:AET.")],
    study: Annotated[str, typer.Argument(help="Study Instance UID.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "",
    hours: Annotated[
        float | None,
        typer.Option("--hours", min=0.001, help="Expire after this many hours (default: never)."),
    ] = None,
    by: ByOption = "cli",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Let SUBJECT see one study beyond what its roles' rules allow."""
    uid = _study_uid(study)
    if not subject.strip() or not subject.strip().isprintable():
        console.print("[red]the subject is printable text such as user:alice[/red]")
        raise typer.Exit(2)
    with _index(config, data_dir) as (engine, security):
        expires_at = None
        if hours is not None:
            expires_at = time.time() + hours * 3600.0
        made = access_repository.add_grant(
            engine,
            subject=subject.strip(),
            study_uid=uid,
            reason=reason,
            granted_by=by,
            expires_at=expires_at,
        )
        security.audit.record(
            audit_events.security_alert(
                system_principal(by),
                "",
                audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
                description=f"study access granted to {made.subject}",
                outcome=Outcome.SUCCESS,
                studies=[StudyRef(uid)],
            )
        )
    until = f" until {_when(made.expires_at)}" if made.expires_at else ""
    console.print(f"grant {made.pk}: {made.subject} may see {uid}{until}")


@access_app.command("revoke")
def revoke(
    grant_id: Annotated[int, typer.Argument(help="Grant id (from 'openvna access list').")],
    by: ByOption = "cli",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a grant or a break-the-glass access (it stays listed with --all)."""
    with _index(config, data_dir) as (engine, security):
        revoked = access_repository.revoke_grant(engine, grant_id)
        if revoked is None:
            console.print(f"[red]no grant {grant_id}[/red]")
            raise typer.Exit(1)
        security.audit.record(
            audit_events.security_alert(
                system_principal(by),
                "",
                audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
                description=f"study access of {revoked.subject} revoked",
                outcome=Outcome.SUCCESS,
                studies=[StudyRef(revoked.study_instance_uid)],
            )
        )
    console.print(f"grant {grant_id} revoked ({revoked.subject}, {revoked.study_instance_uid})")


@access_app.command("list")
def list_command(
    subject: Annotated[str | None, typer.Option("--subject", help="Only this subject.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this study.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Include revoked and expired grants.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Grants and break-the-glass accesses, newest first (in force only, unless --all)."""
    with _index(config, data_dir) as (engine, _security):
        grants = access_repository.list_grants(
            engine, subject=subject, study_uid=study, active_only=not everything, limit=limit
        )
    table = Table("id", "subject", "study", "kind", "reason", "by", "created", "expires", "state")
    for item in grants:
        state = "active" if item.active() else ("revoked" if item.revoked_at else "expired")
        table.add_row(
            str(item.pk),
            item.subject,
            item.study_instance_uid,
            item.kind,
            item.reason,
            item.granted_by,
            _when(item.created_at),
            _when(item.expires_at),
            state,
        )
    console.print(table)


@access_app.command("break-glass")
def break_glass(
    subject: Annotated[str, typer.Argument(help="Who needs the study now (user:NAME, ...).")],
    study: Annotated[str, typer.Argument(help="Study Instance UID.")],
    reason: Annotated[str, typer.Option("--reason", help="The emergency (required).")] = "",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Emergency access for SUBJECT to one stored study for security.break_glass_hours,
    with a reason; audited as Emergency Override Started."""
    uid = _study_uid(study)
    if not reason.strip():
        console.print("[red]--reason is required: say why the study must be opened[/red]")
        raise typer.Exit(2)
    with _index(config, data_dir) as (engine, security):
        if not access_repository.study_exists(engine, uid):
            console.print(f"[red]no study {uid} in the archive[/red]")
            raise typer.Exit(1)
        made = access_repository.break_glass(
            engine,
            subject=subject.strip(),
            study_uid=uid,
            reason=reason,
            hours=security.settings.security.break_glass_hours,
        )
        patient_id = access_repository.patient_id_of_study(engine, uid)
        security.audit.record(
            audit_events.security_alert(
                system_principal("cli"),
                "",
                audit_events.EMERGENCY_OVERRIDE_STARTED,
                description=f"break-the-glass for {made.subject}: {made.reason}",
                outcome=Outcome.SUCCESS,
                studies=[StudyRef(uid, patient_id=patient_id)],
            )
        )
    console.print(f"grant {made.pk}: {made.subject} may see {uid} until {_when(made.expires_at)}")
