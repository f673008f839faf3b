#!/usr/bin/env python3
"""DIMSE benchmark: measure a DICOM archive from outside with the real dcmtk tools.

Generates (and caches) a synthetic CT study, starts OpenVNA (and, with ``--orthanc``,
Orthanc) as a subprocess on free loopback ports, and times what a modality, a viewer
or a router would do:

* C-STORE of the whole study over 1 association and over 4 concurrent associations
  (each into a fresh, empty archive), sampling the server's resident memory;
* C-FIND latency at STUDY level (by PatientID) and at IMAGE level (one series);
* C-GET of the whole study (getscu) and C-MOVE of it to a storescp started here.

Every dcmtk tool runs with ``TCP_NODELAY=1`` (dcmtk only disables Nagle's algorithm when
that variable is set). See ``benchmarks/README.md``. Usage::

    python benchmarks/dimse_bench.py [--instances 960] [--orthanc] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

# benchmarks/ is not a package: run as a script, this folder is on sys.path.
from _servers import (
    DCMTK_ENV,
    HOST,
    ROOT,
    BenchError,
    OpenVnaProcess,
    OrthancProcess,
    ServerProcess,
    console,
    ensure_orthanc,
    free_port,
    last_lines,
    measure_each,
    openvna_executable,
    orthanc_version,
    stop_process,
    wait_until,
    work_directory,
)
from pydicom import dcmread
from pydicom.uid import generate_uid
from rich.table import Table

from openvna.sample import generate_ct_series
from openvna.sample.generator import UID_ROOT

RESULTS: Final = ROOT / "benchmarks" / "results"
CACHE: Final = RESULTS / "cache"
DATASET_VERSION: Final = 1
DATASET_SEED: Final = 960
PATIENT_ID: Final = "BENCHDIMSE1"
PATIENT_NAME: Final = "BENCH^DIMSE"
SCU_AET: Final = "BENCHSCU"
SCP_AET: Final = "BENCHSCP"
MB: Final = 1_000_000
MIB: Final = 1024 * 1024
DCMTK_TOOLS: Final = ("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp")

REFERENCE: Final[dict[str, float]] = {
    "store_1.inst_per_s": 120.0,
    "store_4.inst_per_s": 220.0,
    "find_study.median_ms": 6.0,
    "get.mb_per_s": 225.0,
}
"""A previous Orthanc measurement on this kind of machine (its C-FIND figure is the
QIDO-RS query by PatientID, the HTTP analogue of our STUDY-level C-FIND)."""


# ---------------------------------------------------------------------------
# Tools and processes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dcmtk:
    """Absolute paths of the dcmtk command-line tools.

    pynetdicom installs Python apps with the same names (``storescu``, ``findscu``...)
    into the virtual environment's ``bin``; only binaries that report a dcmtk version
    are accepted, so an activated venv cannot shadow them.
    """

    paths: dict[str, str]
    version: str

    def __getitem__(self, name: str) -> str:
        return self.paths[name]


def _dcmtk_version(path: str) -> str | None:
    try:
        result = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, errors="replace"
        )
    except OSError:
        return None
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("$dcmtk:"):  # "$dcmtk: storescu v3.6.7 2022-04-22 $"
            words = line.strip("$ ").split()
            return next((w for w in words if w.startswith("v")), " ".join(words[2:]))
    return None


def find_dcmtk() -> Dcmtk:
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    paths: dict[str, str] = {}
    version = ""
    for name in DCMTK_TOOLS:
        for directory in dict.fromkeys(d for d in directories if d):
            candidate = Path(directory) / name
            if not (candidate.is_file() and os.access(candidate, os.X_OK)):
                continue
            found = _dcmtk_version(str(candidate))
            if found is not None:
                paths[name], version = str(candidate), found
                break
        else:
            raise BenchError(f"dcmtk's {name} is not installed (apt-get install dcmtk)")
    return Dcmtk(paths, version)


def run_tool(
    args: Sequence[str], *, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool (with TCP_NODELAY), capturing its output."""
    result = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=DCMTK_ENV,
        errors="replace",
    )
    if check and result.returncode != 0:
        raise BenchError(
            f"{Path(args[0]).name} failed ({result.returncode}):\n"
            f"{last_lines(result.stdout + result.stderr)}"
        )
    return result


def _read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in bytes (empty if it is gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return {}
    return values


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from the parent ids in ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_rss(pid: int) -> int:
    return sum(_read_status(p).get("VmRSS", 0) for p in process_tree(pid))


class RssSampler:
    """Samples the summed VmRSS of a process and its children in a background thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._start = 0.0

    def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter() - self._start, tree_rss(self.pid)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._start, tree_rss(self.pid)))

    def summary(self, before: int) -> dict[str, Any]:
        values = [rss for _t, rss in self.samples] or [0]
        half = max(len(values) // 2, 1)
        return {
            "before_mib": before / MIB,
            "peak_mib": max(values) / MIB,
            "peak_first_half_mib": max(values[:half]) / MIB,
            "peak_second_half_mib": max(values[half:] or values) / MIB,
            "after_mib": values[-1] / MIB,
            "vm_hwm_mib": _read_status(self.pid).get("VmHWM", 0) / MIB,
            "samples": [(round(t, 2), round(rss / MIB, 1)) for t, rss in self.samples],
        }


# ---------------------------------------------------------------------------
# Synthetic data set
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    uid: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class CtDataset:
    """One synthetic CT study (several series of 512x512 16-bit slices)."""

    root: Path
    patient_id: str
    study_instance_uid: str
    series: tuple[Series, ...]

    @property
    def files(self) -> list[Path]:
        return [path for series in self.series for path in series.files]

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)

    def warm_page_cache(self) -> None:
        """Read every file once so that C-STORE timings do not measure our disk."""
        for path in self.files:
            with open(path, "rb") as handle:
                while handle.read(1 << 20):
                    pass


def _split(items: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split into ``parts`` contiguous chunks whose sizes differ by at most one."""
    base, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + base + (1 if index < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return [chunk for chunk in chunks if chunk]


def _load_manifest(directory: Path) -> CtDataset | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if manifest.get("version") != DATASET_VERSION:
        return None
    dataset = CtDataset(
        root=directory,
        patient_id=manifest["patient_id"],
        study_instance_uid=manifest["study_instance_uid"],
        series=tuple(
            Series(s["uid"], tuple(directory / name for name in s["files"]))
            for s in manifest["series"]
        ),
    )
    if not all(path.is_file() for path in dataset.files):
        return None
    return dataset if dataset.total_bytes == manifest["bytes"] else None


def build_dataset(instances: int, series_count: int, cache: Path) -> CtDataset:
    """The CT study of ``instances`` slices in ``series_count`` series, cached on disk.

    :func:`openvna.sample.generate_ct_series` writes one long axial series; it is cut
    into ``series_count`` consecutive series (new Series Instance UID, number,
    description and instance numbers), as if a chest/abdomen/pelvis scan had been
    reconstructed as several series. All data are synthetic.
    """
    series_count = max(1, min(series_count, instances))
    directory = cache / f"ct-{instances}x512-{series_count}series-v{DATASET_VERSION}"
    dataset = _load_manifest(directory)
    if dataset is not None:
        return dataset
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)
    with console.status(f"generating {instances} synthetic CT slices in {partial}…"):
        raw = generate_ct_series(
            partial / "raw",
            instances=instances,
            seed=DATASET_SEED,
            patient_id=PATIENT_ID,
            patient_name=PATIENT_NAME,
        )
    first = dcmread(raw[0], stop_before_pixels=True)
    series_entries: list[dict[str, Any]] = []
    with console.status(f"splitting into {series_count} series…"):
        for index, chunk in enumerate(_split(raw, series_count)):
            series_dir = partial / f"series{index}"
            series_dir.mkdir(parents=True)
            uid = str(first.SeriesInstanceUID)
            if index:
                entropy = [str(first.StudyInstanceUID), "dimse-bench-series", str(index)]
                uid = str(generate_uid(UID_ROOT, entropy))
            names = []
            for number, path in enumerate(chunk, start=1):
                target = series_dir / path.name
                if index == 0:
                    path.rename(target)
                else:
                    ds = dcmread(path)
                    ds.SeriesInstanceUID = uid
                    ds.SeriesNumber = index + 1
                    ds.SeriesDescription = f"AX PART {index + 1} OF {series_count} BENCHMARK"
                    ds.InstanceNumber = number
                    ds.save_as(target, enforce_file_format=True)
                    path.unlink()
                names.append(str(target.relative_to(partial)))
            series_entries.append({"uid": uid, "files": names})
    shutil.rmtree(partial / "raw")
    total = sum(path.stat().st_size for path in partial.rglob("*.dcm"))
    manifest = {
        "version": DATASET_VERSION,
        "instances": instances,
        "patient_id": PATIENT_ID,
        "study_instance_uid": str(first.StudyInstanceUID),
        "bytes": total,
        "series": series_entries,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    partial.rename(directory)
    dataset = _load_manifest(directory)
    if dataset is None:
        raise BenchError(f"the generated data set in {directory} is incomplete")
    return dataset


# ---------------------------------------------------------------------------
# Servers under test
# ---------------------------------------------------------------------------


@dataclass
class Target(ServerProcess):
    """A DICOM archive that counts as started when it answers C-ECHO.

    ``destination_port`` is where the C-MOVE destination (our storescp) listens.
    """

    destination_port: int = field(kw_only=True)
    dcmtk: Dcmtk = field(kw_only=True)

    def ready(self) -> bool:
        result = run_tool(
            [
                self.dcmtk["echoscu"],
                "-to",
                "2",
                "-aet",
                SCU_AET,
                "-aec",
                self.ae_title,
                HOST,
                str(self.dicom_port),
            ],
            timeout=10,
            check=False,
        )
        return result.returncode == 0


@dataclass
class OpenVnaTarget(Target, OpenVnaProcess):
    def prepare(self, storage: Path) -> None:
        """Add the C-MOVE destination as a peer (``openvna peers add``)."""
        result = subprocess.run(
            [
                *self.executable,
                "peers",
                "add",
                SCP_AET,
                HOST,
                str(self.destination_port),
                "--data-dir",
                str(self.data_dir(storage)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise BenchError(f"openvna peers add failed:\n{result.stdout}{result.stderr}")


@dataclass
class OrthancTarget(Target, OrthancProcess):
    def config(self, storage: Path) -> dict[str, Any]:
        """Query/retrieve for any SCU, and our storescp as the C-MOVE destination."""
        modality: list[str | int] = [SCP_AET, HOST, self.destination_port]
        return {
            **super().config(storage),
            "Name": "dimse-bench",
            "ConcurrentJobs": 2,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {"bench_scp": modality},
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "SynchronousCMove": True,
        }


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def c_store(target: Target, dataset: CtDataset, associations: int, logs: Path) -> dict[str, Any]:
    """Send the whole data set with ``associations`` concurrent storescu processes."""
    files = dataset.files
    chunks = _split(files, associations)
    dataset.warm_page_cache()
    os.sync()
    before = tree_rss(target.pid)
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    with RssSampler(target.pid) as sampler:
        start = time.perf_counter()
        for index, chunk in enumerate(chunks):
            log_path = logs / f"storescu-{target.name}-{associations}-{index}.log"
            with open(log_path, "wb") as log:
                command = [
                    target.dcmtk["storescu"],
                    "-v",
                    "-aet",
                    SCU_AET,
                    "-aec",
                    target.ae_title,
                    HOST,
                    str(target.dicom_port),
                    *map(str, chunk),
                ]
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV
                )
            processes.append((process, log_path))
        for process, _log in processes:
            process.wait(timeout=3600)
        seconds = time.perf_counter() - start
    stored = 0
    for process, log_path in processes:
        output = log_path.read_text(errors="replace")
        stored += output.count("Received Store Response (Success)")
        if process.returncode != 0:
            raise BenchError(f"storescu failed ({process.returncode}):\n{last_lines(output)}")
    if stored != len(files):
        raise BenchError(f"{stored} of {len(files)} C-STOREs succeeded (see {logs})")
    size = dataset.total_bytes
    return {
        "associations": len(chunks),
        "instances": len(files),
        "bytes": size,
        "seconds": seconds,
        "inst_per_s": _rate(len(files), seconds),
        "mb_per_s": _rate(size / MB, seconds),
        "rss": sampler.summary(before),
    }


def _find_command(target: Target, keys: Sequence[str]) -> list[str]:
    command = [target.dcmtk["findscu"], "-S", "-aet", SCU_AET, "-aec", target.ae_title]
    for key in keys:
        command += ["-k", key]
    return [*command, HOST, str(target.dicom_port)]


def count_matches(target: Target, keys: Sequence[str]) -> int:
    result = run_tool(_find_command(target, keys), timeout=300)
    return (result.stdout + result.stderr).count("Find Response:")


def _latency(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "calls": len(samples),
        "median_ms": statistics.median(samples) * 1000,
        "p95_ms": p95 * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def c_find(target: Target, keys: Sequence[str], expected: int, repeats: int) -> dict[str, Any]:
    """Wall time of ``repeats`` findscu runs (process start, association, query, release)."""
    command = _find_command(target, keys)
    run_tool(command)  # warm-up, not timed
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run_tool(command, timeout=300)
        samples.append(time.perf_counter() - start)
        found = (result.stdout + result.stderr).count("Find Response:")
        if found != expected:
            raise BenchError(f"C-FIND returned {found} matches, expected {expected}")
    return {"matches": expected, **_latency(samples)}


def c_echo(target: Target, repeats: int) -> dict[str, Any]:
    """echoscu wall time: the fixed cost (process, association) included in C-FIND times."""
    command = [target.dcmtk["echoscu"], "-aet", SCU_AET, "-aec", target.ae_title, HOST]
    command.append(str(target.dicom_port))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_tool(command, timeout=60)
        samples.append(time.perf_counter() - start)
    return _latency(samples)


def _received(directory: Path) -> tuple[int, int]:
    files = [path for path in directory.iterdir() if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def _retrieve_runs(
    what: str, repeats: int, run_once: Callable[[], tuple[int, int, float]], expected: int
) -> dict[str, Any]:
    """Run a retrieval ``repeats`` times; report the median successful run.

    A failed run (tool error, or not every instance received) is kept in ``runs`` with
    its error and counted in ``failed_runs`` instead of hiding the other runs' numbers;
    only when every run fails is the measurement an error.
    """
    runs: list[dict[str, Any]] = []
    for _ in range(repeats):
        try:
            count, size, seconds = run_once()
            if count != expected:
                raise BenchError(f"{what} received {count} files, expected {expected}")
        except BenchError as error:
            console.print(f"[red]{what} run failed:[/red] {error}")
            runs.append({"error": str(error)})
            continue
        runs.append(
            {
                "instances": count,
                "bytes": size,
                "seconds": seconds,
                "inst_per_s": _rate(count, seconds),
                "mb_per_s": _rate(size / MB, seconds),
            }
        )
    good = sorted((run for run in runs if "error" not in run), key=lambda run: run["seconds"])
    if not good:
        raise BenchError(f"every {what} run failed; the last: {runs[-1]['error']}")
    return {**good[(len(good) - 1) // 2], "failed_runs": len(runs) - len(good), "runs": runs}


def c_get(target: Target, dataset: CtDataset, workdir: Path, repeats: int) -> dict[str, Any]:
    """getscu of the whole study into an empty folder; the median run is reported."""
    out = workdir / f"get-{target.name}"
    command = [
        target.dcmtk["getscu"],
        "-S",
        "-aet",
        SCU_AET,
        "-aec",
        target.ae_title,
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={dataset.study_instance_uid}",
        HOST,
        str(target.dicom_port),
    ]

    def run_once() -> tuple[int, int, float]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        os.sync()
        start = time.perf_counter()
        try:
            run_tool(command, timeout=3600)
            seconds = time.perf_counter() - start
            return (*_received(out), seconds)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    return _retrieve_runs("C-GET", repeats, run_once, len(dataset.files))


@contextmanager
def storescp(
    dcmtk: Dcmtk, port: int, out: Path, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """dcmtk's storescp (bit-preserving, any transfer syntax) as the C-MOVE destination."""
    out.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [dcmtk["storescp"], "-v", "-aet", SCP_AET, "-od", str(out), "+B", "+xa", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )

    def listening() -> bool:
        if process.poll() is not None:
            raise BenchError(f"storescp exited ({process.returncode}); is port {port} free?")
        with socket.socket() as sock:
            return sock.connect_ex((HOST, port)) == 0

    try:
        wait_until(listening, 30, "storescp to listen")
        yield process
    finally:
        stop_process(process, timeout=10)


def c_move(target: Target, dataset: CtDataset, workdir: Path, repeats: int) -> dict[str, Any]:
    """movescu of the whole study to our storescp; the median run is reported."""
    out = workdir / f"move-{target.name}"
    command = [
        target.dcmtk["movescu"],
        "-S",
        "-aet",
        SCU_AET,
        "-aec",
        target.ae_title,
        "-aem",
        SCP_AET,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={dataset.study_instance_uid}",
        HOST,
        str(target.dicom_port),
    ]

    def run_once() -> tuple[int, int, float]:
        for path in out.iterdir():
            path.unlink()
        os.sync()
        start = time.perf_counter()
        result = run_tool(command, timeout=3600, check=False)
        seconds = time.perf_counter() - start
        count, size = _received(out)
        if result.returncode != 0:
            raise BenchError(
                f"movescu failed ({result.returncode}) after {seconds:.0f} s with "
                f"{count} files delivered:\n{last_lines(result.stdout + result.stderr, 4)}"
            )
        return count, size, seconds

    log_path = workdir / "logs" / f"storescp-{target.name}.log"
    try:
        with storescp(target.dcmtk, target.destination_port, out, log_path):
            return _retrieve_runs("C-MOVE", repeats, run_once, len(dataset.files))
    finally:
        shutil.rmtree(out, ignore_errors=True)


@dataclass
class Options:
    find_repeats: int
    retrieve_repeats: int


def run_suite(target: Target, dataset: CtDataset, options: Options) -> dict[str, Any]:
    """All measurements against one server; a failed one is recorded as an error."""
    results: dict[str, Any] = {"errors": {}}
    logs = target.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    total = len(dataset.files)
    series = dataset.series[0]

    def measure(name: str, function: Callable[[], dict[str, Any]]) -> None:
        with console.status(f"{target.name}: {name}…"):
            try:
                results[name] = function()
            except (BenchError, subprocess.SubprocessError, OSError) as error:
                results["errors"][name] = str(error)
                console.print(f"[red]{target.name}: {name} failed:[/red] {error}")
                return
        console.print(f"  {target.name}: {name} done")

    def stored_instances() -> int:
        return sum(
            count_matches(
                target,
                [
                    "QueryRetrieveLevel=IMAGE",
                    f"StudyInstanceUID={dataset.study_instance_uid}",
                    f"SeriesInstanceUID={s.uid}",
                    "SOPInstanceUID",
                ],
            )
            for s in dataset.series
        )

    def store(associations: int) -> dict[str, Any]:
        target.start()
        result = c_store(target, dataset, associations, logs)
        result["indexed_instances"] = stored_instances()
        if result["indexed_instances"] != total:
            raise BenchError(f"C-FIND finds {result['indexed_instances']} of {total} instances")
        return result

    results["load_average_before"] = os.getloadavg()
    measure("store_1", lambda: store(1))
    measure("store_4", lambda: store(4))
    if "store_4" not in results:
        target.stop()
        return results
    measure("echo", lambda: c_echo(target, options.find_repeats))
    study_keys = [
        "QueryRetrieveLevel=STUDY",
        f"PatientID={dataset.patient_id}",
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "PatientName",
    ]
    measure("find_study", lambda: c_find(target, study_keys, 1, options.find_repeats))
    image_keys = [
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={dataset.study_instance_uid}",
        f"SeriesInstanceUID={series.uid}",
        "SOPInstanceUID",
        "InstanceNumber",
    ]
    measure(
        "find_image",
        lambda: c_find(target, image_keys, len(series.files), options.find_repeats),
    )
    measure("get", lambda: c_get(target, dataset, target.workdir, options.retrieve_repeats))
    measure("move", lambda: c_move(target, dataset, target.workdir, options.retrieve_repeats))
    results["load_average_after"] = os.getloadavg()
    target.stop()
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    unit: str
    higher_is_better: bool
    digits: int = 1


ROWS: Final = (
    Row("C-STORE, 1 association", "store_1.inst_per_s", "inst/s", True),
    Row("C-STORE, 1 association", "store_1.mb_per_s", "MB/s", True),
    Row("C-STORE, 4 associations", "store_4.inst_per_s", "inst/s", True),
    Row("C-STORE, 4 associations", "store_4.mb_per_s", "MB/s", True),
    Row("server RSS before C-STORE", "store_1.rss.before_mib", "MiB", False, 0),
    Row("server RSS peak, C-STORE 1 assoc.", "store_1.rss.peak_mib", "MiB", False, 0),
    Row("  peak in 1st / 2nd half of the run", "store_1.rss.halves", "MiB", False, 0),
    Row("server RSS peak, C-STORE 4 assoc.", "store_4.rss.peak_mib", "MiB", False, 0),
    Row("  peak in 1st / 2nd half of the run", "store_4.rss.halves", "MiB", False, 0),
    Row("C-ECHO (tool start + association)", "echo.median_ms", "ms median", False),
    Row("C-FIND STUDY by PatientID", "find_study.median_ms", "ms median", False),
    Row("C-FIND STUDY by PatientID", "find_study.p95_ms", "ms p95", False),
    Row("C-FIND IMAGE, one series", "find_image.median_ms", "ms median", False),
    Row("C-FIND IMAGE, one series", "find_image.p95_ms", "ms p95", False),
    Row("C-GET whole study", "get.mb_per_s", "MB/s", True),
    Row("C-GET whole study", "get.inst_per_s", "inst/s", True),
    Row("C-MOVE whole study → storescp", "move.mb_per_s", "MB/s", True),
    Row("C-MOVE whole study → storescp", "move.inst_per_s", "inst/s", True),
)


def lookup(results: dict[str, Any], key: str) -> float | None:
    value: Any = results
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def halves(results: dict[str, Any], key: str) -> str:
    """The RSS peaks in the first and second half of a run, for a ``….halves`` row."""
    prefix = key.removesuffix(".halves")
    first = lookup(results, f"{prefix}.peak_first_half_mib")
    second = lookup(results, f"{prefix}.peak_second_half_mib")
    return "—" if first is None or second is None else f"{first:.0f} / {second:.0f}"


def _cell(results: dict[str, Any] | None, row: Row) -> str:
    if results is None:
        return ""
    if row.key.endswith(".halves"):
        return halves(results, row.key)
    value = lookup(results, row.key)
    if value is None:
        return "—"
    measurement = results.get(row.key.split(".")[0], {})
    failed, runs = measurement.get("failed_runs", 0), len(measurement.get("runs", []))
    note = f" [red]({failed}/{runs} runs failed)[/red]" if failed else ""
    return f"{value:,.{row.digits}f}{note}"


def factor(openvna: dict[str, Any], orthanc: dict[str, Any] | None, row: Row) -> str:
    """How much faster OpenVNA is (> 1) than Orthanc; nothing for the memory rows."""
    if orthanc is None or "rss" in row.key:
        return ""
    ours, theirs = lookup(openvna, row.key), lookup(orthanc, row.key)
    if not ours or not theirs:
        return "—"
    ratio = ours / theirs if row.higher_is_better else theirs / ours
    colour = "green" if ratio >= 1 else "red"
    return f"[{colour}]{ratio:.2f}×[/{colour}]"


def results_table(report: dict[str, Any], what: str, caption: str) -> Table:
    """A table titled with the data set, captioned with the machine, and the OpenVNA column."""
    data = report["dataset"]
    machine = report["machine"]
    table = Table(
        title=(
            f"{what} benchmark: {data['instances']} CT instances in {data['series']} series, "
            f"{data['bytes'] / MB:,.0f} MB ({data['bytes'] / data['instances'] / MB:.2f} MB each)"
        ),
        caption=(
            f"OpenVNA {report['openvna_revision']}; {machine['cpus']} CPUs, load "
            f"average {machine['load_average']}; {caption}"
        ),
    )
    table.add_column("measurement")
    table.add_column("unit")
    table.add_column("OpenVNA", justify="right")
    return table


def print_table(report: dict[str, Any]) -> None:
    targets = report["targets"]
    openvna: dict[str, Any] = targets["OpenVNA"]
    orthanc: dict[str, Any] | None = targets.get("Orthanc")
    table = results_table(
        report,
        "DIMSE",
        f"dcmtk {report['dcmtk']}; MB = 10^6 bytes; C-FIND/C-ECHO times include "
        "starting the dcmtk tool; factor > 1 means OpenVNA is faster",
    )
    if orthanc is not None:
        table.add_column(f"Orthanc\n{report.get('orthanc_version', '')}", justify="right")
        table.add_column("factor", justify="right")
    table.add_column("Orthanc\n(reference)", justify="right", style="dim")
    for row in ROWS:
        cells = [row.label, row.unit, _cell(openvna, row)]
        if orthanc is not None:
            cells += [_cell(orthanc, row), factor(openvna, orthanc, row)]
        reference = REFERENCE.get(row.key)
        cells.append("" if reference is None else f"~{reference:,.0f}")
        table.add_row(*cells)
    console.print(table)
    for name, results in targets.items():
        for measurement, error in results.get("errors", {}).items():
            console.print(f"[red]{name} {measurement} failed:[/red] {error}")
        for measurement in ("get", "move"):
            for run in results.get(measurement, {}).get("runs", []):
                if "error" in run:
                    console.print(f"[red]{name} {measurement} run failed:[/red] {run['error']}")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def openvna_revision() -> str:
    """``git describe`` of the working tree being measured (``-dirty`` if modified)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "?"
    return result.stdout.strip() or "?"


def parse_benchmark_args(
    argv: Sequence[str] | None,
    description: str,
    orthanc_help: str,
    counts: dict[str, tuple[int, str]],
) -> argparse.Namespace:
    """The options of both benchmarks, with each one's own ``counts`` (option: default, help).

    Every count, ``--instances`` and ``--series`` included, must be at least 1.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--instances", type=int, default=960, help="CT slices (~0.5 MB each; default 960)"
    )
    parser.add_argument("--series", type=int, default=4, help="series in the study (default 4)")
    parser.add_argument("--orthanc", action="store_true", help=orthanc_help)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the raw numbers here")
    for option, (default, text) in counts.items():
        parser.add_argument(option, type=int, default=default, help=text)
    parser.add_argument("--openvna", metavar="EXE", help="openvna executable (default .venv)")
    parser.add_argument(
        "--workdir", type=Path, help="keep archives and logs here (default: a temp dir, removed)"
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"data set cache ({CACHE})")
    args = parser.parse_args(argv)
    for option in ("--instances", "--series", *counts):
        if getattr(args, option.removeprefix("--").replace("-", "_")) < 1:
            parser.error(f"{option} must be at least 1")
    return args


def load_dataset(args: argparse.Namespace) -> CtDataset:
    """The data set the options ask for (built or taken from the cache), announced."""
    dataset = build_dataset(args.instances, args.series, args.cache)
    console.print(
        f"data set: {len(dataset.files)} instances, {len(dataset.series)} series, "
        f"{dataset.total_bytes / MB:,.0f} MB in {dataset.root}"
    )
    return dataset


def new_report(
    dataset: CtDataset,
    options: Any,
    reference: dict[str, float],
    dataset_details: dict[str, Any] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """What a benchmark report holds besides its ``targets`` (filled in by the run)."""
    return {
        "dataset": {
            "instances": len(dataset.files),
            "series": len(dataset.series),
            "bytes": dataset.total_bytes,
            **(dataset_details or {}),
            "path": str(dataset.root),
        },
        **details,
        "openvna_revision": openvna_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        },
        "options": asdict(options),
        "reference_orthanc": reference,
        "targets": {},
    }


def finish(
    report: dict[str, Any], json_path: Path | None, table: Callable[[dict[str, Any]], None]
) -> int:
    """Write the JSON (if asked) and print the table; 1 if a measurement failed, else 0."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"raw numbers written to {json_path}")
    table(report)
    failed = any(results.get("errors") for results in report["targets"].values())
    return 1 if failed else 0


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main``'s status, or 2 (after printing it) on a :class:`BenchError`."""
    try:
        sys.exit(main())
    except BenchError as error:
        console.print(f"[red]error:[/red] {error}")
        sys.exit(2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse_benchmark_args(
        argv,
        "Benchmark OpenVNA (and optionally Orthanc) over DIMSE with dcmtk tools.",
        "also measure Orthanc (apt-get installs it)",
        {
            "--find-repeats": (50, "timed findscu/echoscu calls (default 50)"),
            "--retrieve-repeats": (3, "C-GET and C-MOVE runs (default 3)"),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dcmtk = find_dcmtk()
    orthanc_binary = ensure_orthanc() if args.orthanc else None
    dataset = load_dataset(args)
    options = Options(args.find_repeats, args.retrieve_repeats)
    report = new_report(dataset, options, REFERENCE, dcmtk=dcmtk.version)
    with work_directory(args.workdir, "dimse-bench-") as workdir:
        targets: list[Target] = [
            OpenVnaTarget(
                "OpenVNA",
                "OPENVNA",
                workdir / "openvna",
                executable=openvna_executable(args.openvna),
                destination_port=free_port(),
                dcmtk=dcmtk,
            )
        ]
        if orthanc_binary is not None:
            report["orthanc_version"] = orthanc_version(orthanc_binary)
            targets.append(
                OrthancTarget(
                    "Orthanc",
                    "ORTHANC",
                    workdir / "orthanc",
                    binary=orthanc_binary,
                    destination_port=free_port(),
                    dcmtk=dcmtk,
                )
            )
        report["targets"] = measure_each(
            targets, lambda target: run_suite(target, dataset, options)
        )
    return finish(report, args.json, print_table)


if __name__ == "__main__":
    run_main(main)
