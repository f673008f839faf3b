"""The embedded AI worker: one niced process that takes jobs from the index and runs
each attempt in a forked child it can kill.

Why a separate process, and a child per attempt:

* ingest keeps its speed: the worker runs under Linux's SCHED_IDLE policy
  (``ai.idle_priority``, else at niceness ``ai.nice``), so on a busy machine the kernel
  gives DIMSE and HTTP processes the CPU first, and model code never holds the GIL of a
  process that serves clients;
* a model that hangs, leaks or crashes (a segfault in a native runtime) takes down only
  its child: timeouts and the stop switch are a SIGKILL, not a polite request;
* memory is returned to the system when each attempt ends.

The worker itself only polls the index (every ``ai.poll_interval`` seconds), claims due
jobs within the global (``ai.workers``), per-model (``max_concurrency``) and GPU
(``ai.gpu_slots``) limits, and watches its children. It never imports model code, so it
stays small; children are forked from it warm (numpy, pydicom, highdicom loaded).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openvna.ai.manifest import Device, ModelManifest, RuntimeKind
from openvna.ai.registry import ModelRegistry, load_registry
from openvna.ai.task import execute_job, missing_model, record_failure
from openvna.ai.workitems import report_workitem
from openvna.config import Settings
from openvna.dimse.workers import die_with_parent
from openvna.index.ai_repository import (
    GLOBAL_SWITCH,
    WORKER_STATE,
    AiRepository,
    JobRow,
    ModelState,
)
from openvna.index.database import create_index_engine
from openvna.index.repository import IndexRepository
from openvna.ups.service import WorkitemService

logger = logging.getLogger(__name__)

_PURGE_EVERY = 3600.0
_HEARTBEAT_EVERY = 1.0


def gpu_count(devices: Path = Path("/dev")) -> int:
    """NVIDIA GPUs present: the ``nvidiaN`` device nodes (not ``nvidiactl``,
    ``nvidia-uvm`` and the like, which every driver install has)."""
    return sum(1 for node in devices.glob("nvidia*") if node.name.removeprefix("nvidia").isdigit())


@dataclass
class _Child:
    pid: int
    job: JobRow
    manifest: ModelManifest
    deadline: float
    on_gpu: bool


class AiWorker:
    """The loop of the AI worker process (see the module docstring)."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else load_registry(settings)
        self.engine = create_index_engine(
            settings.index_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        self.repository = AiRepository(self.engine)
        self.workitems = WorkitemService(self.engine)
        self.host = socket.gethostname()
        self.name = f"{self.host}:{os.getpid()}"
        gpus = gpu_count()
        self.gpu_slots = settings.ai.gpu_slots if settings.ai.gpu_slots is not None else gpus
        self.gpu_available = gpus > 0
        self.children: dict[int, _Child] = {}
        self._last_purge = 0.0
        self._last_heartbeat = 0.0
        self._started = time.time()

    def heartbeat(self, now: float) -> None:
        """Say in the index that this worker lives and what it runs: every HTTP process
        (and every node) answers ``GET /api/ai/models`` from it."""
        IndexRepository(self.engine).set_state(
            WORKER_STATE,
            json.dumps(
                {
                    "name": self.name,
                    "pid": os.getpid(),
                    "startedAt": self._started,
                    "heartbeatAt": now,
                    "running": [child.job.job_uid for child in self.children.values()],
                    "gpuSlots": self.gpu_slots,
                }
            ),
        )

    # -- the loop ----------------------------------------------------------------------------
    def serve(self, should_stop: Callable[[], bool]) -> None:
        with contextlib.suppress(OSError):
            os.nice(self.settings.ai.nice)
        cpus = ai_cpus(self.settings.ai.cpus)
        if cpus:
            with contextlib.suppress(OSError):  # children inherit the affinity
                os.sched_setaffinity(0, cpus)
        if self.settings.ai.idle_priority and hasattr(os, "SCHED_IDLE"):
            with contextlib.suppress(OSError):  # children inherit the policy
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        _warm_imports()
        self.recover()
        logger.info(
            "AI worker %s: %d model(s), %d slot(s), %d GPU slot(s)",
            self.name,
            len(self.registry),
            self.settings.ai.workers,
            self.gpu_slots,
        )
        try:
            while not should_stop():
                self.tick()
                time.sleep(self.settings.ai.poll_interval)
        finally:
            self.shutdown()

    def tick(self) -> None:
        self.reap()
        self.enforce()
        self.claim()
        now = time.time()
        if now - self._last_heartbeat >= _HEARTBEAT_EVERY:
            self._last_heartbeat = now
            self.heartbeat(now)
        if now - self._last_purge > _PURGE_EVERY:
            self._last_purge = now
            removed = self.repository.purge_before(now - self.settings.ai.retention_days * 86400.0)
            if removed:
                logger.info("AI provenance retention: %d run record(s) removed", removed)

    def recover(self) -> None:
        """Jobs a previous worker on this host left running (it was killed): their
        attempt failed; they retry like any transient failure."""
        for job in self.repository.running_on(f"{self.host}:"):
            if job.worker != self.name:
                record_failure(
                    self.engine,
                    job,
                    None,
                    "the AI worker stopped during the attempt",
                    transient=True,
                    retry_backoff=0.0,
                )

    def shutdown(self) -> None:
        """Archive shutting down: kill running attempts; they are requeued for the
        next start."""
        for child in list(self.children.values()):
            self._kill(child)
            record_failure(
                self.engine,
                child.job,
                None,
                "the archive shut down during the attempt",
                transient=True,
                retry_backoff=0.0,
            )
        self.children.clear()
        self.engine.dispose()

    # -- children ----------------------------------------------------------------------------
    def reap(self) -> None:
        for pid, child in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            del self.children[pid]
            state = self.repository.job_states([child.job.pk]).get(child.job.pk)
            if state == "running":  # the child died before recording an outcome
                record_failure(
                    self.engine,
                    child.job,
                    None,
                    _death_reason(status),
                    transient=True,
                    retry_backoff=self.settings.ai.retry_backoff,
                )

    def enforce(self) -> None:
        """Timeouts, cancellations and the stop switch, for running attempts."""
        if not self.children:
            return
        states = self.repository.job_states([child.job.pk for child in self.children.values()])
        switches = self.repository.model_states()
        now = time.monotonic()
        for pid, child in list(self.children.items()):
            stopped = _stopped(switches, child.manifest.name)
            if states.get(child.job.pk) == "cancelled" or stopped is not None:
                self._kill(child)
                del self.children[pid]
                reason = stopped or "cancelled"
                if states.get(child.job.pk) != "cancelled":
                    with self.engine.begin() as connection:
                        self.repository.set_job(
                            connection,
                            child.job.pk,
                            state="cancelled",
                            error=reason,
                            finished_at=time.time(),
                        )
                record_failure(
                    self.engine, child.job, None, reason, transient=False, final_status="cancelled"
                )
            elif now > child.deadline:
                self._kill(child)
                del self.children[pid]
                timeout = child.manifest.resources.timeout_seconds
                record_failure(
                    self.engine,
                    child.job,
                    None,
                    f"ModelTimeoutError: no result within {timeout:g} s (killed)",
                    transient=True,
                    retry_backoff=self.settings.ai.retry_backoff,
                )

    def claim(self) -> None:
        free = self.settings.ai.workers - len(self.children)
        if free <= 0:
            return
        switches = self.repository.model_states()
        if _stopped(switches, GLOBAL_SWITCH) is not None:
            return
        running_per_model: dict[str, int] = {}
        for child in self.children.values():
            running_per_model[child.manifest.name] = (
                running_per_model.get(child.manifest.name, 0) + 1
            )
        gpu_busy = sum(1 for child in self.children.values() if child.on_gpu)
        for job in self.repository.due_jobs(time.time(), limit=50):
            if free <= 0:
                break
            manifest = self.registry.models.get(job.model_name)
            if manifest is None or manifest.version != job.model_version:
                self._fail_unstartable(job, str(missing_model(job)))
                continue
            if manifest.runtime.kind is RuntimeKind.EXTERNAL:
                continue  # an outside engine claims it over UPS-RS
            if _stopped(switches, manifest.name) is not None:
                continue
            if running_per_model.get(manifest.name, 0) >= manifest.resources.max_concurrency:
                continue
            on_gpu = False
            if manifest.resources.device is Device.GPU:
                if self.gpu_slots == 0:
                    self._fail_unstartable(job, "the model needs a GPU and this host has none")
                    continue
                if gpu_busy >= self.gpu_slots:
                    continue
                on_gpu = True
            elif manifest.resources.device is Device.AUTO and gpu_busy < self.gpu_slots:
                on_gpu = True
            if not self._claim_one(job):
                continue
            claimed = self.repository.job(pk=job.pk)
            assert claimed is not None
            self._fork(claimed, manifest, on_gpu)
            free -= 1
            gpu_busy += int(on_gpu)
            running_per_model[manifest.name] = running_per_model.get(manifest.name, 0) + 1

    def _claim_one(self, job: JobRow) -> bool:
        with self.engine.begin() as connection:
            if not self.repository.claim(connection, job.pk, self.name, time.time()):
                return False
        if job.attempts == 0:  # later attempts: the workitem is IN PROGRESS already
            report_workitem(self.engine, job_uid=job.job_uid, state="IN PROGRESS")
        return True

    def _fail_unstartable(self, job: JobRow, message: str) -> None:
        with self.engine.begin() as connection:
            if not self.repository.claim(connection, job.pk, self.name, time.time()):
                return
        record_failure(self.engine, job, None, message, transient=False)

    def _fork(self, job: JobRow, manifest: ModelManifest, on_gpu: bool) -> None:
        worker_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                die_with_parent(worker_pid)  # a killed worker leaves no attempt running
                self.engine.dispose(close=False)  # the parent's connections stay the parent's
                _limit_memory(manifest.resources.memory_mb)
                if not on_gpu:
                    os.environ["CUDA_VISIBLE_DEVICES"] = ""
                _run_attempt(self.settings, job, manifest, on_gpu)
            except BaseException:
                logger.exception("AI job %s: attempt process failed", job.job_uid)
                code = 70
            finally:
                logging.shutdown()
                os._exit(code)
        deadline = time.monotonic() + manifest.resources.timeout_seconds
        self.children[pid] = _Child(pid, job, manifest, deadline, on_gpu)
        logger.info(
            "AI job %s: %s on series %s (attempt %d, pid %d)",
            job.job_uid,
            manifest.name,
            job.series_instance_uid,
            job.attempts,
            pid,
        )

    @staticmethod
    def _kill(child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)


def _run_attempt(settings: Settings, job: JobRow, manifest: ModelManifest, on_gpu: bool) -> None:
    from openvna.app import open_archive

    archive, executor = open_archive(settings, migrate=False)
    try:
        execute_job(archive, job, manifest, gpu_available=on_gpu)
    finally:
        executor.shutdown(wait=True)
        archive.close()


def ai_cpus(configured: list[int] | None) -> set[int]:
    """The CPUs AI may use: ``ai.cpus``, or all this process may use but the lowest
    numbered one when there are several (empty: leave the affinity alone).

    SCHED_IDLE alone keeps AI off a CPU that ingest wants, but not out of the caches and
    memory bandwidth they share: with every CPU busy with AI, ingest lost 6 to 17 % of its
    speed on 2 cores; with one CPU kept free of AI, 4 to 6 %.
    """
    if not hasattr(os, "sched_getaffinity"):
        return set()
    available = os.sched_getaffinity(0)
    if configured:
        return set(configured) & available or available
    if len(available) > 1:
        return available - {min(available)}
    return set()


def _stopped(switches: dict[str, ModelState], name: str) -> str | None:
    """Why ``name`` (or all AI) is stopped, or None."""
    for key in (GLOBAL_SWITCH, name):
        state = switches.get(key)
        if state is not None and not state.enabled:
            who = state.changed_by or "unknown"
            reason = state.reason
            scope = "AI" if key == GLOBAL_SWITCH else f"model {name}"
            return f"{scope} stopped by {who}" + (f": {reason}" if reason else "")
    return None


def _death_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        hint = " (out of memory?)" if number == signal.SIGKILL else ""
        return f"the attempt's process died from {name}{hint}"
    return f"the attempt's process exited with status {os.WEXITSTATUS(status)} without a result"


def _limit_memory(memory_mb: int) -> None:
    """Cap the attempt's address space at what it has now plus ``memory_mb``: a model
    that runs away gets MemoryError instead of the host's OOM killer."""
    try:
        with open("/proc/self/statm") as statm:
            current_pages = int(statm.read().split()[0])
        current = current_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    limit = current + memory_mb * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _warm_imports() -> None:
    """Load what every attempt needs before forking, so each child starts warm."""
    with contextlib.suppress(ImportError):
        import scipy.ndimage  # noqa: F401

        from openvna.ai import preprocess, volume  # noqa: F401
        from openvna.ai.results.fhir import diagnostic_report  # noqa: F401
        from openvna.ai.results.warmup import warm_up_result_writers

        warm_up_result_writers()


def run_worker_process(settings: Settings, archive_pid: int | None = None) -> None:
    """Body of the AI worker process (until SIGTERM); dies with the archive's process
    (``archive_pid``, the process that started it)."""
    die_with_parent(archive_pid)
    if not logging.getLogger().handlers:  # a spawned interpreter: log like the server
        logging.basicConfig(level=logging.INFO, format="%(asctime)s AI %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    stopping = {"now": False}

    def stop(*_: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    AiWorker(settings).serve(lambda: stopping["now"])
