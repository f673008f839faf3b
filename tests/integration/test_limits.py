"""Hard limits where input enters (issue #5 item 7), attacked through real protocols.

* HTTP: requests per client address (429 with Retry-After, shared by every server
  process), request body size for everything but STOW-RS (413, declared or chunked),
  multipart part count and part headers (413 / 400), NUL in URLs (400).
* DICOM: associations open at once per peer address (A-ASSOCIATE-RJ rejected-transient,
  local-limit-exceeded; the associations already open keep working).
* XML: STOW-RS and UPS-RS bodies in application/dicom+xml are refused (415) and an XXE
  payload never makes the archive fetch its external entity (a local HTTP server stands
  in for the attacker's and must never be contacted); no module parses XML with a
  parser that resolves entities.
* Decompression bombs: a Deflated Explicit VR Little Endian data set (PS3.5 A.5) over
  C-STORE (dcmtk storescu) and STOW-RS, and a gzip-encoded STOW-RS body, are refused
  (0xA700 / 409 with Failure Reason A700 / 413) before they inflate, and nothing is
  stored.

Each test prints how many attack cases it ran (``ATTACK-CASES <test>: <n>``).
"""

from __future__ import annotations

import ast
import http.client
import http.server
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from openvna.process_shared import SharedTable, table_key
from openvna.sample import GeneratedStudy
from openvna.web.limits import RateLimiter
from tests.conftest import (
    ROOT,
    ArchiveProcess,
    free_port,
    run_tool,
    stored_object_files,
    wait_until,
)
from tests.integration.attack_cases import report_cases

Samples = tuple[Path, list[GeneratedStudy]]

BOUNDARY = "openvna-limits-boundary"
MULTIPART_DICOM = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
JSON_BODY_BYTES = 2048
MULTIPART_MAX_PARTS = 3
ASSOCIATIONS_PER_HOST = 2
MAX_DATASET_BYTES = 40 * 1024 * 1024
DEFLATED = "1.2.840.10008.1.2.1.99"


def multipart(parts: list[bytes], headers: str = "Content-Type: application/dicom") -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    """An archive with small limits, served by two processes (limits must hold across
    them)."""
    directory = tmp_path_factory.mktemp("limits")
    env = {
        **os.environ,
        "OPENVNA_DIMSE__PROCESSES": "2",
        "OPENVNA_SECURITY__LIMITS__JSON_BODY_BYTES": str(JSON_BODY_BYTES),
        "OPENVNA_SECURITY__LIMITS__MULTIPART_MAX_PARTS": str(MULTIPART_MAX_PARTS),
        "OPENVNA_SECURITY__LIMITS__ASSOCIATIONS_PER_HOST": str(ASSOCIATIONS_PER_HOST),
        "OPENVNA_INGEST__MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
    }
    archive = ArchiveProcess(
        directory / "data", free_port(), "OPENVNA", None, directory / "log", (), env
    )
    archive.start()
    yield archive
    archive.stop()


# -- requests per client address ---------------------------------------------------------


def get_from(archive: ArchiveProcess, path: str, source: str = "127.0.0.1") -> tuple[int, Any]:
    """GET on a new connection (so requests spread over the server processes) from the
    loopback address ``source``."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", archive.http_port, timeout=30, source_address=(source, 0)
    )
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read()
        return response.status, (response.getheader("Retry-After"), body)
    finally:
        connection.close()


def test_requests_beyond_the_budget_get_429_with_retry_after(
    start_archive: Callable[..., ArchiveProcess], request: pytest.FixtureRequest
):
    budget = 20
    archive = start_archive(
        env={
            **os.environ,
            "OPENVNA_DIMSE__PROCESSES": "2",
            "OPENVNA_SECURITY__LIMITS__REQUESTS_PER_MINUTE": str(budget),
        }
    )
    statuses = [get_from(archive, "/api/health")[0] for _ in range(budget + 5)]
    # the bucket refills one request per 3 s: a slow burst may earn one more
    assert statuses[:budget] == [200] * budget
    assert statuses.count(200) <= budget + 1
    assert statuses[-1] == 429
    status, (retry_after, body) = get_from(archive, "/dicom-web/studies")
    assert status == 429, "every route counts against the same budget"
    assert retry_after is not None and 1 <= int(retry_after) <= 60 // budget
    refusal = json.loads(body)
    assert refusal["status"] == 429
    assert "requests_per_minute" in refusal["error"]
    # another client address has a budget of its own
    assert get_from(archive, "/api/health", source="127.0.0.2")[0] == 200
    # and the refused client is served again once a request has been refilled
    wait_until(lambda: get_from(archive, "/api/health")[0] == 200, 2 + 60 / budget, "refill")
    report_cases(request, len(statuses) + 1)


def test_token_bucket_holds_the_budget_and_refills_at_its_rate(tmp_path: Path):
    limiter = RateLimiter(60, str(tmp_path), table=SharedTable(slots=64, fields=3))
    taken = [limiter.take("10.0.0.1", now=100.0) for _ in range(61)]
    assert all(allowed for allowed, _, _ in taken[:60])
    assert taken[60] == (False, 1, True), "one request a second, first refusal of a burst"
    assert limiter.take("10.0.0.1", now=100.5)[:2] == (False, 1)
    assert limiter.take("10.0.0.1", now=100.5)[2] is False, "one alert per burst"
    assert limiter.take("10.0.0.2", now=100.5)[0], "another address has its own bucket"
    assert limiter.take("10.0.0.1", now=101.01)[0], "refilled after a second"
    assert not limiter.take("10.0.0.1", now=101.02)[0]


def test_shared_table_is_shared_with_forked_processes():
    table = SharedTable(slots=64, fields=1)
    key = table_key("a forked worker's client")
    child = os.fork()
    if child == 0:  # the worker: count something and leave
        with table.locked():
            slot = table.claim(key, lambda slot: False)
            assert slot is not None
            table.set(slot, 0, 42.0)
        os._exit(0)
    os.waitpid(child, 0)
    with table.locked() as held:
        assert held
        slot = table.find(key)
        assert slot is not None and table.get(slot, 0) == 42.0


# -- request bodies ------------------------------------------------------------------------


def test_oversized_bodies_get_413_except_stow(
    tight: ArchiveProcess, sample_studies: Samples, request: pytest.FixtureRequest
):
    url = tight.http_url
    big = json.dumps({"by": "tester", "reason": "x" * (2 * JSON_BODY_BYTES)}).encode()
    cases = 0
    for path in ("/api/ai/stop", "/dicom-web/workitems"):
        declared = requests.post(
            url + path, data=big, headers={"Content-Type": "application/json"}, timeout=30
        )
        chunked = requests.post(  # a generator body is sent chunked, with no length
            url + path,
            data=iter([big[:1000], big[1000:]]),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        cases += 2
        for response in (declared, chunked):
            assert response.status_code == 413, (path, response.text)
            assert "json_body_bytes" in response.json()["error"]
    small = requests.post(url + "/api/ai/stop", json={"by": "tester"}, timeout=30)
    assert small.status_code == 200, small.text
    assert requests.post(url + "/api/ai/start", json={"by": "tester"}, timeout=30).ok
    # STOW-RS bodies are instances, capped by http.max_request_bytes instead
    instance = sample_studies[1][0].paths[0].read_bytes()
    assert len(instance) > JSON_BODY_BYTES
    stored = requests.post(
        url + "/dicom-web/studies",
        data=multipart([instance]),
        headers={"Content-Type": MULTIPART_DICOM, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    report_cases(request, cases)


def test_multipart_part_count_and_part_headers_are_limited(
    tight: ArchiveProcess, sample_studies: Samples, request: pytest.FixtureRequest
):
    url = tight.http_url + "/dicom-web/studies"
    files = [path.read_bytes() for study in sample_studies[1] for path in study.paths]
    headers = {"Content-Type": MULTIPART_DICOM, "Accept": "application/dicom+json"}
    within = requests.post(
        url, data=multipart(files[:MULTIPART_MAX_PARTS]), headers=headers, timeout=60
    )
    assert within.status_code == 200, within.text
    beyond = requests.post(
        url, data=multipart(files[: MULTIPART_MAX_PARTS + 3]), headers=headers, timeout=60
    )
    assert beyond.status_code == 413, beyond.text
    assert "multipart_max_parts" in beyond.json()["error"]
    # many empty parts cost the server nothing before the limit refuses them
    empty = requests.post(url, data=multipart([b""] * 5000), headers=headers, timeout=60)
    assert empty.status_code == 413, empty.text
    huge_header = multipart([files[0]], headers="X-Padding: " + "a" * 20000)
    refused = requests.post(url, data=huge_header, headers=headers, timeout=60)
    assert refused.status_code == 400 and "headers exceed" in refused.json()["error"]
    long_boundary = "b" * 71
    too_long = requests.post(
        url,
        data=multipart([files[0]]).replace(BOUNDARY.encode(), long_boundary.encode()),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={long_boundary}'
        },
        timeout=60,
    )
    assert too_long.status_code == 400 and "70" in too_long.json()["error"]
    report_cases(request, 4)


def test_nul_in_urls_is_refused(tight: ArchiveProcess, request: pytest.FixtureRequest):
    paths = [
        "/dicom-web/studies?PatientName=a%00b",
        "/dicom-web/studies/1.2%00.3/series",
        "/dicom-web/workitems/1.2%00",
        "/api/studies?PatientID=%00",
        "/wado?requestType=WADO&studyUID=1%002&seriesUID=1&objectUID=2",
    ]
    for path in paths:
        response = requests.get(tight.http_url + path, timeout=30)
        assert response.status_code == 400, (path, response.text)
        assert "NUL" in response.json()["error"]
    report_cases(request, len(paths))


# -- associations per host ---------------------------------------------------------------


def associate(archive: ArchiveProcess, source: str = "127.0.0.1") -> Association:
    ae = AE(ae_title="LIMITSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    return ae.associate("127.0.0.1", archive.port, ae_title="OPENVNA", bind_address=(source, 0))


def test_associations_beyond_the_per_host_limit_are_rejected(
    tight: ArchiveProcess, request: pytest.FixtureRequest
):
    held = [associate(tight) for _ in range(ASSOCIATIONS_PER_HOST)]
    try:
        assert all(assoc.is_established for assoc in held)
        extra = associate(tight)
        assert extra.is_rejected
        rejection = extra.acceptor.primitive
        assert rejection is not None
        # PS3.8 9.3.4: rejected-transient, service-provider (presentation), local limit
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
        # dcmtk's echoscu is refused the same way and says why
        echo = run_tool("echoscu", "-to", "10", "-aec", "OPENVNA", *tight.address, check=False)
        assert echo.returncode != 0
        assert "local-limit-exceeded" in (echo.stdout + echo.stderr).lower().replace(" ", "-")
        # the associations already open keep working
        for assoc in held:
            assert assoc.send_c_echo().Status == 0x0000
        # another address has a limit of its own
        other = associate(tight, source="127.0.0.2")
        assert other.is_established
        other.release()
        # once one ends, the host may open another
        held.pop().release()
        wait_until(lambda: _established_then_released(tight), 10, "a freed association slot")
    finally:
        for assoc in held:
            assoc.release()
    report_cases(request, 2)


def _established_then_released(archive: ArchiveProcess) -> bool:
    assoc = associate(archive)
    if not assoc.is_established:
        return False
    assoc.release()
    return True


# -- XML: 415, and no external entity is ever fetched ------------------------------------


class _Attacker(http.server.BaseHTTPRequestHandler):
    contacted: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.contacted.append(self.path)
        body = b'<!ENTITY exfiltrated "pwned">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def attacker() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server standing in for the attacker's; yields (URL, paths asked)."""
    _Attacker.contacted = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Attacker.contacted
    server.shutdown()
    server.server_close()


def xxe_payloads(base: str) -> list[bytes]:
    attribute = (
        '<DicomAttribute tag="00100010" vr="PN" keyword="PatientName">'
        '<PersonName number="1"><Alphabetic><FamilyName>&xxe;</FamilyName></Alphabetic>'
        "</PersonName></DicomAttribute>"
    )
    model = '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
    return [
        (
            f'<?xml version="1.0"?><!DOCTYPE NativeDicomModel [<!ENTITY xxe SYSTEM '
            f'"{base}/entity">]>{model}{attribute}</NativeDicomModel>'
        ).encode(),
        (
            f'<?xml version="1.0"?><!DOCTYPE NativeDicomModel [<!ENTITY % remote SYSTEM '
            f'"{base}/dtd"> %remote;]>{model}{attribute.replace("&xxe;", "x")}'
            "</NativeDicomModel>"
        ).encode(),
        (
            '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
            '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
            f"{model}{attribute.replace('&xxe;', '&lol3;')}</NativeDicomModel>"
        ).encode(),
    ]


def test_xml_bodies_are_refused_and_never_resolve_entities(
    tight: ArchiveProcess,
    attacker: tuple[str, list[str]],
    request: pytest.FixtureRequest,
):
    base, contacted = attacker
    url = tight.http_url + "/dicom-web"
    cases = 0
    for payload in xxe_payloads(base):
        attempts = [
            ("POST", "/studies", "application/dicom+xml", payload),
            (
                "POST",
                "/studies",
                f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}',
                multipart([payload], "Content-Type: application/dicom+xml"),
            ),
            ("POST", "/workitems", "application/dicom+xml", payload),
            ("POST", f"/workitems/{generate_uid()}", "application/dicom+xml", payload),
            ("PUT", f"/workitems/{generate_uid()}/state", "application/dicom+xml", payload),
        ]
        for method, path, content_type, body in attempts:
            response = requests.request(
                method, url + path, data=body, headers={"Content-Type": content_type}, timeout=30
            )
            cases += 1
            assert response.status_code == 415, (path, content_type, response.text)
        # an XML part inside a DICOM JSON request is not metadata: nothing to store
        mixed = requests.post(
            url + "/studies",
            data=multipart([payload], "Content-Type: application/dicom+xml"),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom+json"; '
                f"boundary={BOUNDARY}"
            },
            timeout=30,
        )
        cases += 1
        assert mixed.status_code == 400, mixed.text
    assert contacted == [], f"the archive fetched an external entity: {contacted}"
    report_cases(request, cases)


UNSAFE_XML_MODULES = ("xml.dom", "xml.sax", "xml.parsers", "lxml", "xmltodict")
"""Parser modules that resolve entities or DTDs unless told not to (``xml.sax.saxutils``
only escapes text and is allowed)."""
ETREE_PARSERS = {"fromstring", "fromstringlist", "parse", "iterparse", "XML", "XMLID"}
ETREE_PARSERS |= {"XMLParser", "XMLPullParser"}
"""What of ``xml.etree`` parses; building and writing XML with it is safe."""


def unsafe_xml_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each unsafe XML parser a module imports or calls: any XML parsing
    must go through ``defusedxml``."""
    tree = ast.parse(source)
    etree_names: set[str] = set()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("xml.etree"):
                    etree_names.add(alias.asname or alias.name)
                elif alias.name.startswith(UNSAFE_XML_MODULES):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            for alias in node.names:
                name = f"{module}.{alias.name}"
                if module.startswith("xml.etree") or name.startswith("xml.etree"):
                    if alias.name in ETREE_PARSERS:
                        found.append((node.lineno, f"from {module} import {alias.name}"))
                    else:
                        etree_names.add(alias.asname or alias.name)
                elif name.startswith(UNSAFE_XML_MODULES) and not name.startswith(
                    "xml.sax.saxutils"
                ):
                    found.append((node.lineno, f"from {module} import {alias.name}"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ETREE_PARSERS
            and ast.unparse(node.value) in etree_names
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_unsafe_xml_detection_finds_stdlib_parsing():
    assert unsafe_xml_uses("from xml.etree.ElementTree import fromstring")
    assert unsafe_xml_uses("import xml.etree.ElementTree as ET\nET.parse('f')")
    assert unsafe_xml_uses("from xml.etree import ElementTree\nElementTree.XML('<a/>')")
    assert unsafe_xml_uses("from xml.dom import minidom")
    assert unsafe_xml_uses("import lxml.etree")
    assert not unsafe_xml_uses("from xml.etree import ElementTree\nElementTree.Element('a')")
    assert not unsafe_xml_uses("from xml.sax.saxutils import escape")
    assert not unsafe_xml_uses("from defusedxml.ElementTree import fromstring")


def test_no_module_parses_xml_with_an_unsafe_parser():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sorted((ROOT / "openvna").rglob("*.py"))
        for line, what in unsafe_xml_uses(path.read_text())
    ]
    assert not offenders, "parse XML with defusedxml:\n" + "\n".join(offenders)


# -- decompression bombs -------------------------------------------------------------------


def deflated_instance(pixel_bytes: int, pattern: Callable[[int], bytes]) -> tuple[bytes, str]:
    """A Part 10 file in Deflated Explicit VR Little Endian (PS3.5 A.5) whose Pixel Data
    is ``pixel_bytes`` long, made of ``pattern(1 MiB)`` blocks; (file, SOP Instance UID).

    Deflated in 1 MiB steps, so making a bomb never holds it inflated.
    """
    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = "BOMB"
    dataset.PatientName = "Bomb^Deflate"
    dataset.Modality = "OT"
    dataset.Rows = pixel_bytes // 4096
    dataset.Columns = 4096
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    encoded = DicomBytesIO()
    encoded.is_little_endian = True
    encoded.is_implicit_VR = False
    write_dataset(encoded, dataset)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_bytes)
    pieces = [compressor.compress(encoded.getvalue() + pixel_header)]
    block = 1024 * 1024
    content = pattern(block)
    for _ in range(pixel_bytes // block):
        pieces.append(compressor.compress(content))
    pieces.append(compressor.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = DEFLATED
    header = DicomBytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)
    return header.getvalue() + b"".join(pieces), str(dataset.SOPInstanceUID)


def zeros(size: int) -> bytes:
    return bytes(size)


def sparse_noise(size: int) -> bytes:
    """16 random bytes per KiB, zeros elsewhere: deflates about 40:1, under the ratio
    limit, so only the size limit can stop it."""
    rng = np.random.default_rng(size)
    data = np.zeros(size, dtype=np.uint8)
    data.reshape(-1, 1024)[:, :16] = rng.integers(0, 256, (size // 1024, 16), dtype=np.uint8)
    return data.tobytes()


def _not_stored(archive: ArchiveProcess, before: dict[str, Path], sop_uid: str) -> None:
    assert stored_object_files(archive.data_dir) == before, "nothing may be stored"
    found = requests.get(
        f"{archive.http_url}/dicom-web/instances", params={"SOPInstanceUID": sop_uid}, timeout=30
    )
    assert found.status_code == 200 and found.json() == []


def test_deflate_bombs_over_c_store_are_refused(
    tight: ArchiveProcess, tmp_path: Path, request: pytest.FixtureRequest
):
    # ratio: 36 MiB of zeros deflate about 1000:1; refused past 32 MiB, at 200:1
    # size: 48 MiB of sparse noise deflate about 40:1; refused at 40 MiB
    bombs = {
        "ratio": (36 * 1024 * 1024, zeros, "max_compression_ratio"),
        "size": (48 * 1024 * 1024, sparse_noise, "max_dataset_bytes"),
    }
    for name, (size, pattern, limit) in bombs.items():
        content, sop_uid = deflated_instance(size, pattern)
        assert len(content) * 30 < size, f"the {name} bomb is small on the wire"
        bomb = tmp_path / f"{name}.dcm"
        bomb.write_bytes(content)
        before = stored_object_files(tight.data_dir)
        # -xd: propose Deflated Explicit VR Little Endian first, so it travels deflated
        sent = run_tool(
            "storescu",
            "-v",
            "-xd",
            "+cl",
            "1",
            "-aec",
            "OPENVNA",
            *tight.address,
            str(bomb),
            check=False,
        )
        output = sent.stdout + sent.stderr
        assert "A700" in output.upper() or "OUTOFRESOURCES" in output.upper(), output
        _not_stored(tight, before, sop_uid)
        log = " ".join(tight.log_path.read_text(errors="replace").split())  # unwrapped
        assert limit in log, f"the refusal names {limit}"
    report_cases(request, len(bombs))


def test_deflate_bombs_over_stow_are_refused(tight: ArchiveProcess, request: pytest.FixtureRequest):
    url = tight.http_url + "/dicom-web/studies"
    headers = {"Content-Type": MULTIPART_DICOM, "Accept": "application/dicom+json"}
    # a Deflated data set in a Part 10 part: that instance fails with A700 (none stored)
    content, sop_uid = deflated_instance(36 * 1024 * 1024, zeros)
    before = stored_object_files(tight.data_dir)
    response = requests.post(url, data=multipart([content]), headers=headers, timeout=120)
    assert response.status_code == 409, response.text
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xA700]
    assert failed[0]["00081155"]["Value"] == [sop_uid], "named from its File Meta"
    _not_stored(tight, before, sop_uid)
    # a gzip-encoded body that inflates 1000:1: refused while it is being received
    plain_instance, gzip_uid = deflated_instance(4096, zeros)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = multipart([plain_instance + b"\x00" * (64 * 1024 * 1024)])
    encoded = compressor.compress(body) + compressor.flush()
    response = requests.post(
        url, data=encoded, headers={**headers, "Content-Encoding": "gzip"}, timeout=120
    )
    assert response.status_code == 413, response.text
    assert "max_compression_ratio" in response.json()["error"]
    _not_stored(tight, before, gzip_uid)
    report_cases(request, 2)
