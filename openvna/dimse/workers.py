"""Several DIMSE processes on one listening socket, so associations use every core.

pynetdicom runs each association in Python threads, so one process is bound by the GIL
(a bare pynetdicom SCP is slower on four associations than on one). ``openvna serve``
therefore binds the DIMSE socket once, then forks worker processes that accept on it
beside the main process. Each process has its own index connections and storage handle;
the index and the storage's durability order make concurrent writers safe.

The kernel wakes every process when a connection arrives; :class:`AcceptBalancer` lets
only the least busy one accept it, so four associations land on four processes rather
than where a hash puts them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from openvna.net import listening_socket

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_DEFER_AT_MOST = 0.05
"""Seconds a process leaves a waiting connection to a less busy sibling before taking it."""


class AcceptBalancer:
    """Active-association counts of every DIMSE process, in memory shared across forks."""

    def __init__(self, processes: int) -> None:
        self._loads: Any = multiprocessing.get_context("fork").RawArray("i", processes)
        self.slot = 0
        self._deferred_since: float | None = None

    def should_accept(self, my_load: int) -> bool:
        """Publish this process's load; accept only if no sibling is less busy (or waited)."""
        loads = self._loads
        loads[self.slot] = my_load
        least = min(loads[index] for index in range(len(loads)))
        first_least = next(index for index in range(len(loads)) if loads[index] == least)
        now = time.monotonic()
        if first_least == self.slot:
            self._deferred_since = None
            return True
        if self._deferred_since is None:
            self._deferred_since = now
        if now - self._deferred_since > _DEFER_AT_MOST:  # sibling stuck or gone: take it
            self._deferred_since = None
            return True
        return False

    def accepted(self, my_load: int) -> None:
        self._loads[self.slot] = my_load
        self._deferred_since = None


def dimse_listening_socket(host: str, port: int) -> socket.socket:
    """The DIMSE socket shared by every DIMSE process; non-blocking, so that a process
    woken for a connection a sibling took returns to its select loop instead of blocking."""
    return listening_socket(host, port, blocking=False)


def fork_workers(count: int, run_worker: Callable[[int], None]) -> list[int]:
    """Fork ``count`` processes running ``run_worker(slot)`` (slots 1..count).

    Must be called while the process has a single thread. Children die with the parent
    (PR_SET_PDEATHSIG), so a killed server never leaves DIMSE workers holding the port.
    """
    if threading.active_count() != 1:
        raise RuntimeError("worker processes must be forked before any thread starts")
    pids = []
    parent = os.getpid()
    for slot in range(1, count + 1):
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                die_with_parent(parent)
                run_worker(slot)
            except BaseException:
                logger.exception("worker process %d failed", slot)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        pids.append(pid)
    return pids


def stop_workers(pids: list[int], timeout: float = 30.0) -> None:
    """SIGTERM every worker, wait for them, SIGKILL what is left after ``timeout``."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    remaining = set(pids)
    while remaining and time.monotonic() < deadline:
        for pid in list(remaining):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                remaining.discard(pid)
        time.sleep(0.05)
    for pid in remaining:
        _signal(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux).

    ``parent``: the pid the parent had before the fork. Without it the parent is read
    now, which misses a parent that died between the fork and this call.
    """
    parent = os.getppid() if parent is None else parent
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: fall back to the check below only
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
