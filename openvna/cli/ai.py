"""``openvna ai``: models, jobs on demand, provenance, the stop switch, rejection.

Acts on the archive's index directly (``--data-dir``/``--config`` like every command),
so it works whether or not a server is running; a running server's AI worker picks up
jobs scheduled here within one poll interval.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from openvna.ai.errors import ManifestError
from openvna.ai.jobs import Orchestrator
from openvna.ai.registry import load_registry
from openvna.cli.common import ConfigOption, DataDirOption, cli_settings, open_index
from openvna.config import Settings
from openvna.errors import OpenVNAError
from openvna.index.ai_repository import AiRepository

ai_app = typer.Typer(
    help="AI models, jobs, provenance records and the stop switch.", no_args_is_help=True
)
console = Console()

ByOption = Annotated[str, typer.Option("--by", help="Who does this (recorded).")]


def _orchestrator(config: Path | None, data_dir: Path | None) -> Orchestrator:
    settings: Settings = cli_settings(config, data_dir)
    engine = open_index(settings)
    return Orchestrator(settings, engine, load_registry(settings))


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[red]{error}[/red]")
    return typer.Exit(1)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


@ai_app.command("models")
def models(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List installed models, their runtime and whether they are enabled."""
    orchestrator = _orchestrator(config, data_dir)
    table = Table("model", "version", "runtime", "input", "enabled", "description")
    for status in orchestrator.status():
        manifest = status.manifest
        selection = ",".join(manifest.input.modalities) or "any"
        state = "yes" if status.enabled else f"[red]stopped[/red] {status.stop_reason}".strip()
        table.add_row(
            manifest.name,
            manifest.version,
            manifest.runtime.kind.value,
            f"{selection} ≥{manifest.input.min_instances}",
            state,
            manifest.description,
        )
    console.print(table)
    for problem in orchestrator.registry.problems:
        console.print(f"[yellow]left out: {problem}[/yellow]")
    if not orchestrator.global_enabled():
        console.print("[red]all AI is stopped (openvna ai start to resume)[/red]")


@ai_app.command("run")
def run(
    study: Annotated[str, typer.Argument(help="Study Instance UID.")],
    series: Annotated[str | None, typer.Option(help="Only this series.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Only these models.")] = None,
    by: ByOption = "cli",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Schedule AI jobs for a study now (every matching model, or the ones named)."""
    orchestrator = _orchestrator(config, data_dir)
    try:
        jobs = orchestrator.schedule(
            study,
            trigger="cli",
            requested_by=by,
            series_uid=series,
            model_names=model or [],
            priority=1,
        )
    except (ManifestError, OpenVNAError) as error:
        raise _fail(error) from error
    for job in jobs:
        console.print(
            f"scheduled {job.job_uid}: {job.model_name} on series {job.series_instance_uid}"
        )


@ai_app.command("jobs")
def jobs(
    state: Annotated[str | None, typer.Option(help="Comma-separated states.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    study: Annotated[str | None, typer.Option(help="Only this study.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """List AI jobs, newest first."""
    repository = _orchestrator(config, data_dir).repository
    table = Table("job", "model", "state", "attempts", "created", "error")
    for job in repository.jobs(
        states=[s for s in (state or "").split(",") if s],
        model_name=model,
        study_uid=study,
        limit=limit,
    ):
        table.add_row(
            job.job_uid,
            f"{job.model_name} {job.model_version}",
            job.state,
            f"{job.attempts}/{job.max_attempts}",
            _when(job.created_at),
            job.error,
        )
    console.print(table)


@ai_app.command("runs")
def runs(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    study: Annotated[str | None, typer.Option(help="Only this study.")] = None,
    job: Annotated[str | None, typer.Option(help="Only this job UID.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Full records as JSON.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Provenance: every AI run with model version, artefact hash, inputs and outputs."""
    repository = _orchestrator(config, data_dir).repository
    records = repository.runs(model_name=model, study_uid=study, job_uid=job, limit=limit)
    if as_json:
        for record in records:
            record["result"].pop("fhir", None)
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table("run", "model", "status", "started", "seconds", "inputs", "outputs", "error")
    for record in records:
        seconds = record["seconds"]
        table.add_row(
            str(record["run"]),
            f"{record['model']} {record['modelVersion']}",
            record["status"],
            _when(record["startedAt"]),
            f"{seconds:.2f}" if seconds is not None else "",
            str(len(record["inputs"])),
            str(len(record["outputs"])),
            record["error"],
        )
    console.print(table)


@ai_app.command("stop")
def stop(
    model: Annotated[str | None, typer.Argument(help="Model name; all AI when left out.")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "",
    by: ByOption = "cli",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """The stop switch: disable a model (or all AI) now and cancel its waiting jobs."""
    try:
        cancelled = _orchestrator(config, data_dir).stop(model, by=by, reason=reason)
    except ManifestError as error:
        raise _fail(error) from error
    console.print(f"{model or 'all AI'} stopped; {len(cancelled)} waiting job(s) cancelled")


@ai_app.command("start")
def start(
    model: Annotated[str | None, typer.Argument(help="Model name; all AI when left out.")] = None,
    by: ByOption = "cli",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Release the stop switch of a model (or of all AI)."""
    try:
        _orchestrator(config, data_dir).start(model, by=by)
    except ManifestError as error:
        raise _fail(error) from error
    console.print(f"{model or 'all AI'} enabled")


@ai_app.command("cancel")
def cancel(
    job: Annotated[str, typer.Argument(help="Job UID.")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "",
    by: ByOption = "cli",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Cancel one job (a running one is killed by the worker)."""
    try:
        result = _orchestrator(config, data_dir).cancel(job, by=by, reason=reason)
    except OpenVNAError as error:
        raise _fail(error) from error
    console.print(f"job {job}: {result.state}")


@ai_app.command("reject")
def reject(
    sop_instance_uid: Annotated[str, typer.Argument(help="SOP Instance UID of an AI output.")],
    by: Annotated[str, typer.Option("--by", help="Who rejects it (recorded).")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Mark an AI result rejected by a human (kept, but hidden from the worklist)."""
    try:
        _orchestrator(config, data_dir).reject(sop_instance_uid, by=by, reason=reason)
    except OpenVNAError as error:
        raise _fail(error) from error
    console.print(f"{sop_instance_uid} rejected by {by}")


@ai_app.command("purge")
def purge(
    older_than_days: Annotated[
        float | None, typer.Option(help="Default: the ai.retention_days setting.")
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete provenance records older than the retention (the worker does this hourly)."""
    orchestrator = _orchestrator(config, data_dir)
    days = (
        older_than_days if older_than_days is not None else orchestrator.settings.ai.retention_days
    )
    removed = AiRepository(orchestrator.engine).purge_before(time.time() - days * 86400.0)
    console.print(f"{removed} run record(s) older than {days:g} days removed")
