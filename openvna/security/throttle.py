"""Login throttling: at most ``security.limits.login_attempts_per_minute`` password
attempts per user name and per client address in any sliding minute.

An attempt is counted *before* the password is checked (so a burst of parallel guesses
cannot all slip through while the first hash is computed) and refunded when it
succeeds, so that a person who types the password right is never slowed down by their
own logins. The counters live in the index, shared by every server process and node;
within a process a lock makes check-and-count one step.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from openvna.index.user_repository import UserRepository

WINDOW_SECONDS = 60.0
PURGE_INTERVAL = 60.0


def throttle_keys(username: str, address: str) -> tuple[str, ...]:
    """Index keys of the counters for this user name and this address (hashed: the
    names stay short and no user name is written outside the users table)."""
    keys = []
    for kind, value in (("user", username.strip().lower()), ("addr", address)):
        keys.append(hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:40])
    return tuple(keys)


@dataclass(frozen=True)
class Admission:
    """The throttle's answer: ``allowed``, or wait ``retry_after`` seconds."""

    allowed: bool
    retry_after: int
    stamp: float
    keys: tuple[str, ...]


class LoginThrottle:
    def __init__(
        self,
        repository: UserRepository,
        attempts_per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.limit = attempts_per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._purged_at = 0.0

    def admit(self, username: str, address: str) -> Admission:
        """Count an attempt unless the user name or the address is over the limit."""
        keys = throttle_keys(username, address)
        with self._lock:
            now = self._clock()
            since = now - WINDOW_SECONDS
            recent = {
                key: sorted(t for t in times if t > since)
                for key, times in self.repository.recent_attempts(keys).items()
            }
            full = [times for times in recent.values() if len(times) >= self.limit]
            if full:
                # the slot frees when the oldest attempt that fills the limit leaves the window
                oldest = max(times[-self.limit] for times in full)
                wait = max(1, math.ceil(oldest + WINDOW_SECONDS - now))
                return Admission(False, wait, now, keys)
            for times in recent.values():
                times.append(now)
            self.repository.store_attempts(recent)
            if now - self._purged_at >= PURGE_INTERVAL:
                self._purged_at = now
                self.repository.purge_attempts(since)
        return Admission(True, 0, now, keys)

    def refund(self, admission: Admission) -> None:
        """Forget an admitted attempt (the login succeeded)."""
        if not admission.allowed:
            return
        with self._lock:
            attempts = self.repository.recent_attempts(admission.keys)
            for times in attempts.values():
                if admission.stamp in times:
                    times.remove(admission.stamp)
            self.repository.store_attempts(attempts)
