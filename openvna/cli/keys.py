"""``openvna keys``: the master keys of encryption at rest (init, rotate, status).

Works on the keyring file and the storage directly, beside a running server: the
server reloads a rewritten keyring by itself, and rotation rewrites key slots in place
without stopping readers (see :mod:`openvna.storage.rekey`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from openvna.cli.common import ConfigOption, DataDirOption, cli_settings
from openvna.config import Settings
from openvna.security.keys import (
    KeyProvider,
    Keyring,
    KeyringError,
    KeyringProvider,
    StaticKeyProvider,
    decode_master_key,
    keyring_lock,
    keyring_path,
    read_keyring,
    write_keyring,
)
from openvna.storage.crypto import EncryptedStorage
from openvna.storage.filesystem import FilesystemStorage
from openvna.storage.rekey import census, rewrap_all, scrub_all

keys_app = typer.Typer(
    help="Master keys of encryption at rest: create, rotate, inspect.", no_args_is_help=True
)
console = Console()


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(code)


@keys_app.command("init")
def keys_init(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Create the keyring with a first master key (never overwrites an existing one)."""
    settings = cli_settings(config, data_dir)
    path = keyring_path(settings)
    try:
        with keyring_lock(path):
            if path.exists():
                raise _fail(f"keyring {path} already exists; `openvna keys rotate` adds a new key")
            keyring = Keyring.create()
            write_keyring(path, keyring)
    except KeyringError as error:
        raise _fail(str(error)) from error
    console.print(
        f"created keyring [cyan]{path}[/cyan] (mode 0600) with master key "
        f"[bold]{keyring.active}[/bold]\n"
        "  Back it up apart from the archive: without it the stored instances cannot be read.\n"
        "  Turn encryption on with security.encryption.enabled = true "
        "(or OPENVNA_SECURITY__ENCRYPTION__ENABLED=true)."
    )
    if settings.security.encryption.master_key:
        console.print(
            "[yellow]security.encryption.master_key is set and takes precedence over the "
            "keyring[/yellow]"
        )


@keys_app.command("rotate")
def keys_rotate(
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    retire_old: Annotated[
        bool,
        typer.Option(
            "--retire-old",
            help="After re-wrapping, clear old key slots and delete every other key.",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Finish an interrupted rotation: no new key, re-wrap what is left."
        ),
    ] = False,
) -> None:
    """Make a new master key active and re-wrap every object's data key with it."""
    settings = cli_settings(config, data_dir)
    if settings.security.encryption.master_key:
        raise _fail(
            "the master key comes from security.encryption.master_key: rotation needs a "
            "keyring (`openvna keys init`)"
        )
    path = keyring_path(settings)
    try:
        with keyring_lock(path):
            keyring = read_keyring(path)
            changed_at = path.stat().st_mtime
            if not resume:
                keyring = keyring.rotated()
                write_keyring(path, keyring)
                changed_at = time.time()
                console.print(f"new active master key [bold]{keyring.active}[/bold]")
            _rewrap(settings, path, keyring, changed_at, retire_old)
    except KeyringError as error:
        raise _fail(str(error)) from error


def _rewrap(
    settings: Settings, path: Path, keyring: Keyring, changed_at: float, retire_old: bool
) -> None:
    storage = EncryptedStorage(FilesystemStorage(settings.storage_dir), KeyringProvider(path))
    try:
        with _progress() as progress:
            task = progress.add_task("re-wrapping data keys", total=None)
            report = rewrap_all(
                storage,
                keyring.active,
                key_changed_at=changed_at,
                progress=lambda _key, _done: progress.advance(task),
            )
        console.print(
            f"{report.rewrapped} object(s) re-wrapped, {report.unchanged} already on "
            f"{keyring.active}, {len(report.failed)} failed ({report.passes} passes)"
        )
        for key, why in sorted(report.failed.items()):
            console.print(f"  [red]✗[/red] {key}: {why}")
        if report.failed:
            raise _fail(
                "some objects still use older keys: fix them and run "
                "`openvna keys rotate --resume`" + (" (old keys kept)" if retire_old else "")
            )
        if not retire_old:
            return
        with _progress() as progress:
            task = progress.add_task("clearing old key slots", total=None)
            scrub = scrub_all(
                storage, keyring.active, progress=lambda _key, _done: progress.advance(task)
            )
        if not scrub.complete:
            for key in scrub.not_on_active:
                console.print(f"  [red]✗[/red] {key}: not on {keyring.active}")
            for key, why in sorted(scrub.failed.items()):
                console.print(f"  [red]✗[/red] {key}: {why}")
            raise _fail("old keys kept: run `openvna keys rotate --resume --retire-old` again")
        retired = [key.key_id for key in keyring.keys if key.key_id != keyring.active]
        write_keyring(path, keyring.retired())
        console.print(
            f"{scrub.cleared} old key slot(s) cleared; retired "
            f"{', '.join(retired) if retired else 'nothing'}"
        )
    finally:
        storage.close()


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed} objects"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@keys_app.command("status")
def keys_status(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Master keys and how many stored objects each one wraps now (exit 1 when an object
    uses a key that is not available or has an unreadable header)."""
    settings = cli_settings(config, data_dir)
    encryption = settings.security.encryption
    rows: list[tuple[str, str, str, str]] = []
    provider: KeyProvider
    try:
        if encryption.master_key:
            provider = StaticKeyProvider(decode_master_key(encryption.master_key))
            rows.append((provider.active_key_id(), "", "", "active (from master_key)"))
        else:
            path = keyring_path(settings)
            keyring = read_keyring(path)
            provider = KeyringProvider(path)
            for key in sorted(keyring.keys, key=lambda k: k.version):
                state = "active" if key.key_id == keyring.active else "previous"
                rows.append((key.key_id, str(key.version), key.created, state))
    except KeyringError as error:
        raise _fail(str(error)) from error
    storage = EncryptedStorage(FilesystemStorage(settings.storage_dir), provider)
    try:
        counts = census(storage)
    finally:
        storage.close()
    table = Table(
        title=f"Encryption at rest: {'enabled' if encryption.enabled else 'disabled'}"
        " (security.encryption.enabled)"
    )
    for column in ("key id", "version", "created", "state"):
        table.add_column(column)
    table.add_column("objects", justify="right")
    known = {row[0] for row in rows}
    for key_id, version, created, state in rows:
        table.add_row(key_id, version, created, state, str(counts.by_key.get(key_id, 0)))
    missing = {key: n for key, n in counts.by_key.items() if key not in known}
    for key_id, count in sorted(missing.items()):
        table.add_row(f"[red]{key_id}[/red]", "", "", "[red]not available[/red]", str(count))
    console.print(table)
    if counts.unreadable:
        console.print(
            f"[red]{len(counts.unreadable)} object(s) without a readable encryption header "
            "(damaged, or stored before encryption was enabled)[/red]"
        )
        for storage_key, why in sorted(counts.unreadable.items())[:20]:
            console.print(f"  ✗ {storage_key}: {why}")
    if missing or counts.unreadable:
        raise typer.Exit(1)
