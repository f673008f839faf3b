#!/usr/bin/env python3
"""Encryption at rest benchmark: what AES-256-GCM storage costs, plain vs encrypted.

Two measurements, each once on plain storage and once with
``security.encryption.enabled`` (and a keyring made by ``openvna keys init``):

* **storage layer**, in this process: writing N CT slices through the storage
  (temp file, fsync, rename, as ingest does) and reading them back whole, so the cost
  of the cipher shows without any protocol around it;
* **end to end**, against ``openvna serve`` started as a subprocess: C-STORE of the
  study with dcmtk's ``storescu`` (ingest), then whole-study retrieval with WADO-RS
  (multipart, as stored) and with C-GET (``getscu``), the median of ``--repeats`` runs.
  The bytes retrieved are checked against the bytes sent.

It prints MB/s (wall clock) and CPU seconds per GB (this process for the storage layer,
the server's process tree end to end): on a busy machine the CPU figures are the steadier
ones. Not part of the test suite. Usage::

    python benchmarks/encryption_bench.py [--instances 240] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _servers import (
    DCMTK_ENV,
    HOST,
    BenchError,
    OpenVnaProcess,
    console,
    openvna_executable,
    work_directory,
)
from rich.table import Table

from openvna.sample import generate_ct_series
from openvna.security.keys import Keyring, KeyringProvider, write_keyring
from openvna.storage.base import Storage
from openvna.storage.crypto import EncryptedStorage
from openvna.storage.filesystem import FilesystemStorage

MB = 1_000_000
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One measurement: wall seconds and CPU seconds spent on it."""

    wall: float
    cpu: float


MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Study:
    paths: list[Path]
    study_uid: str
    total_bytes: int
    digests: set[str] = field(default_factory=set)
    """SHA-256 of each file's data set (what retrieval must give back)."""


def build_study(directory: Path, instances: int) -> Study:
    from pydicom import dcmread

    paths = generate_ct_series(directory, instances=instances, seed=11)
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    digests = {hashlib.sha256(data_set(p.read_bytes())).hexdigest() for p in paths}
    return Study(paths, study_uid, sum(p.stat().st_size for p in paths), digests)


def data_set(part10: bytes) -> bytes:
    """The bytes after the File Meta group (the archive writes its own File Meta)."""
    position = 132
    group_length = int.from_bytes(part10[position + 8 : position + 12], "little")
    return part10[position + 12 + group_length :]


# -- storage layer -------------------------------------------------------------------------


def storage_layer(study: Study, workdir: Path, encrypted: bool) -> dict[str, Sample]:
    root = workdir / ("layer-encrypted" if encrypted else "layer-plain")
    inner = FilesystemStorage(root / "storage")
    storage: Storage = inner
    if encrypted:
        keyring = root / "keys" / "keyring.json"
        write_keyring(keyring, Keyring.create())
        storage = EncryptedStorage(inner, KeyringProvider(keyring))
    contents = [p.read_bytes() for p in study.paths]
    keys: list[str] = []

    def write() -> None:
        for content in contents:
            pending = storage.begin_write()
            for offset in range(0, len(content), 1024 * 1024):  # as ingest writes
                pending.write(content[offset : offset + 1024 * 1024])
            keys.append(pending.commit().key)

    def read() -> None:
        for key, content in zip(keys, contents, strict=True):
            with storage.open(key) as handle:
                if handle.read() != content:
                    raise BenchError("storage gave back other bytes")

    try:
        return {"write": in_process(write), "read": median([in_process(read) for _ in range(3)])}
    finally:
        storage.close()


def in_process(action: Callable[[], None]) -> Sample:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return Sample(time.perf_counter() - wall, time.process_time() - cpu)


# -- end to end ----------------------------------------------------------------------------


@dataclass
class Server(OpenVnaProcess):
    encrypted: bool = False

    def prepare(self, storage: Path) -> None:
        data_dir = self.data_dir(storage)
        config = storage / "openvna.toml"
        config.write_text(
            f"[security.encryption]\nenabled = {'true' if self.encrypted else 'false'}\n",
            encoding="utf-8",
        )
        if self.encrypted:
            subprocess.run(
                [*self.executable, "keys", "init", "--data-dir", str(data_dir)],
                check=True,
                capture_output=True,
            )

    def command(self, storage: Path) -> list[str]:
        return [*super().command(storage), "--config", str(storage / "openvna.toml")]

    def ready(self) -> bool:
        result = subprocess.run(
            ["echoscu", "-to", "2", "-aec", self.ae_title, HOST, str(self.dicom_port)],
            capture_output=True,
            env=DCMTK_ENV,
        )
        return result.returncode == 0


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants (the DIMSE processes)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(child for child, (parent, _) in stats.items() if parent == current)
    return sum(stats[p][1] for p in tree if p in stats)


def timed(server: Server, action: Callable[[], None]) -> Sample:
    wall, cpu = time.perf_counter(), tree_cpu(server.pid)
    action()
    return Sample(time.perf_counter() - wall, tree_cpu(server.pid) - cpu)


def median(samples: list[Sample]) -> Sample:
    return sorted(samples, key=lambda sample: sample.wall)[len(samples) // 2]


def tool(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV)
    if result.returncode != 0:
        raise BenchError(f"{args[0]} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")


def wado_study(server: Server, study: Study) -> None:
    connection = http.client.HTTPConnection(HOST, server.http_port, timeout=600)
    connection.request(
        "GET", f"/dicom-web/studies/{study.study_uid}", headers={"Accept": MULTIPART}
    )
    response = connection.getresponse()
    body = response.read()
    connection.close()
    if response.status != 200:
        raise BenchError(f"WADO-RS answered {response.status}")
    boundary = response.getheader("Content-Type", "").split("boundary=")[1].split(";")[0]
    parts = body.split(b"--" + boundary.strip('"').encode())[1:-1]
    digests = {
        hashlib.sha256(data_set(part.partition(b"\r\n\r\n")[2][:-2])).hexdigest() for part in parts
    }
    if digests != study.digests:
        raise BenchError("WADO-RS gave back other bytes")


def c_get(server: Server, study: Study, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    tool(
        "getscu", "-S", "+B", "-aec", server.ae_title, "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
        HOST, str(server.dicom_port),
    )  # fmt: skip
    received = {hashlib.sha256(data_set(p.read_bytes())).hexdigest() for p in out.iterdir()}
    if received != study.digests:
        raise BenchError("C-GET gave back other bytes")


def end_to_end(
    study: Study, workdir: Path, encrypted: bool, repeats: int, executable: list[str]
) -> dict[str, Sample]:
    server = Server(
        "encrypted" if encrypted else "plain",
        "OPENVNA",
        workdir,
        executable=executable,
        encrypted=encrypted,
    )
    server.start()
    try:
        directory = str(study.paths[0].parent)
        command = ("storescu", "+sd", "+r", "-aec", server.ae_title, HOST)
        ingest = timed(server, lambda: tool(*command, str(server.dicom_port), directory))
        wado = median([timed(server, lambda: wado_study(server, study)) for _ in range(repeats)])
        out = workdir / "received"
        get = median([timed(server, lambda: c_get(server, study, out)) for _ in range(repeats)])
    finally:
        server.stop()
    return {"c-store": ingest, "wado-rs": wado, "c-get": get}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=240, help="CT slices (0.53 MB each)")
    parser.add_argument("--repeats", type=int, default=3, help="retrieval runs (median)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files there")
    parser.add_argument("--openvna", default=None, help="the openvna executable")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Sample]] = {}
    with work_directory(args.workdir, "openvna-encryption-bench-") as workdir:
        with console.status("generating the CT study…"):
            study = build_study(workdir / "study", args.instances)
        executable = openvna_executable(args.openvna)
        for encrypted in (False, True):
            name = "encrypted" if encrypted else "plain"
            console.rule(name)
            with console.status(f"storage layer, {name}…"):
                results[name] = storage_layer(study, workdir, encrypted)
            with console.status(f"openvna serve, {name}…"):
                results[name].update(
                    end_to_end(study, workdir, encrypted, args.repeats, executable)
                )
    table = Table(
        title=f"Encryption at rest: {args.instances} CT slices, {study.total_bytes / MB:.0f} MB"
    )
    table.add_column("measurement")
    table.add_column("MB/s plain", justify="right")
    table.add_column("MB/s encrypted", justify="right")
    table.add_column("CPU s/GB plain", justify="right")
    table.add_column("CPU s/GB encrypted", justify="right")
    gigabytes = study.total_bytes / 1e9
    labels = {
        "write": "storage: write",
        "read": "storage: read",
        "c-store": "ingest: C-STORE",
        "wado-rs": "study: WADO-RS",
        "c-get": "study: C-GET",
    }
    for key, label in labels.items():
        plain, encrypted = results["plain"][key], results["encrypted"][key]
        table.add_row(
            label,
            f"{study.total_bytes / MB / plain.wall:.0f}",
            f"{study.total_bytes / MB / encrypted.wall:.0f}",
            f"{plain.cpu / gigabytes:.1f}",
            f"{encrypted.cpu / gigabytes:.1f}",
        )
    console.print(table)
    console.print(
        "storage: write (temp file, fsync, rename) and read whole objects in this process; "
        "ingest: storescu, one association; study: whole-study WADO-RS (multipart, as "
        "stored) and getscu. CPU: this process for storage, the server's processes "
        f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        console.print(f"[red]{error}[/red]")
        sys.exit(1)
