"""Re-wrapping data keys with a new master key while servers keep running.

``openvna keys rotate`` writes a keyring with a new active key, then calls
:func:`rewrap_all`. Running servers notice the new keyring within
:data:`~openvna.security.keys.RELOAD_INTERVAL` and use the new key for new objects; an
object whose write began before that re-wraps itself after its commit
(:meth:`EncryptedStorage.after_commit`). The passes here cover everything else: the
first lists every object, later ones only the shards renamed into since the previous
pass began, until a pass that starts after the servers have surely reloaded finds
nothing left. Every step rewrites one key slot and keeps the other, so readers never
stop and an interrupted rotation leaves every object readable (run it again with
``--resume``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from openvna.errors import NotFoundError, OpenVNAError
from openvna.security.keys import RELOAD_INTERVAL
from openvna.storage.crypto import EncryptedStorage

SHARD_CLOCK_SLACK = 5.0
"""Seconds of shard mtime granularity and clock skew allowed between passes."""

Progress = Callable[[str, bool], None]
"""Called with (storage key, whether it changed) after each object."""


@dataclass
class RewrapReport:
    rewrapped: int = 0
    unchanged: int = 0
    passes: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """storage key → why its data key could not be re-wrapped."""


def rewrap_all(
    storage: EncryptedStorage,
    key_id: str,
    *,
    key_changed_at: float,
    settle: float = 2 * RELOAD_INTERVAL,
    progress: Progress | None = None,
) -> RewrapReport:
    """Wrap every object's data key with master key ``key_id``.

    ``key_changed_at`` is when the keyring naming ``key_id`` active was written: the
    final pass starts at least ``settle`` seconds later, once every server uses it.
    """
    report = RewrapReport()
    since: float | None = None
    while True:
        started = time.time()
        changed = _one_pass(
            storage, storage.iter_keys(modified_since=since), key_id, report, progress
        )
        report.passes += 1
        if changed == 0:
            ready = key_changed_at + settle
            if started >= ready:
                return report
            time.sleep(max(0.0, ready - time.time()))  # let servers reload the keyring
        since = started - SHARD_CLOCK_SLACK


def _one_pass(
    storage: EncryptedStorage,
    keys: Iterable[str],
    key_id: str,
    report: RewrapReport,
    progress: Progress | None,
) -> int:
    changed = 0
    for key in keys:
        try:
            done = storage.rewrap(key, key_id)
        except (NotFoundError, FileNotFoundError):
            continue  # deleted since it was listed
        except (OpenVNAError, OSError) as error:
            report.failed[key] = str(error)
            continue
        report.failed.pop(key, None)
        if done:
            changed += 1
            report.rewrapped += 1
        else:
            report.unchanged += 1
        if progress is not None:
            progress(key, done)
    return changed


@dataclass
class ScrubReport:
    cleared: int = 0
    not_on_active: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when no object still depends on another master key."""
        return not self.not_on_active and not self.failed


def scrub_all(
    storage: EncryptedStorage, keep: str, *, progress: Progress | None = None
) -> ScrubReport:
    """Clear every key slot wrapped by a key other than ``keep`` (before retiring the
    others): a retired key that leaks later then opens nothing."""
    report = ScrubReport()
    for key in storage.iter_keys():
        try:
            if storage.key_id_of(key) != keep:
                report.not_on_active.append(key)
                continue
            cleared = storage.scrub(key, keep)
        except (NotFoundError, FileNotFoundError):
            continue
        except (OpenVNAError, OSError) as error:
            report.failed[key] = str(error)
            continue
        report.cleared += cleared
        if progress is not None:
            progress(key, cleared)
    return report


@dataclass
class KeyCensus:
    """How many objects each master key wraps now, and the objects that cannot say."""

    by_key: Counter[str] = field(default_factory=Counter)
    unreadable: dict[str, str] = field(default_factory=dict)


def census(storage: EncryptedStorage) -> KeyCensus:
    """Objects per master key id from their headers (no key needed, nothing decrypted)."""
    result = KeyCensus()
    for key in storage.iter_keys():
        try:
            result.by_key[storage.key_id_of(key)] += 1
        except (NotFoundError, FileNotFoundError):
            continue
        except (OpenVNAError, OSError) as error:
            result.unreadable[key] = str(error)
    return result


__all__ = ["KeyCensus", "RewrapReport", "ScrubReport", "census", "rewrap_all", "scrub_all"]
