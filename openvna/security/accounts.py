"""Managing local accounts: the rules shared by ``openvna user`` and ``/api/users``.

Creating a user checks the name and the password policy and, when a role requires a
second factor, makes the TOTP secret at once (to hand over with the account; the first
login confirms it). Changing a password, roles or MFA, or disabling an account ends
that user's sessions. The last enabled administrator can be neither disabled nor
demoted, so that nobody locks the archive out of its own administration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from openvna.config import Role, Settings
from openvna.index.user_repository import UserRepository, UserRow
from openvna.security import totp
from openvna.security.passwords import (
    USERNAME,
    check_password_policy,
    check_username,
    hash_password,
)


class AccountError(ValueError):
    """The request is invalid (400 over HTTP, exit status 2 in the CLI)."""


class NoSuchAccount(AccountError):
    """No user of that name (404)."""


class AccountConflict(AccountError):
    """The change conflicts with the current state (409): name taken, last admin."""


@dataclass(frozen=True)
class NewUser:
    """A created user and, when its role needs MFA, the TOTP secret to enrol."""

    user: UserRow
    totp_secret: str | None

    @property
    def otpauth_uri(self) -> str | None:
        if self.totp_secret is None:
            return None
        return totp.provisioning_uri(self.totp_secret, self.user.username)


def requires_mfa(settings: Settings, roles: Iterable[Role]) -> bool:
    return bool(frozenset(roles) & frozenset(settings.security.mfa_required_roles))


def check_text(value: str, what: str) -> str:
    """``value`` unless it holds control characters (they would end up in audit records
    and in the index, where PostgreSQL refuses NUL), or is longer than 255 characters."""
    if len(value) > 255 or not all(char.isprintable() for char in value):
        raise AccountError(f"{what} must be at most 255 printable characters")
    return value


def _check_texts(
    display_name: str | None,
    institutions: Iterable[str] | None,
    issuers_of_patient_id: Iterable[str] | None,
) -> None:
    if display_name is not None:
        check_text(display_name, "the display name")
    for value in institutions or ():
        check_text(value, "an institution")
    for value in issuers_of_patient_id or ():
        check_text(value, "an issuer of patient ID")


def _existing(repository: UserRepository, username: str) -> UserRow:
    user = repository.get_user(username) if USERNAME.match(username) else None
    if user is None:
        raise NoSuchAccount(f"no user {username!r}")
    return user


def _check_roles(roles: Iterable[Role]) -> frozenset[Role]:
    role_set = frozenset(roles)
    if not role_set:
        raise AccountError("a user needs at least one role")
    return role_set


def create_user(
    repository: UserRepository,
    settings: Settings,
    username: str,
    password: str,
    roles: Iterable[Role],
    *,
    display_name: str = "",
    institutions: Iterable[str] = (),
    issuers_of_patient_id: Iterable[str] = (),
) -> NewUser:
    """Create a local user (raises :class:`AccountError` with the reason)."""
    try:
        check_username(username)
        check_password_policy(password)
    except ValueError as error:
        raise AccountError(str(error)) from error
    role_set = _check_roles(roles)
    institutions, issuers_of_patient_id = tuple(institutions), tuple(issuers_of_patient_id)
    _check_texts(display_name, institutions, issuers_of_patient_id)
    secret = totp.new_secret() if requires_mfa(settings, role_set) else None
    try:
        user = repository.add_user(
            username,
            hash_password(password),
            role_set,
            display_name=display_name,
            totp_secret=secret,
            institutions=institutions,
            issuers_of_patient_id=issuers_of_patient_id,
        )
    except ValueError as error:
        raise AccountConflict(str(error)) from error
    return NewUser(user, secret)


def _guard_last_admin(repository: UserRepository, user: UserRow, *, keeps_admin: bool) -> None:
    if keeps_admin or Role.ADMIN not in user.roles or user.disabled:
        return
    others = [
        other
        for other in repository.list_users()
        if other.pk != user.pk and not other.disabled and Role.ADMIN in other.roles
    ]
    if not others:
        raise AccountConflict(
            f"{user.username!r} is the last enabled administrator; add another first"
        )


def update_user(
    repository: UserRepository,
    username: str,
    *,
    roles: Iterable[Role] | None = None,
    disabled: bool | None = None,
    password: str | None = None,
    display_name: str | None = None,
    institutions: Iterable[str] | None = None,
    issuers_of_patient_id: Iterable[str] | None = None,
) -> UserRow:
    """Change an account; security-relevant changes end the user's sessions."""
    user = _existing(repository, username)
    role_set = None if roles is None else _check_roles(roles)
    institutions = None if institutions is None else tuple(institutions)
    issuers_of_patient_id = None if issuers_of_patient_id is None else tuple(issuers_of_patient_id)
    _check_texts(display_name, institutions, issuers_of_patient_id)
    keeps_admin = (role_set is None or Role.ADMIN in role_set) and not disabled
    _guard_last_admin(repository, user, keeps_admin=keeps_admin)
    password_hash = None
    if password is not None:
        try:
            check_password_policy(password)
        except ValueError as error:
            raise AccountError(str(error)) from error
        password_hash = hash_password(password)
    repository.update_user(
        username,
        password_hash=password_hash,
        roles=role_set,
        disabled=disabled,
        display_name=display_name,
        institutions=institutions,
        issuers_of_patient_id=issuers_of_patient_id,
    )
    if role_set is not None or disabled or password_hash is not None:
        repository.delete_user_sessions(user.pk)
    return _existing(repository, username)


def reset_mfa(repository: UserRepository, username: str) -> UserRow:
    """Forget the user's TOTP enrolment (lost phone): they enrol again at next login."""
    user = _existing(repository, username)
    repository.set_totp(username, None)
    repository.delete_user_sessions(user.pk)
    return _existing(repository, username)
