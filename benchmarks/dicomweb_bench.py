#!/usr/bin/env python3
"""DICOMweb benchmark: measure a DICOM archive's web services from outside, over HTTP.

Generates (or reuses the cached) synthetic CT study of ``dimse_bench.py``, starts
OpenVNA (and, with ``--orthanc``, Orthanc with its DICOMweb plugin) as a subprocess on
free loopback ports, and times what a viewer, an AI engine or an uploading modality
gateway does (PS3.18):

* STOW-RS of the whole study into an empty archive by 4 concurrent clients, one instance
  per request and 16 instances per request;
* QIDO-RS: studies by PatientID, the series and the instances of the study;
* WADO-RS: the study's metadata, single frames, and the whole study as multipart;
* the server's resident memory during each of them.

The client is this script, on plain keep-alive ``http.client`` connections (the least
client overhead Python offers: on a small machine the client competes with the server
for the CPUs). A request that answers an HTTP error is a failed measurement, never a
fast one; 404, 405 and 501 are shown as "not available" (an endpoint not implemented).
See ``benchmarks/README.md``. Usage::

    python benchmarks/dicomweb_bench.py [--instances 960] [--orthanc] [--json OUT]
"""

from __future__ import annotations

import argparse
import email.message
import http.client
import json
import os
import queue
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

# benchmarks/ is not a package: run as a script, this folder is on sys.path. Both
# benchmarks share one data set, one way of running servers and one RSS sampler.
from _servers import (
    DCMTK_ENV,
    HOST,
    BenchError,
    OpenVnaProcess,
    OrthancProcess,
    ServerProcess,
    console,
    install_orthanc,
    last_lines,
    measure_each,
    openvna_executable,
    orthanc_binary,
    orthanc_version,
    work_directory,
)
from dimse_bench import (
    MB,
    MIB,
    CtDataset,
    RssSampler,
    _latency,
    factor,
    find_dcmtk,
    finish,
    halves,
    load_dataset,
    lookup,
    new_report,
    parse_benchmark_args,
    results_table,
    run_main,
    tree_rss,
)
from dimse_bench import (
    Row as TableRow,
)
from pydicom import dcmread

GB: Final = 1_000_000_000
DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
FRAME_ACCEPT: Final = 'multipart/related; type="application/octet-stream"'
STUDY_ACCEPTS: Final = (
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    "multipart/related; type=application/dicom",
)
"""Whole-study Accept headers, in order: PS3.18 8.7.3.5.2 asks for the stored transfer
syntax with ``transfer-syntax=*``; servers that reject it (400/406) get the bare form."""
NOT_AVAILABLE: Final = frozenset({404, 405, 501})
"""Statuses that mean "this endpoint is not implemented here" rather than "it broke"."""
READ_SIZE: Final = 4 * MIB
NEW_CONNECTION_REPEATS: Final = 10
DELAYED_ACK_MS: Final = 30.0
"""A keep-alive query this much slower than the same query on a new connection points at
Nagle's algorithm meeting the client's delayed ACK (~40 ms on Linux): the server writes
the response in several pieces without ``TCP_NODELAY``. New connections start in quick-ACK
mode and hide it; browsers and DICOMweb clients keep their connections."""
ORTHANC_PACKAGES: Final = ("orthanc", "orthanc-dicomweb")
SCU_AET: Final = "DWBENCH"

REFERENCE: Final[dict[str, float]] = {
    "stow_1.inst_per_s": 235.0,
    "qido_study.median_ms": 6.0,
    "metadata.median_ms": 42.0,
}
"""An earlier Orthanc measurement on this kind of machine, used as the comparison when
Orthanc is not measured in the same run."""


# ---------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------


class HttpError(BenchError):
    """An HTTP request answered an error status (4xx, 5xx)."""

    def __init__(self, method: str, path: str, status: int, reason: str, body: bytes) -> None:
        text = body[:300].decode("utf-8", errors="replace").strip()
        super().__init__(f"{method} {path} → HTTP {status} {reason}: {text}")
        self.status = status

    @property
    def not_available(self) -> bool:
        return self.status in NOT_AVAILABLE


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise BenchError(f"the answer is not JSON ({error}): {self.body[:200]!r}") from error


class Client:
    """One keep-alive HTTP/1.1 connection to a server, as a DICOMweb client holds it.

    ``connects`` counts the TCP connections opened, so that a server that closes after
    every request (no keep-alive) shows in the JSON. A request on a reused connection
    that the server closed meanwhile is sent once more on a new one, as browsers do.
    """

    def __init__(self, port: int, timeout: float = 600) -> None:
        self.connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.connects = 0

    def close(self) -> None:
        self.connection.close()

    def send(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> http.client.HTTPResponse:
        """The response with its body still unread; raises nothing for HTTP errors."""
        for attempt in range(2):
            reused = self.connection.sock is not None
            if not reused:
                self.connects += 1
            try:
                self.connection.request(method, path, body=body, headers=headers)
                return self.connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.connection.close()
                if attempt or not reused:
                    raise
        raise AssertionError("unreachable")

    def fetch(
        self,
        method: str,
        path: str,
        accept: str,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Reply:
        """The whole answer; :class:`HttpError` for a status of 400 and above."""
        headers = {"Accept": accept}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = self.send(method, path, headers, body)
        data = response.read()
        if response.status >= 400:
            raise HttpError(method, path, response.status, response.reason, data)
        return Reply(response.status, response.headers, data)

    def get(self, path: str, accept: str) -> Reply:
        return self.fetch("GET", path, accept)


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a multipart Content-Type (RFC 2046 5.1.1)."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not content_type.lower().startswith("multipart/"):
        raise BenchError(f"not a multipart answer: Content-Type {content_type!r}")
    return boundary


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The contents of each part (headers removed) of a ``multipart/related`` body."""
    delimiter = b"--" + boundary_of(content_type).encode("ascii")
    parts = []
    for piece in body.split(delimiter)[1:]:
        if piece.startswith(b"--"):
            break
        _headers, found, content = piece.partition(b"\r\n\r\n")
        if not found:
            raise BenchError("a multipart part has no header/body separator")
        parts.append(content.removesuffix(b"\r\n"))  # the CRLF belongs to the delimiter
    return parts


def stow_body(paths: Sequence[Path], boundary: str) -> bytes:
    """A ``multipart/related; type="application/dicom"`` body of Part 10 files."""
    pieces: list[bytes] = []
    for path in paths:
        pieces += [
            f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode("ascii"),
            path.read_bytes(),
            b"\r\n",
        ]
    pieces.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(pieces)


def values(item: dict[str, Any], tag: str) -> list[Any]:
    """The ``Value`` of one attribute of a DICOM JSON object (PS3.18 F.2), or []."""
    attribute = item.get(tag)
    return list(attribute.get("Value", [])) if isinstance(attribute, dict) else []


def first_value(item: dict[str, Any], tag: str) -> Any:
    found = values(item, tag)
    return found[0] if found else None


STUDY_UID_TAG: Final = "0020000D"
SERIES_UID_TAG: Final = "0020000E"
SOP_UID_TAG: Final = "00080018"
PIXEL_DATA_TAG: Final = "7FE00010"
FAILED_SOP_TAG: Final = "00081198"
REFERENCED_SOP_TAG: Final = "00081199"


# ---------------------------------------------------------------------------
# What the study holds (read once from the files, to check every answer)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRef:
    path: Path
    series_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StudyFacts:
    """The UIDs and sizes every answer is checked against."""

    dataset: CtDataset
    instances: tuple[InstanceRef, ...]
    frame_bytes: int

    @property
    def study_uid(self) -> str:
        return self.dataset.study_instance_uid

    @property
    def sop_uids(self) -> set[str]:
        return {instance.sop_instance_uid for instance in self.instances}

    @property
    def series_uids(self) -> set[str]:
        return {series.uid for series in self.dataset.series}


def study_facts(dataset: CtDataset) -> StudyFacts:
    """Read the headers of the data set (pixels skipped): UIDs and the frame size."""
    refs = []
    frame_bytes = 0
    tags = ["SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns", "BitsAllocated"]
    tags.append("SamplesPerPixel")
    for path in dataset.files:
        header = dcmread(path, stop_before_pixels=True, specific_tags=tags)
        refs.append(InstanceRef(path, str(header.SeriesInstanceUID), str(header.SOPInstanceUID)))
        if not frame_bytes:
            samples = int(header.get("SamplesPerPixel", 1))
            frame_bytes = int(header.Rows) * int(header.Columns) * samples
            frame_bytes *= int(header.BitsAllocated) // 8
    return StudyFacts(dataset, tuple(refs), frame_bytes)


# ---------------------------------------------------------------------------
# Servers under test
# ---------------------------------------------------------------------------


@dataclass
class Server(ServerProcess):
    """An archive whose DICOMweb services are at ``dicomweb_root`` on its HTTP port."""

    dicomweb_root: str = "/dicom-web"

    def url(self, path: str) -> str:
        """Path of a DICOMweb resource (``path`` starts with ``/studies``)."""
        return self.dicomweb_root.rstrip("/") + path

    def http_ok(self, path: str) -> bool:
        try:
            connection = http.client.HTTPConnection(HOST, self.http_port, timeout=2)
            connection.request("GET", path)
            status = connection.getresponse().status
            connection.close()
        except OSError:
            return False
        return status == 200


@dataclass
class OpenVnaServer(Server, OpenVnaProcess):
    def ready(self) -> bool:
        return self.http_ok("/api/health")


@dataclass
class OrthancServer(Server, OrthancProcess):
    plugin: str = ""
    dicomweb_root: str = "/dicom-web/"

    def config(self, storage: Path) -> dict[str, Any]:
        """Orthanc's defaults plus the DICOMweb plugin (see :meth:`OrthancProcess.config`).

        The plugin is named by its file rather than by the plugin folder, so another
        Orthanc plugin installed on the machine (a PostgreSQL index, say) cannot change
        what is measured. Performance settings keep Orthanc's defaults (SQLite index,
        HTTP keep-alive, ``StudiesMetadata`` ``Full``, no compression).
        """
        return {
            **super().config(storage),
            "Name": "dicomweb-bench",
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": self.dicomweb_root},
        }

    def ready(self) -> bool:
        if not self.http_ok("/system"):
            return False
        client = Client(self.http_port, timeout=5)
        try:
            plugins = client.get("/plugins", "application/json").json()
        finally:
            client.close()
        if "dicom-web" not in plugins:
            raise BenchError(f"Orthanc started without its DICOMweb plugin (plugins: {plugins})")
        return True

    def plugin_version(self) -> str:
        client = Client(self.http_port, timeout=5)
        try:
            return str(client.get("/plugins/dicom-web", "application/json").json()["Version"])
        except (BenchError, KeyError, OSError):
            return "?"
        finally:
            client.close()


def _dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared object, as installed by ``orthanc-dicomweb``."""
    result = subprocess.run(
        ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    # Debian installs it under /usr/lib/orthanc and links it from the plugins folder.
    libraries = [line for line in result.stdout.splitlines() if ".so" in Path(line).name]
    existing = sorted(path for path in libraries if os.path.isfile(path))
    return os.path.realpath(existing[0]) if existing else None


def ensure_orthanc_dicomweb() -> tuple[str, str]:
    """Orthanc's binary and its DICOMweb plugin, installing Debian's packages if missing."""
    binary, plugin = orthanc_binary(), _dicomweb_plugin()
    if binary is None or plugin is None:
        install_orthanc(ORTHANC_PACKAGES)
        binary, plugin = orthanc_binary(), _dicomweb_plugin()
    if binary is None or plugin is None:
        raise BenchError("the orthanc packages are installed but Orthanc or its plugin is missing")
    return binary, plugin


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


@contextmanager
def memory(server: Server, into: dict[str, Any]) -> Iterator[None]:
    """Sample the server's RSS (with its children) while the block runs."""
    before = tree_rss(server.pid)
    with RssSampler(server.pid) as sampler:
        yield
    into["rss"] = sampler.summary(before)


def _check_stow_answer(reply: Reply, expected: int) -> None:
    """PS3.18 10.5.3: every instance in ReferencedSOPSequence, none in FailedSOPSequence."""
    if reply.status not in (200, 202):
        raise BenchError(f"STOW-RS answered HTTP {reply.status}")
    answer = reply.json()
    if not isinstance(answer, dict):
        raise BenchError(f"the STOW-RS answer is not a DICOM JSON object: {str(answer)[:200]}")
    failed = values(answer, FAILED_SOP_TAG)
    stored = values(answer, REFERENCED_SOP_TAG)
    if failed or len(stored) != expected:
        raise BenchError(
            f"STOW-RS (HTTP {reply.status}) stored {len(stored)} of {expected} instances, "
            f"{len(failed)} failed: {json.dumps(failed)[:300]}"
        )


def stow(server: Server, facts: StudyFacts, clients: int, per_request: int) -> dict[str, Any]:
    """Store the whole study into the (empty) archive with ``clients`` concurrent clients.

    Requests are taken from one shared queue, so a slower client takes fewer of them; each
    client keeps one keep-alive connection. The first failed request stops all clients.
    """
    files = facts.dataset.files
    batches = [files[i : i + per_request] for i in range(0, len(files), per_request)]
    work: queue.SimpleQueue[list[Path]] = queue.SimpleQueue()
    for batch in batches:
        work.put(batch)
    errors: list[BaseException] = []
    connects: list[int] = []
    failed = threading.Event()
    path = server.url("/studies")

    def client_loop(number: int) -> None:
        client = Client(server.http_port)
        boundary = f"dicomweb-bench-{number}-{os.getpid()}"
        content_type = f'multipart/related; type="{DICOM}"; boundary={boundary}'
        try:
            while not failed.is_set():
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                body = stow_body(batch, boundary)
                reply = client.fetch("POST", path, DICOM_JSON, body, content_type)
                _check_stow_answer(reply, len(batch))
        except (BenchError, OSError, http.client.HTTPException) as error:
            errors.append(error)
            failed.set()
        finally:
            connects.append(client.connects)
            client.close()

    facts.dataset.warm_page_cache()
    os.sync()
    result: dict[str, Any] = {}
    with memory(server, result):
        threads = [
            threading.Thread(target=client_loop, args=(n,), name=f"stow-{n}")
            for n in range(clients)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
    if errors:
        raise errors[0] if isinstance(errors[0], BenchError) else BenchError(str(errors[0]))
    size = facts.dataset.total_bytes
    return {
        **result,
        "clients": clients,
        "instances_per_request": per_request,
        "requests": len(batches),
        "instances": len(files),
        "bytes": size,
        "seconds": seconds,
        "inst_per_s": len(files) / seconds,
        "mb_per_s": size / MB / seconds,
        "connections_opened": sum(connects),
    }


def load_with_c_store(server: Server, facts: StudyFacts) -> dict[str, Any]:
    """Fill a fresh archive over DIMSE (dcmtk's storescu), when STOW-RS could not.

    So that a STOW-RS failure does not also hide the query and retrieve figures.
    """
    server.start()
    start = time.perf_counter()
    storescu = find_dcmtk()["storescu"]
    command = [storescu, "-aet", SCU_AET, "-aec", server.ae_title, HOST, str(server.dicom_port)]
    result = subprocess.run(
        [*command, *map(str, facts.dataset.files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=3600,
        errors="replace",
    )
    if result.returncode != 0:
        raise BenchError(f"storescu failed ({result.returncode}):\n{last_lines(result.stderr)}")
    return {"instances": len(facts.instances), "seconds": time.perf_counter() - start}


def timed_gets(
    client: Client,
    paths: Sequence[str],
    accept: str,
    check: Callable[[Reply], Any],
) -> tuple[dict[str, Any], Any]:
    """Time GETs of ``paths`` (the whole body read); one untimed warm-up first.

    Every answer is checked after its timing stops; the first check's result (a count,
    say) is returned with the statistics.
    """
    checked = check(client.get(paths[0], accept))  # warm-up, not timed
    samples = []
    for path in paths:
        start = time.perf_counter()
        reply = client.get(path, accept)
        samples.append(time.perf_counter() - start)
        check(reply)
    return _latency(samples), checked


def qido(
    server: Server,
    path: str,
    repeats: int,
    tag: str,
    expected: set[str],
) -> dict[str, Any]:
    """Median time of one QIDO-RS query; each answer must hold exactly ``expected``."""

    def check(reply: Reply) -> int:
        answer = reply.json()
        if not isinstance(answer, list):
            raise BenchError(f"QIDO-RS answered {type(answer).__name__}, not a JSON array")
        found = {str(first_value(item, tag)) for item in answer}
        if len(answer) != len(expected) or found != expected:
            warning = reply.headers.get("Warning")
            note = f" (Warning: {warning})" if warning else ""
            raise BenchError(f"{path} gave {len(answer)} results, expected {len(expected)}{note}")
        return len(answer)

    client = Client(server.http_port)
    result: dict[str, Any] = {"path": path}
    try:
        with memory(server, result):
            stats, matches = timed_gets(client, [server.url(path)] * repeats, DICOM_JSON, check)
    finally:
        client.close()
    fresh = []
    for _ in range(NEW_CONNECTION_REPEATS):
        one_shot = Client(server.http_port)
        try:
            start = time.perf_counter()
            check(one_shot.get(server.url(path), DICOM_JSON))
            fresh.append(time.perf_counter() - start)
        finally:
            one_shot.close()
    return {
        **result,
        **stats,
        "matches": matches,
        "connections_opened": client.connects,
        "new_connection_median_ms": statistics.median(fresh) * 1000,
    }


def metadata(server: Server, facts: StudyFacts, repeats: int) -> dict[str, Any]:
    """Study metadata (PS3.18 10.4.1.1.2): one DICOM JSON object per instance."""
    path = f"/studies/{facts.study_uid}/metadata"
    inline: list[bool] = []

    def check(reply: Reply) -> int:
        answer = reply.json()
        if not isinstance(answer, list):
            raise BenchError(f"metadata answered {type(answer).__name__}, not a JSON array")
        found = {str(first_value(item, SOP_UID_TAG)) for item in answer}
        if len(answer) != len(facts.instances) or found != facts.sop_uids:
            raise BenchError(f"metadata has {len(answer)} items, expected {len(facts.instances)}")
        pixel = answer[0].get(PIXEL_DATA_TAG, {})
        inline.append(isinstance(pixel, dict) and "InlineBinary" in pixel)
        return len(reply.body)

    client = Client(server.http_port)
    result: dict[str, Any] = {"path": path}
    try:
        with memory(server, result):
            stats, size = timed_gets(client, [server.url(path)] * repeats, DICOM_JSON, check)
    finally:
        client.close()
    return {
        **result,
        **stats,
        "items": len(facts.instances),
        "bytes": size,
        "pixel_data_inline": any(inline),
        "connections_opened": client.connects,
    }


def frames(server: Server, facts: StudyFacts, repeats: int) -> dict[str, Any]:
    """First frame of ``repeats`` instances spread over the study, on one connection.

    Each answer must be one part of exactly Rows × Columns × bytes per sample; the first
    three are also compared byte for byte with the pixel data of the file sent.
    """
    step = max(1, len(facts.instances) // repeats)
    chosen = [facts.instances[(i * step) % len(facts.instances)] for i in range(repeats)]
    paths = [
        server.url(
            f"/studies/{facts.study_uid}/series/{ref.series_uid}"
            f"/instances/{ref.sop_instance_uid}/frames/1"
        )
        for ref in chosen
    ]

    def frame_of(reply: Reply) -> bytes:
        parts = multipart_parts(reply.content_type, reply.body)
        if len(parts) != 1 or len(parts[0]) != facts.frame_bytes:
            sizes = [len(part) for part in parts]
            raise BenchError(
                f"frame answer has parts of {sizes} bytes, expected one of {facts.frame_bytes}"
            )
        return parts[0]

    client = Client(server.http_port)
    result: dict[str, Any] = {}
    try:
        with memory(server, result):
            stats, _ = timed_gets(client, paths, FRAME_ACCEPT, frame_of)
        for ref, path in zip(chosen[:3], paths[:3], strict=True):
            pixels = dcmread(ref.path).PixelData
            if frame_of(client.get(path, FRAME_ACCEPT)) != pixels[: facts.frame_bytes]:
                raise BenchError(f"frame 1 of {ref.sop_instance_uid} differs from the file sent")
    finally:
        client.close()
    return {
        **result,
        **stats,
        "frame_bytes": facts.frame_bytes,
        "instances": len(set(paths)),
        "connections_opened": client.connects,
    }


def stream_study(client: Client, path: str, accept: str) -> dict[str, Any]:
    """GET a whole study, reading the body in big blocks into /dev/null.

    The multipart delimiters are counted on the fly (looking across block edges) to
    check that every instance came, without keeping the body.
    """
    start = time.perf_counter()
    response = client.send("GET", path, {"Accept": accept})
    if response.status >= 400:
        raise HttpError("GET", path, response.status, response.reason, response.read())
    marker = b"--" + boundary_of(response.headers.get("Content-Type", "")).encode("ascii")
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    edge = len(marker) - 1  # a delimiter split over two blocks has at most this much in each
    total = delimiters = 0
    tail = b""
    with open(os.devnull, "wb", buffering=0) as sink:
        while size := response.readinto(view):
            sink.write(view[:size])
            delimiters += buffer.count(marker, 0, size)
            delimiters += (tail + bytes(view[: min(size, edge)])).count(marker)
            if size >= edge:
                tail = bytes(view[size - edge : size])
            else:
                tail = (tail + bytes(view[:size]))[-edge:]
            total += size
    seconds = time.perf_counter() - start
    return {
        "bytes": total,
        "parts": delimiters - 1,  # the closing delimiter is "--boundary--"
        "seconds": seconds,
        "gb_per_s": total / GB / seconds,
        "mb_per_s": total / MB / seconds,
        "content_type": response.headers.get("Content-Type", ""),
        "transfer_encoding": response.headers.get("Transfer-Encoding", ""),
    }


def whole_study(server: Server, facts: StudyFacts, repeats: int) -> dict[str, Any]:
    """WADO-RS of the whole study as Part 10 files; the median of ``repeats`` runs.

    The first Accept the server takes (see ``STUDY_ACCEPTS``) is used for every run.
    A run is only counted when every instance came and the body holds at least the
    bytes of the files sent.
    """
    path = server.url(f"/studies/{facts.study_uid}")
    client = Client(server.http_port)
    expected_bytes = facts.dataset.total_bytes
    runs: list[dict[str, Any]] = []
    accept = STUDY_ACCEPTS[0]
    result: dict[str, Any] = {}
    try:
        with memory(server, result):
            for _ in range(repeats):
                os.sync()
                for candidate in STUDY_ACCEPTS[STUDY_ACCEPTS.index(accept) :]:
                    try:
                        run = stream_study(client, path, candidate)
                    except HttpError as error:
                        if error.status in (400, 406) and candidate != STUDY_ACCEPTS[-1]:
                            console.print(f"  {server.name}: {error}; trying the next Accept")
                            continue
                        raise
                    accept = candidate
                    break
                if run["parts"] != len(facts.instances) or run["bytes"] < expected_bytes:
                    raise BenchError(
                        f"the study came as {run['parts']} parts, {run['bytes']:,} bytes; "
                        f"expected {len(facts.instances)} instances, ≥ {expected_bytes:,} bytes"
                    )
                runs.append(run)
    finally:
        client.close()
    median = sorted(runs, key=lambda run: run["seconds"])[(len(runs) - 1) // 2]
    return {
        **result,
        **median,
        "accept": accept,
        "instance_bytes": expected_bytes,
        "runs": runs,
        "connections_opened": client.connects,
    }


@dataclass
class Options:
    clients: int
    batch: int
    qido_repeats: int
    metadata_repeats: int
    frame_repeats: int
    retrieve_repeats: int


def run_suite(server: Server, facts: StudyFacts, options: Options) -> dict[str, Any]:
    """Every measurement against one server; a failed one is recorded with its status."""
    results: dict[str, Any] = {"errors": {}}
    server.workdir.mkdir(parents=True, exist_ok=True)

    def measure(name: str, function: Callable[[], dict[str, Any]]) -> bool:
        with console.status(f"{server.name}: {name}…"):
            try:
                results[name] = function()
            except (BenchError, OSError, http.client.HTTPException) as error:
                status = error.status if isinstance(error, HttpError) else None
                unavailable = isinstance(error, HttpError) and error.not_available
                results["errors"][name] = {
                    "message": str(error),
                    "status": status,
                    "not_available": unavailable,
                }
                colour = "yellow" if unavailable else "red"
                what = "not available" if unavailable else "failed"
                console.print(f"[{colour}]{server.name}: {name} {what}:[/{colour}] {error}")
                return False
        console.print(f"  {server.name}: {name} done")
        return True

    def stow_into_empty_archive(per_request: int) -> dict[str, Any]:
        server.start()  # fresh storage: nothing sent is a duplicate
        results.setdefault("idle", {"rss_mib": tree_rss(server.pid) / MIB})
        return stow(server, facts, options.clients, per_request)

    results["load_average_before"] = os.getloadavg()
    measure("stow_1", lambda: stow_into_empty_archive(1))
    if not measure("stow_batch", lambda: stow_into_empty_archive(options.batch)):
        # Query and retrieve still get measured on a study stored another way.
        if not measure("load_c_store", lambda: load_with_c_store(server, facts)):
            server.stop()
            return results
        results["loaded_with"] = "C-STORE (storescu), STOW-RS failed"
    else:
        results["loaded_with"] = "STOW-RS"
    study = facts.study_uid
    by_patient = "/studies?" + urlencode({"PatientID": facts.dataset.patient_id})
    repeats = options.qido_repeats
    measure("qido_study", lambda: qido(server, by_patient, repeats, STUDY_UID_TAG, {study}))
    measure(
        "qido_series",
        lambda: qido(
            server, f"/studies/{study}/series", repeats, SERIES_UID_TAG, facts.series_uids
        ),
    )
    measure(
        "qido_instances",
        lambda: qido(server, f"/studies/{study}/instances", repeats, SOP_UID_TAG, facts.sop_uids),
    )
    measure("metadata", lambda: metadata(server, facts, options.metadata_repeats))
    measure("frame", lambda: frames(server, facts, options.frame_repeats))
    measure("study", lambda: whole_study(server, facts, options.retrieve_repeats))
    results["load_average_after"] = os.getloadavg()
    server.stop()
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """What OpenVNA must reach on one row: Orthanc's figure, or an absolute one."""

    text: str
    absolute: float | None = None
    versus_orthanc: bool = False


@dataclass(frozen=True)
class Row(TableRow):
    """A row of the table, with the goal OpenVNA must reach on it (if any)."""

    goal: Goal | None = None


AT_LEAST_ORTHANC: Final = Goal("≥ Orthanc", versus_orthanc=True)
AT_MOST_ORTHANC: Final = Goal("≤ Orthanc", versus_orthanc=True)

ROWS: Final = (
    Row(
        "STOW-RS, %(clients)d clients, 1 instance/request",
        "stow_1.inst_per_s",
        "inst/s",
        True,
        goal=AT_LEAST_ORTHANC,
    ),
    Row(
        "STOW-RS, %(clients)d clients, %(batch)d instances/request",
        "stow_batch.inst_per_s",
        "inst/s",
        True,
        goal=AT_LEAST_ORTHANC,
    ),
    Row(
        "QIDO-RS /studies?PatientID=…",
        "qido_study.median_ms",
        "ms median",
        False,
        2,
        goal=AT_MOST_ORTHANC,
    ),
    Row(
        "QIDO-RS /studies/{uid}/series",
        "qido_series.median_ms",
        "ms median",
        False,
        2,
        goal=AT_MOST_ORTHANC,
    ),
    Row(
        "QIDO-RS /studies/{uid}/instances",
        "qido_instances.median_ms",
        "ms median",
        False,
        goal=AT_MOST_ORTHANC,
    ),
    Row("WADO-RS study metadata", "metadata.median_ms", "ms median", False, goal=AT_MOST_ORTHANC),
    Row(
        "WADO-RS frame", "frame.median_ms", "ms median", False, 2, goal=Goal("≤ 3 ms", absolute=3.0)
    ),
    Row("WADO-RS frame", "frame.p95_ms", "ms p95", False, 2),
    Row(
        "WADO-RS whole study",
        "study.gb_per_s",
        "GB/s",
        True,
        2,
        goal=Goal("≥ 1 GB/s", absolute=1.0),
    ),
    Row("server RSS, empty archive, idle", "idle.rss_mib", "MiB", False, 0),
    Row("server RSS peak, STOW-RS 1/request", "stow_1.rss.peak_mib", "MiB", False, 0),
    Row("  peak in 1st / 2nd half of the run", "stow_1.rss.halves", "MiB", False, 0),
    Row("server RSS peak, STOW-RS %(batch)d/request", "stow_batch.rss.peak_mib", "MiB", False, 0),
    Row("server RSS peak, study metadata", "metadata.rss.peak_mib", "MiB", False, 0),
    Row("server RSS peak, whole study", "study.rss.peak_mib", "MiB", False, 0),
)


def _error_of(results: dict[str, Any], row: Row) -> dict[str, Any] | None:
    error = results.get("errors", {}).get(row.key.split(".")[0])
    return error if isinstance(error, dict) else None


def _cell(results: dict[str, Any] | None, row: Row) -> str:
    if results is None:
        return ""
    error = _error_of(results, row)
    if error is not None and ".rss" in row.key:
        return "—"
    if error is not None:
        status = f" (HTTP {error['status']})" if error.get("status") else ""
        if error.get("not_available"):
            return f"[yellow]not available{status}[/yellow]"
        return f"[red]FAILED{status}[/red]"
    if row.key.endswith(".halves"):
        return halves(results, row.key)
    value = lookup(results, row.key)
    return "—" if value is None else f"{value:,.{row.digits}f}"


def verdict(openvna: dict[str, Any], orthanc: dict[str, Any] | None, row: Row) -> str | None:
    """``pass``, ``fail``, ``n/a`` (endpoint not available) or ``unknown`` for a row with a goal.

    A "≥/≤ Orthanc" goal compares with Orthanc in this run, or with the reference figure
    when Orthanc was not measured (or failed).
    """
    if row.goal is None:
        return None
    error = _error_of(openvna, row)
    if error is not None:
        return "n/a" if error.get("not_available") else "fail"
    ours = lookup(openvna, row.key)
    if ours is None:
        return "fail"
    if row.goal.absolute is not None:
        bar: float | None = row.goal.absolute
    else:
        bar = lookup(orthanc, row.key) if orthanc is not None else None
        bar = bar if bar is not None else REFERENCE.get(row.key)
    if bar is None:
        return "unknown"  # "≤ Orthanc" without Orthanc in the run nor a reference figure
    met = ours >= bar if row.higher_is_better else ours <= bar
    return "pass" if met else "fail"


def _goal_text(row: Row, orthanc: dict[str, Any] | None) -> str:
    if row.goal is None:
        return ""
    reference = REFERENCE.get(row.key)
    if row.goal.versus_orthanc and reference is not None:
        return f"{row.goal.text} (~{reference:g})"
    return row.goal.text


VERDICT_STYLE: Final = {
    "pass": "[green]pass[/green]",
    "fail": "[red]FAIL[/red]",
    "n/a": "[yellow]n/a[/yellow]",
    "unknown": "[dim]—[/dim]",
}


def print_table(report: dict[str, Any]) -> None:
    targets = report["targets"]
    openvna: dict[str, Any] = targets.get("OpenVNA", {})
    orthanc: dict[str, Any] | None = targets.get("Orthanc")
    table = results_table(
        report,
        "DICOMweb",
        "client and servers on one machine; MB/GB = 10^6/10^9 bytes; ratio > 1 means OpenVNA "
        "is faster; the goal is OpenVNA's (reference Orthanc figures in brackets)",
    )
    if orthanc is not None:
        version = report.get("orthanc_version", "")
        plugin = report.get("orthanc_dicomweb_version", "")
        table.add_column(f"Orthanc\n{version} / DICOMweb {plugin}", justify="right")
        table.add_column("ratio", justify="right")
    table.add_column("goal")
    table.add_column("pass", justify="center")
    for row in ROWS:
        cells = [row.label % report["options"], row.unit, _cell(openvna, row)]
        if orthanc is not None:
            cells += [_cell(orthanc, row), factor(openvna, orthanc, row)]
        result = verdict(openvna, orthanc, row)
        cells += [_goal_text(row, orthanc), "" if result is None else VERDICT_STYLE[result]]
        table.add_row(*cells)
    if not console.is_terminal:  # a log file or a pipe: do not wrap at 80 columns
        console.width = max(console.width, 150)
    console.print(table)
    for name, results in targets.items():
        if results.get("loaded_with", "STOW-RS") != "STOW-RS":
            console.print(f"[yellow]{name}: study loaded by {results['loaded_with']}[/yellow]")
        for measurement, error in results.get("errors", {}).items():
            colour = "yellow" if error.get("not_available") else "red"
            console.print(f"[{colour}]{name} {measurement}:[/{colour}] {error['message']}")
        for query in ("qido_study", "qido_series"):
            measured = results.get(query, {})
            fresh = measured.get("new_connection_median_ms")
            if fresh is not None and measured["median_ms"] - fresh > DELAYED_ACK_MS:
                console.print(
                    f"[yellow]{name} {query}: {measured['median_ms']:.1f} ms on a kept-alive "
                    f"connection but {fresh:.1f} ms on a new one: the server writes its answer "
                    "in pieces without TCP_NODELAY (Nagle + delayed ACK)[/yellow]"
                )
        if results.get("metadata", {}).get("pixel_data_inline"):
            console.print(f"[yellow]{name}: study metadata inlines the pixel data[/yellow]")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse_benchmark_args(
        argv,
        "Benchmark OpenVNA's DICOMweb (and optionally Orthanc's) from outside.",
        "also measure Orthanc (apt-get installs orthanc and orthanc-dicomweb)",
        {
            "--clients": (4, "STOW-RS clients (default 4)"),
            "--batch": (16, "instances per request, 2nd STOW row (default 16)"),
            "--qido-repeats": (50, "timed calls per QIDO query (default 50)"),
            "--metadata-repeats": (20, "timed study metadata calls (default 20)"),
            "--frame-repeats": (200, "timed frame requests (default 200)"),
            "--retrieve-repeats": (3, "whole-study retrievals (default 3)"),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    orthanc = ensure_orthanc_dicomweb() if args.orthanc else None
    dataset = load_dataset(args)
    with console.status("reading the data set's UIDs…"):
        facts = study_facts(dataset)
    options = Options(
        args.clients,
        args.batch,
        args.qido_repeats,
        args.metadata_repeats,
        args.frame_repeats,
        args.retrieve_repeats,
    )
    report = new_report(dataset, options, REFERENCE, {"frame_bytes": facts.frame_bytes})
    with work_directory(args.workdir, "dicomweb-bench-") as workdir:
        servers: list[Server] = [
            OpenVnaServer(
                "OpenVNA",
                "OPENVNA",
                workdir / "openvna",
                executable=openvna_executable(args.openvna),
            )
        ]
        if orthanc is not None:
            binary, plugin = orthanc
            report["orthanc_version"] = orthanc_version(binary)
            report["orthanc_dicomweb_plugin"] = plugin
            servers.append(
                OrthancServer(
                    "Orthanc", "ORTHANC", workdir / "orthanc", binary=binary, plugin=plugin
                )
            )

        def suite(server: Server) -> dict[str, Any]:
            if isinstance(server, OrthancServer):
                server.start()
                report["orthanc_dicomweb_version"] = server.plugin_version()
            return run_suite(server, facts, options)

        report["targets"] = measure_each(servers, suite)
    return finish(report, args.json, print_table)


if __name__ == "__main__":
    run_main(main)
