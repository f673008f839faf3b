"""Keeps the AI worker process running for the life of the archive.

The worker is started with the ``spawn`` method (a fresh interpreter), not forked: the
archive's main process has threads by the time a restart is needed, and forking a
threaded process can copy a lock in its held state. A thread checks every few seconds
that the worker lives and starts a new one when it died (the kernel's OOM killer, a
crash in native code, a stray ``kill``); the new worker requeues the attempts its
predecessor left running (:meth:`AiWorker.recover`). Restarts back off up to a minute so
a worker that cannot start does not spin.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from multiprocessing.process import BaseProcess

from openvna.ai.worker import run_worker_process
from openvna.config import Settings

logger = logging.getLogger(__name__)

_CHECK_EVERY = 2.0
_MAX_BACKOFF = 60.0


class AiSupervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="openvna-ai-supervisor", daemon=True
        )
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the worker (it requeues its running attempts) and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(5)

    def _spawn(self) -> None:
        process = self._context.Process(
            target=run_worker_process,
            args=(self._settings, os.getpid()),
            name="openvna-ai-worker",
            daemon=True,
        )
        process.start()
        self._process = process
        logger.info("AI worker started (pid %s)", process.pid)

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stop.wait(_CHECK_EVERY):
            process = self._process
            if process is None or process.is_alive():
                backoff = 1.0
                continue
            logger.error(
                "AI worker (pid %s) exited with %s; starting a new one in %.0f s",
                process.pid,
                process.exitcode,
                backoff,
            )
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, _MAX_BACKOFF)
            self.restarts += 1
            self._spawn()
