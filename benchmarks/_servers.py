"""The archives the benchmarks measure, run as subprocesses on fresh, empty storage.

:class:`ServerProcess` starts a server in a new storage folder on free loopback ports,
waits until its :meth:`~ServerProcess.ready` hook says it answers, and stops it.
:class:`OpenVnaProcess` and :class:`OrthancProcess` know how to start OpenVNA and
Orthanc; each benchmark adds how it checks that a server is ready (C-ECHO, an HTTP
request) and what it needs configured besides (a C-MOVE destination, the DICOMweb
plugin). Also here: installing Orthanc from Debian's packages, and the small process
helpers both benchmarks use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from rich.console import Console

ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
DCMTK_ENV: Final = {**os.environ, "TCP_NODELAY": "1"}
"""The environment of the dcmtk tools and of the servers: dcmtk only disables Nagle's
algorithm when ``TCP_NODELAY`` is set."""

console = Console()


class BenchError(RuntimeError):
    """A measurement could not be completed or gave a wrong result."""


def last_lines(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------
# A server process on fresh storage
# ---------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """An archive started as a subprocess with empty storage under ``workdir``.

    Subclasses say how to start it (:meth:`command`, after :meth:`prepare` has set up
    the storage folder) and when it is up (:meth:`ready`). Every :meth:`start` stops the
    previous process, removes its storage and picks new ports.
    """

    name: str
    ae_title: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    dicom_port: int = field(default=0, init=False)
    http_port: int = field(default=0, init=False)
    starts: int = field(default=0, init=False)
    log_path: Path | None = field(default=None, init=False)

    def command(self, storage: Path) -> list[str]:
        """The command line that starts the server on ``storage``."""
        raise NotImplementedError

    def prepare(self, storage: Path) -> None:
        """Set up the fresh storage directory before the server starts."""

    def ready(self) -> bool:
        """Whether the server answers yet (called until it does, or it exits)."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"{self.name} is not running")
        return self.process.pid

    def start(self) -> None:
        """Start on fresh, empty storage and wait until it is :meth:`ready`."""
        self.stop()
        self.starts += 1
        storage = self.workdir / f"{self.name.lower()}-{self.starts}"
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir(parents=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        self.prepare(storage)
        self.log_path = log_path = storage.with_suffix(".log")
        with open(log_path, "wb") as log:
            self.process = process = subprocess.Popen(
                self.command(storage),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=DCMTK_ENV,
                cwd=storage,
            )
        wait_until(lambda: process.poll() is not None or self.ready(), 120, self.name)
        if process.poll() is not None:
            raise BenchError(f"{self.name} exited at start:\n{last_lines(log_path.read_text())}")

    def stop(self) -> None:
        """Stop the server and remove every storage folder it had."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        for old in self.workdir.glob(f"{self.name.lower()}-*"):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)


S = TypeVar("S", bound=ServerProcess)


# ---------------------------------------------------------------------------
# OpenVNA
# ---------------------------------------------------------------------------


@dataclass
class OpenVnaProcess(ServerProcess):
    """``openvna serve`` with its data folder in the fresh storage."""

    executable: list[str] = field(default_factory=list)

    def data_dir(self, storage: Path) -> Path:
        return storage / "data"

    def command(self, storage: Path) -> list[str]:
        return [
            *self.executable,
            "serve",
            "--data-dir",
            str(self.data_dir(storage)),
            "--dicom-port",
            str(self.dicom_port),
            "--http-port",
            str(self.http_port),
            "--aet",
            self.ae_title,
            "--stable-after",
            "3600",
        ]


def openvna_executable(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    venv = ROOT / ".venv" / "bin" / "openvna"
    if venv.is_file():
        return [str(venv)]
    return [sys.executable, "-m", "openvna.cli.main"]


# ---------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------


@dataclass
class OrthancProcess(ServerProcess):
    """``Orthanc orthanc.json`` with a configuration written into the fresh storage."""

    binary: str = "Orthanc"

    def command(self, storage: Path) -> list[str]:
        return [self.binary, str(storage / "orthanc.json")]

    def config(self, storage: Path) -> dict[str, Any]:
        """Orthanc's defaults, plus what every benchmark needs; subclasses add to it.

        Its own storage and index, these ports and AE title, no plugins, no
        authentication, loopback only, any SCU may C-ECHO and C-STORE, and a
        ``StableAge`` of an hour (no stable-study work while a benchmark measures).
        """
        return {
            "StorageDirectory": str(storage / "storage"),
            "IndexDirectory": str(storage / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StableAge": 3600,
            "SaveJobs": False,
            "OverwriteInstances": False,
        }

    def prepare(self, storage: Path) -> None:
        config = json.dumps(self.config(storage), indent=2)
        (storage / "orthanc.json").write_text(config, encoding="utf-8")


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None
    )


def install_orthanc(packages: Sequence[str]) -> None:
    """Install Debian's Orthanc ``packages`` (as root, with apt-get).

    The ``orthanc`` package's post-install script may start a system Orthanc service;
    it is stopped at once (the benchmarks run their own Orthanc with a generated config).
    """
    names = " ".join(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(f"Orthanc is not installed (apt-get install {names}, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    plural = "s" if len(packages) > 1 else ""
    with console.status(f"installing Debian's {' and '.join(packages)} package{plural}…"):
        result = subprocess.run(install, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
            result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise BenchError(f"apt-get install {names} failed:\n{last_lines(result.stderr)}")
    _stop_system_orthanc()


def ensure_orthanc() -> str:
    """The Orthanc binary, installing Debian's ``orthanc`` package if it is missing."""
    binary = orthanc_binary()
    if binary is None:
        install_orthanc(["orthanc"])
        binary = orthanc_binary()
    if binary is None:
        raise BenchError("the orthanc package is installed but the Orthanc binary is missing")
    return binary


def _stop_system_orthanc() -> None:
    """Stop the service the package may have started (no systemd: SysV ``service``)."""
    if shutil.which("service"):
        subprocess.run(["service", "orthanc", "stop"], capture_output=True, check=False)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # Only the packaged service: Orthanc run with the package's /etc/orthanc config.
        if command and command[0].endswith(b"Orthanc") and b"/etc/orthanc" in b" ".join(command):
            with suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGTERM)


def orthanc_version(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).strip().splitlines()
    words = lines[0].split() if lines else []  # "/usr/sbin/Orthanc 1.10.1"
    return words[-1] if words else "?"


# ---------------------------------------------------------------------------
# Running the measurements against each server
# ---------------------------------------------------------------------------


@contextmanager
def work_directory(explicit: Path | None, prefix: str) -> Iterator[Path]:
    """``explicit`` (kept afterwards), or a temporary directory removed at the end."""
    workdir = explicit or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    finally:
        if explicit is None:
            shutil.rmtree(workdir, ignore_errors=True)


def measure_each(
    servers: Sequence[S], suite: Callable[[S], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``suite``'s results for each server in turn (by name); each is stopped after it."""
    results: dict[str, dict[str, Any]] = {}
    for server in servers:
        console.rule(server.name)
        try:
            results[server.name] = suite(server)
        finally:
            server.stop()
    return results
