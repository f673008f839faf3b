"""``openvna user`` and ``openvna apikey``: local accounts and API keys.

Acts on the archive's index directly (``--data-dir``/``--config`` like every command),
beside a running server or before the first start: this is how the first administrator
is made without any default password. Passwords are typed at a hidden prompt or read
from standard input (``--password-stdin``), never taken as an argument (which would
land in the shell history and the process list). Every change is audited.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from openvna.cli.common import ConfigOption, DataDirOption, cli_settings, open_index
from openvna.config import Role, Settings
from openvna.index.user_repository import UserRepository
from openvna.security import accounts
from openvna.security.apikeys import create_api_key, revoke_api_key
from openvna.security.audit import AuditTrail, Code, Outcome
from openvna.security.audit import events as audit_events
from openvna.security.context import build_security
from openvna.security.permissions import Permission
from openvna.security.principal import system_principal

user_app = typer.Typer(
    help="Local user accounts: passwords, roles, two-factor authentication.",
    no_args_is_help=True,
)
apikey_app = typer.Typer(
    help="API keys for services: scoped, expiring, revocable.", no_args_is_help=True
)
console = Console()

PasswordStdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
UsernameArgument = Annotated[str, typer.Argument(help="User name.")]
RolesOption = Annotated[
    list[Role], typer.Option("--role", help="A role (repeat for several).", case_sensitive=False)
]


@dataclass
class _Index:
    settings: Settings
    users: UserRepository
    audit: AuditTrail

    def record(self, code: Code, description: str) -> None:
        self.audit.record(
            audit_events.security_alert(
                system_principal("cli"), "", code, description=description, outcome=Outcome.SUCCESS
            )
        )


@contextmanager
def _index(config: Path | None, data_dir: Path | None) -> Iterator[_Index]:
    settings = cli_settings(config, data_dir)
    engine = open_index(settings)
    security = build_security(settings, engine)
    try:
        yield _Index(settings, UserRepository(engine), security.audit)
    finally:
        security.close()
        engine.dispose()


def _fail(error: Exception, status: int = 1) -> typer.Exit:
    console.print(f"[red]{error}[/red]")
    return typer.Exit(status)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


def _show_totp(username: str, new: accounts.NewUser) -> None:
    if new.totp_secret is None:
        return
    console.print(
        f"Two-factor authentication is required for {username}'s role. Add this to an "
        "authenticator app (the first login confirms it):"
    )
    console.print(f"  secret: {new.totp_secret}", soft_wrap=True, highlight=False)
    console.print(f"  {new.otpauth_uri}", soft_wrap=True, highlight=False)


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: RolesOption,
    display_name: Annotated[str, typer.Option("--display-name", help="Full name.")] = "",
    institution: Annotated[
        list[str] | None,
        typer.Option("--institution", help="Restrict to studies of this Institution Name."),
    ] = None,
    issuer: Annotated[
        list[str] | None,
        typer.Option("--issuer", help="Restrict to patients of this Issuer of Patient ID."),
    ] = None,
    password_stdin: PasswordStdinOption = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a local user; prints the TOTP secret when the role requires MFA."""
    password = _password(password_stdin)
    with _index(config, data_dir) as index:
        try:
            new = accounts.create_user(
                index.users,
                index.settings,
                username,
                password,
                role,
                display_name=display_name,
                institutions=institution or (),
                issuers_of_patient_id=issuer or (),
            )
        except accounts.AccountError as error:
            raise _fail(error, 2) from error
        index.record(
            audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
            f"user {username!r} created with roles {','.join(sorted(role))}",
        )
    console.print(f"user {username} created with roles {', '.join(sorted(role))}")
    _show_totp(username, new)


@user_app.command("list")
def user_list(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List local users, their roles and MFA state."""
    with _index(config, data_dir) as index:
        found = index.users.list_users()
    table = Table("user", "name", "roles", "MFA", "state", "restricted to", "created")
    for user in found:
        mfa = "enrolled" if user.mfa_enrolled else ("pending" if user.totp_secret else "")
        restriction = ", ".join((*user.institutions, *user.issuers_of_patient_id))
        table.add_row(
            user.username,
            user.display_name,
            ", ".join(sorted(user.roles)),
            mfa,
            "disabled" if user.disabled else "enabled",
            restriction,
            _when(user.created_at),
        )
    console.print(table)


def _update(
    config: Path | None,
    data_dir: Path | None,
    username: str,
    what: str,
    change: Callable[[UserRepository], object],
) -> None:
    with _index(config, data_dir) as index:
        try:
            change(index.users)
        except accounts.NoSuchAccount as error:
            raise _fail(error) from error
        except accounts.AccountError as error:
            raise _fail(error, 2) from error
        index.record(audit_events.USER_SECURITY_ATTRIBUTES_CHANGED, f"user {username!r}: {what}")
    console.print(f"user {username}: {what}")


@user_app.command("passwd")
def user_passwd(
    username: UsernameArgument,
    password_stdin: PasswordStdinOption = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Set a new password (the user's sessions end)."""
    password = _password(password_stdin)
    _update(
        config,
        data_dir,
        username,
        "password changed",
        lambda users: accounts.update_user(users, username, password=password),
    )


@user_app.command("roles")
def user_roles(
    username: UsernameArgument,
    role: RolesOption,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Replace the user's roles (the user's sessions end)."""
    _update(
        config,
        data_dir,
        username,
        f"roles set to {', '.join(sorted(role))}",
        lambda users: accounts.update_user(users, username, roles=role),
    )


@user_app.command("disable")
def user_disable(
    username: UsernameArgument, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Disable the account at once (its sessions end; it cannot log in)."""
    _update(
        config,
        data_dir,
        username,
        "disabled",
        lambda users: accounts.update_user(users, username, disabled=True),
    )


@user_app.command("enable")
def user_enable(
    username: UsernameArgument, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Enable a disabled account."""
    _update(
        config,
        data_dir,
        username,
        "enabled",
        lambda users: accounts.update_user(users, username, disabled=False),
    )


@user_app.command("mfa-reset")
def user_mfa_reset(
    username: UsernameArgument, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Forget the user's TOTP enrolment (lost device); they enrol again at next login."""
    with _index(config, data_dir) as index:
        try:
            accounts.reset_mfa(index.users, username)
        except accounts.AccountError as error:
            raise _fail(error) from error
        index.record(
            audit_events.USER_SECURITY_ATTRIBUTES_CHANGED,
            f"two-factor enrolment of {username!r} reset",
        )
    console.print(f"user {username}: two-factor enrolment reset; they enrol at next login")


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Argument(help="What the key is for (e.g. the service).")],
    role: RolesOption,
    scope: Annotated[
        list[Permission] | None,
        typer.Option("--scope", help="Narrow to this permission (repeat for several)."),
    ] = None,
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", help="Lifetime in days (default: none).")
    ] = None,
    owner: Annotated[str, typer.Option("--owner", help="Who is responsible for it.")] = "",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Create an API key; prints its token once (only a hash is kept)."""
    with _index(config, data_dir) as index:
        try:
            issued = create_api_key(
                index.users,
                name,
                role,
                scopes=scope or (),
                owner=owner,
                expires_days=expires_days,
            )
        except ValueError as error:
            raise _fail(error, 2) from error
        index.record(
            audit_events.SECURITY_CONFIGURATION,
            f"API key {issued.key.key_id} ({name!r}) created",
        )
    console.print(f"API key {issued.key.key_id} created; its token (shown only now):")
    console.print(issued.token, soft_wrap=True, highlight=False)


@apikey_app.command("list")
def apikey_list(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List API keys (never their tokens)."""
    with _index(config, data_dir) as index:
        keys = index.users.list_api_keys()
    table = Table("key id", "name", "roles", "scopes", "owner", "expires", "state", "last used")
    for key in keys:
        state = "revoked" if key.revoked_at is not None else "active"
        table.add_row(
            key.key_id,
            key.name,
            ", ".join(sorted(key.roles)),
            "" if key.scopes is None else ", ".join(sorted(key.scopes)),
            key.owner,
            _when(key.expires_at),
            state,
            _when(key.last_used_at),
        )
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after ovna_).")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke an API key at once."""
    with _index(config, data_dir) as index:
        if not revoke_api_key(index.users, key_id):
            raise _fail(ValueError(f"no active API key {key_id}"))
        index.record(audit_events.SECURITY_CONFIGURATION, f"API key {key_id} revoked")
    console.print(f"API key {key_id} revoked")
