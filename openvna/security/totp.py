"""Time-based one-time passwords (RFC 6238) for multi-factor login, through pyotp.

Six digits, HMAC-SHA1, 30-second steps: what every authenticator app understands.
A code is accepted for the current step and one step either side (RFC 6238 section
5.2 allows for clock drift and transmission delay), and only once: the step of the
last accepted code is stored (``users.totp_last_step``) and a code of that step or an
earlier one is refused, so a code seen over a shoulder or in a log cannot be replayed.
"""

from __future__ import annotations

import hmac

import pyotp

STEP_SECONDS = 30
DIGITS = 6
WINDOW = 1
"""Steps accepted either side of the current one."""
ISSUER = "OpenVNA"


def new_secret() -> str:
    """A random base32 secret of 160 bits (RFC 4226 section 4 recommends 160)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, username: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app reads (as a QR code or text)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=issuer
    )


def code_at(secret: str, step: int) -> str:
    """The code of time step ``step`` (``unix time // 30``)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step)


def current_step(now: float) -> int:
    return int(now // STEP_SECONDS)


def normalise(code: str) -> str | None:
    """The code without spaces, or None when it cannot be a code (not six digits)."""
    compact = "".join(code.split())
    if len(compact) != DIGITS or not compact.isascii() or not compact.isdigit():
        return None
    return compact


def matching_step(secret: str, code: str, now: float, last_step: int | None) -> int | None:
    """The time step whose code ``code`` is, within the window and after ``last_step``;
    None when it matches no such step.

    Every step of the window is compared (in constant time) even after a match, so the
    answer takes as long whether the code was right or not.
    """
    compact = normalise(code)
    if compact is None:
        return None
    now_step = current_step(now)
    matched: int | None = None
    for step in range(now_step - WINDOW, now_step + WINDOW + 1):
        if hmac.compare_digest(code_at(secret, step), compact) and matched is None:
            matched = step
    if matched is None or (last_step is not None and matched <= last_step):
        return None
    return matched
