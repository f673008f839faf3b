"""What every ``openvna`` command group shares: the archive options and opening the index.

Commands other than ``serve`` act on an archive's data directory directly (they may run
beside a running server); they read the same settings and bring the index schema up to
date exactly as the server does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy import Engine

from openvna.config import Settings, load_settings
from openvna.index.database import create_index_engine, upgrade_schema

DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Archive data directory.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML configuration file.")]

_errors = Console(stderr=True)


def cli_settings(config: Path | None, data_dir: Path | None, **overrides: Any) -> Settings:
    """The settings of one command; a missing configuration file exits with status 2."""
    try:
        return load_settings(config, data_dir=data_dir, **overrides)
    except FileNotFoundError as error:
        _errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error


def open_index(settings: Settings) -> Engine:
    """The index engine with its schema migrated (the data dir is created if new)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings.index_url, sqlite_synchronous=settings.sqlite_synchronous)
    upgrade_schema(engine)
    return engine
