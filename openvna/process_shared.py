"""A small table in memory that every process of one ``openvna serve`` shares.

``openvna serve`` forks DIMSE and HTTP worker processes that accept on the same sockets
(:mod:`openvna.dimse.workers`), so a limit kept in one process's memory would let a
client have it once per process. The hard limits per client (requests per minute,
associations per host; :mod:`openvna.web.limits`, :mod:`openvna.dimse.limits`) therefore
keep their counters here: an anonymous ``MAP_SHARED`` mapping and a process-shared lock,
both made when the module that owns the table is imported, which the composition root
does before it forks, so every worker inherits the same memory.

Keys are 64-bit hashes of a text (a data folder and a client address); each slot holds
a few float fields. Lookups probe a short window after the hash, so the table never
grows: when the window is full of slots still in use the caller is told (``None``) and
decides whether to fail open or closed. Several archives started in one Python process
(tests) keep apart because their keys name their data folders.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PROBE_WINDOW = 32
"""Slots looked at for one key: a full window means the table is saturated there."""

LOCK_TIMEOUT = 0.25
"""Seconds to wait for the lock; a holder that died while holding it cannot stall
every request of every process (the caller then fails open)."""


def table_key(text: str) -> int:
    """A stable non-zero 64-bit key (Python's ``hash`` is seeded per interpreter)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class SharedTable:
    """Fixed-size open-addressing table of ``fields`` floats per key, shared across forks.

    Every read and write must happen inside ``with table.locked() as held:`` and only
    when ``held`` is true.
    """

    def __init__(self, slots: int, fields: int) -> None:
        self.slots = slots
        self.fields = fields
        # mmap(-1, ...) is anonymous and MAP_SHARED: children of a fork see our writes.
        self._memory = mmap.mmap(-1, slots * 8 * (1 + fields))
        view = memoryview(self._memory)
        self._keys = view[: slots * 8].cast("Q")
        self._values = view[slots * 8 :].cast("d")
        self._lock = multiprocessing.get_context("fork").Lock()

    @contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the table's lock; yields False when it could not be had in time."""
        held = self._lock.acquire(timeout=LOCK_TIMEOUT)
        try:
            yield held
        finally:
            if held:
                self._lock.release()

    def find(self, key: int) -> int | None:
        """The slot holding ``key``, or None."""
        start = key % self.slots
        for step in range(PROBE_WINDOW):
            slot = (start + step) % self.slots
            if self._keys[slot] == key:
                return slot
        return None

    def claim(self, key: int, reusable: Callable[[int], bool]) -> int | None:
        """The slot holding ``key``, or a fresh one (fields zeroed) for it.

        A slot is free when empty or when ``reusable(slot)`` says its record carries no
        information any more (an idle bucket, a zero count). None: the window is full.
        """
        start = key % self.slots
        free: int | None = None
        for step in range(PROBE_WINDOW):
            slot = (start + step) % self.slots
            stored = self._keys[slot]
            if stored == key:
                return slot
            if free is None and (stored == 0 or reusable(slot)):
                free = slot
        if free is None:
            return None
        self._keys[free] = key
        for field in range(self.fields):
            self.set(free, field, 0.0)
        return free

    def get(self, slot: int, field: int) -> float:
        return float(self._values[slot * self.fields + field])

    def set(self, slot: int, field: int, value: float) -> None:
        self._values[slot * self.fields + field] = value


__all__ = ["LOCK_TIMEOUT", "PROBE_WINDOW", "SharedTable", "table_key"]
