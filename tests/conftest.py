"""Shared fixtures: synthetic samples, a real archive process, real dcmtk tools.

Integration tests start ``openvna serve`` as a subprocess on free loopback ports and
talk to it with dcmtk's command-line tools. A missing tool fails the test under CI
(``CI=true``) and skips it with the reason on a developer machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openvna.sample import GeneratedStudy, generate_samples

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str) -> str:
    """The dcmtk program ``name``; never pynetdicom's same-named apps in the venv's bin."""
    venv_bin = str(Path(sys.executable).parent)
    search = os.pathsep.join(
        directory
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if directory and Path(directory).resolve() != Path(venv_bin).resolve()
    )
    path = shutil.which(name, path=search)
    if path is None:
        message = f"{name} is not installed (make test installs dcmtk)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


POSTGRES_ADMIN_URL = os.environ.get(
    "OPENVNA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""A PostgreSQL server where tests may create and drop databases (CI has one)."""


@contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; yields its SQLAlchemy URL.

    Fails under CI when PostgreSQL is unreachable, skips with the reason elsewhere.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"openvna_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true or fail after ``timeout`` seconds (no blind sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_tool(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool with TCP_NODELAY (as the reference benchmark does)."""
    program = require_tool(args[0])
    result = subprocess.run(
        [program, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=DCMTK_ENV,
        errors="replace",
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def stored_object_files(data_dir: Path) -> dict[str, Path]:
    """Every stored object under ``data_dir/storage``, keyed by storage key.

    Leaves out the temp folder and the storage's lock file (``.lock``), which hold no
    instance.
    """
    root = data_dir / "storage"
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] == "tmp" or relative.name == ".lock" or not path.is_file():
            continue
        files[relative.as_posix()] = path
    return files


def openvna_command() -> list[str]:
    return [sys.executable, "-m", "openvna.cli.main"]


@dataclass
class ArchiveProcess:
    """A running ``openvna serve`` subprocess."""

    data_dir: Path
    port: int
    ae_title: str
    process: subprocess.Popen[bytes] | None
    log_path: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    http_port: int = field(default_factory=lambda: free_port())

    @property
    def address(self) -> list[str]:
        return ["127.0.0.1", str(self.port)]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def echo_ok(self) -> bool:
        result = subprocess.run(
            [require_tool("echoscu"), "-to", "2", "-aec", self.ae_title, *self.address],
            capture_output=True,
            env=DCMTK_ENV,
        )
        return result.returncode == 0

    def start(self) -> None:
        require_tool("echoscu")
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                *openvna_command(),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--dicom-port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                "--aet",
                self.ae_title,
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env or os.environ.copy(),
        )
        wait_until(lambda: self._exited() or self.echo_ok(), 60, "archive to answer C-ECHO")
        if self._exited():
            raise AssertionError(f"archive exited at start:\n{self.log_path.read_text()}")

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the durability tests' crash)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*openvna_command(), *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"openvna {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result


@contextmanager
def archive_for_module(
    tmp_path_factory: pytest.TempPathFactory, name: str, *extra_args: str
) -> Iterator[ArchiveProcess]:
    """An archive shared by the tests of one module (started once: they only read)."""
    directory = tmp_path_factory.mktemp(name)
    archive = ArchiveProcess(
        directory / "data", free_port(), "OPENVNA", None, directory / "log", extra_args
    )
    archive.start()
    try:
        yield archive
    finally:
        archive.stop()


@pytest.fixture(scope="session")
def sample_studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[GeneratedStudy]]:
    """Small synthetic studies (CT, MR, CR/DX, US cine) of several patients and years."""
    out = tmp_path_factory.mktemp("samples")
    return out, generate_samples(out, seed=7, patients=4, small=True)


@pytest.fixture
def start_archive(tmp_path: Path) -> Iterator[Callable[..., ArchiveProcess]]:
    """Factory: start an archive (optionally with extra ``serve`` args or env)."""
    started: list[ArchiveProcess] = []

    def start(
        *extra_args: str, data_dir: Path | None = None, env: dict[str, str] | None = None
    ) -> ArchiveProcess:
        directory = data_dir or tmp_path / f"archive{len(started)}"
        archive = ArchiveProcess(
            directory,
            free_port(),
            "OPENVNA",
            None,
            tmp_path / f"archive{len(started)}.log",
            tuple(extra_args),
            env,
        )
        archive.start()
        started.append(archive)
        return archive

    yield start
    for archive in started:
        archive.stop()


@pytest.fixture
def archive(start_archive: Callable[..., ArchiveProcess]) -> ArchiveProcess:
    return start_archive()


@dataclass
class StoreSCP:
    """dcmtk storescp receiving C-MOVE sub-operations."""

    ae_title: str
    port: int
    out_dir: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    require_tool("storescp")
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [require_tool("storescp"), "-aet", "MOVESCP", "-od", str(out), "+B", "+xa", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 20, "storescp to listen")
    yield StoreSCP("MOVESCP", port, out, process)
    process.terminate()
    process.wait(timeout=10)


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part 10 file (after preamble and File Meta)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as handle:
        read_preamble(handle, force=False)
        _read_file_meta_info(handle)
        return handle.read()
