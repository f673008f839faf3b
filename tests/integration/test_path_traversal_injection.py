"""Path traversal and injection attacks (issue #5), through real protocols.

* Traversal: SOP Instance, Series and Study UIDs holding ``../``, ``..\\``, absolute
  paths, NUL, backslashes (multi-values) and 200-character values, sent over C-STORE
  (pynetdicom as SCU, with File Meta that dcmtk would not send, and dcmtk's storescu),
  over STOW-RS and in WADO-RS / QIDO-RS / WADO-URI URLs. Every one is refused with its
  status (C-STORE 0xA900, STOW-RS Failure Reason A900 in a 409, 400 or 404 for URLs),
  none with a 500; no file appears outside the storage root (a snapshot of the test's
  folders before and after, the archive's TMPDIR included, and a search for the
  marker the UIDs name), and every file under the storage root is one of its own keys.
* Injection: QIDO-RS and C-FIND (dcmtk findscu) values with quotes, ``%``, ``_``,
  ``;``, ``--``, backslash multi-values and wildcards, on SQLite and PostgreSQL: no
  error, and the results are exactly the DICOM matches (PS3.4 C.2.2.2) computed here
  independently. ``%`` and ``_`` are literal characters in DICOM: a name containing
  them matches only itself.

Each test prints how many attack cases it ran (``ATTACK-CASES <test>: <n>``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from tests.conftest import (
    ArchiveProcess,
    free_port,
    run_tool,
    stored_object_files,
    temporary_postgres_database,
)
from tests.integration.attack_cases import report_cases

pytestmark = pytest.mark.filterwarnings(
    "ignore:Invalid value:UserWarning", "ignore:The value length:UserWarning"
)

BOUNDARY = "openvna-traversal-boundary"
MULTIPART_DICOM = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
STORAGE_KEY = re.compile(r"[0-9]{8}/[0-9]{4}/[0-9a-f]{32}\.dcm")
MARKER = f"openvna-evil-{uuid.uuid4().hex[:12]}"


def part10(
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    *,
    meta_sop_uid: str | None = None,
    **attributes: str,
) -> bytes:
    """A small Secondary Capture instance; UIDs are written as given, valid or not.

    ``meta_sop_uid`` puts another SOP Instance UID in File Meta (what a C-STORE SCU
    reading the file names as Affected SOP Instance UID).
    """
    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.add_new(0x00080018, "UI", sop_uid)
    dataset.add_new(0x0020000D, "UI", study_uid)
    dataset.add_new(0x0020000E, "UI", series_uid)
    dataset.Modality = "OT"
    dataset.PatientID = attributes.pop("PatientID", "TRAVERSAL")
    dataset.PatientName = attributes.pop("PatientName", "Traversal^Test")
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    write_dataset(body, dataset)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.add_new(0x00020003, "UI", meta_sop_uid or sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = DicomBytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=False)
    return header.getvalue() + body.getvalue()


def multipart(parts: list[bytes]) -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


# -- path traversal ----------------------------------------------------------------------

EVIL_UIDS = [
    f"../../../../tmp/{MARKER}",
    f"..\\..\\..\\{MARKER}",
    f"/tmp/{MARKER}",
    f"1.2.840.10008/../../{MARKER}",
    f"1.2.3\x00/../../{MARKER}",
    "1.2.3\\4.5.6",
    "1." + "1" * 200,
    f"%2e%2e%2f{MARKER}",
    "..",
    "../../../canary.txt",
    "1.2.3 ",  # trailing space is padding, not an attack: must still be stored cleanly
]
"""Values put in turn in each of the three UIDs (the others valid)."""


def evil_instances() -> list[tuple[str, str, bytes]]:
    """(UID attribute, value, Part 10 file with it) for every value and attribute."""
    cases = []
    for value in EVIL_UIDS:
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            uids = {
                "SOPInstanceUID": generate_uid(),
                "SeriesInstanceUID": generate_uid(),
                "StudyInstanceUID": generate_uid(),
            }
            valid_sop = uids["SOPInstanceUID"]
            uids[keyword] = value
            content = part10(
                uids["SOPInstanceUID"],
                uids["StudyInstanceUID"],
                uids["SeriesInstanceUID"],
                meta_sop_uid=valid_sop,
            )
            cases.append((keyword, value, content))
    return cases


def tree(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*")}


VIEWER_PAGE = b"<!doctype html><title>viewer sentinel</title>"


@pytest.fixture
def traversal_archive(
    start_archive: Callable[..., ArchiveProcess], tmp_path: Path
) -> ArchiveProcess:
    """An archive with its own TMPDIR (part of the snapshot) and a stand-in viewer (its
    static files are served from a folder: a traversal target of their own)."""
    temporary = tmp_path / "tmpdir"
    temporary.mkdir()
    (tmp_path / "canary.txt").write_bytes(CANARY)
    viewer = tmp_path / "viewer"
    viewer.mkdir()
    (viewer / "index.html").write_bytes(VIEWER_PAGE)
    return start_archive(
        env={**os.environ, "TMPDIR": str(temporary), "OPENVNA_HTTP__VIEWER_DIR": str(viewer)}
    )


ARCHIVE_STATE = ("keys", "audit", "models", "tmp")
"""Folders of the data dir the archive itself keeps outside the storage root (key
files, audit spool...): created lazily, on the first event that needs them."""
CANARY = b"canary: a traversal must never overwrite me"


def assert_nothing_outside_storage(archive: ArchiveProcess, root: Path, before: set[str]) -> None:
    """No attack left a file outside the storage root, or one in it not named by us."""
    storage = archive.data_dir / "storage"
    data = archive.data_dir.relative_to(root).as_posix()
    strays = set()
    for path in tree(root) - before:
        inside = (root / path).resolve()
        if inside.is_relative_to(storage.resolve()) or path.endswith(".log"):
            continue
        if path.startswith(data + "/"):
            first = path.removeprefix(data + "/").split("/")[0]
            if first in ARCHIVE_STATE or first.startswith("index.sqlite"):
                continue
        strays.add(path)
    assert not strays, f"files created outside the storage root: {sorted(strays)}"
    for path in storage.rglob("*"):
        relative = path.relative_to(storage).as_posix()
        if path.is_file() and relative.split("/")[0] != "tmp" and relative != ".lock":
            assert STORAGE_KEY.fullmatch(relative), f"a stored file not named by us: {relative}"
    for place in (root, Path("/tmp"), Path.cwd(), archive.data_dir.parent.parent):
        assert not list(place.glob(f"*{MARKER}*")), f"{MARKER} appeared in {place}"
    assert not list(root.rglob(f"*{MARKER}*"))
    assert (root / "canary.txt").read_bytes() == CANARY


def test_traversal_uids_over_c_store_are_refused(
    traversal_archive: ArchiveProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
):
    archive = traversal_archive
    # send files as they are: the Affected SOP Instance UID then comes from File Meta
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = tmp_path / "evil"
    files.mkdir()
    cases = evil_instances()
    paths = []
    for number, (_, _, content) in enumerate(cases):
        path = files / f"{number:03d}.dcm"
        path.write_bytes(content)
        paths.append(path)
    before = tree(tmp_path)
    stored_before = stored_object_files(archive.data_dir)
    ae = AE(ae_title="TRAVERSAL")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="OPENVNA")
    assert assoc.is_established
    statuses = {}
    try:
        for (keyword, value, _), path in zip(cases, paths, strict=True):
            # no client-side check stops the attack: the bytes go out as written
            answer = assoc.send_c_store(path)
            statuses[(keyword, value)] = (int(answer.Status), str(answer.get("ErrorComment")))
    finally:
        assoc.release()
    for (keyword, value), (status, comment) in statuses.items():
        if value == "1.2.3 " and keyword != "SOPInstanceUID":
            assert status == 0x0000, (keyword, hex(status), comment)  # padding: stored
            continue
        # (a padded SOP Instance UID differs from the File Meta's: A900 all the same)
        assert status == 0xA900, (keyword, value, hex(status), comment)
        assert "internal error" not in comment
    # dcmtk's storescu, file by file: it sends some and refuses others itself
    sent_by_dcmtk = 0
    for path in paths:
        result = run_tool(
            "storescu", "-v", "-aec", "OPENVNA", *archive.address, str(path), check=False
        )
        output = result.stdout + result.stderr
        if "Received Store Response" in output:
            sent_by_dcmtk += 1
            value = next(v for (_, v, c) in cases if c == path.read_bytes())
            if value != "1.2.3 ":
                assert "Received Store Response (Success)" not in output, output
    stored_after = stored_object_files(archive.data_dir)
    kept = {key for key in stored_after if key not in stored_before}
    # the three space-padded controls, nothing else (storescu names the data set's own
    # SOP Instance UID, so the padded one is stored when dcmtk sends it)
    assert len(kept) == 3, kept
    assert_nothing_outside_storage(archive, tmp_path, before)
    report_cases(request, len(cases) + sent_by_dcmtk)


def test_traversal_uids_over_stow_are_refused(
    traversal_archive: ArchiveProcess, tmp_path: Path, request: pytest.FixtureRequest
):
    archive = traversal_archive
    cases = [case for case in evil_instances() if case[1] != "1.2.3 "]
    before = tree(tmp_path)
    stored_before = stored_object_files(archive.data_dir)
    response = requests.post(
        f"{archive.http_url}/dicom-web/studies",
        data=multipart([content for _, _, content in cases]),
        headers={"Content-Type": MULTIPART_DICOM, "Accept": "application/dicom+json"},
        timeout=120,
    )
    assert response.status_code == 409, response.text
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == len(cases)
    assert {item["00081197"]["Value"][0] for item in failed} == {0xA900}
    # one by one too, on the study-scoped URL that itself names a traversal
    for keyword, value, content in cases[:6]:
        single = requests.post(
            f"{archive.http_url}/dicom-web/studies/{quote(value, safe='')}",
            data=content,
            headers={"Content-Type": "application/dicom"},
            timeout=60,
        )
        assert single.status_code in (400, 404), (keyword, value, single.text)
    assert stored_object_files(archive.data_dir) == stored_before
    assert_nothing_outside_storage(archive, tmp_path, before)
    report_cases(request, len(cases) + 6)


def raw_get(archive: ArchiveProcess, url: str) -> tuple[int, bytes]:
    """GET ``url`` exactly as written: no client-side removal of dot segments."""
    connection = http.client.HTTPConnection("127.0.0.1", archive.http_port, timeout=30)
    try:
        connection.request("GET", url, headers={"Accept": "application/dicom+json, */*"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_traversal_in_dicomweb_urls_is_refused(
    traversal_archive: ArchiveProcess, tmp_path: Path, request: pytest.FixtureRequest
):
    archive = traversal_archive
    good = part10(generate_uid(), generate_uid(), generate_uid())
    stored = requests.post(
        f"{archive.http_url}/dicom-web/studies",
        data=good,
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert stored.status_code == 200
    header = dcmread(DicomBytesIO(good), force=True)
    study, series = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    before = tree(tmp_path)
    values = [
        "..",
        "../../../../etc/passwd",
        "..\\..\\..\\windows\\win.ini",
        f"/tmp/{MARKER}",
        "1.2.3\\4.5.6",
        "1." + "1" * 200,
        "%2e%2e",
        "'; DROP TABLE studies; --",
    ]
    urls = []
    for value in values:
        encoded = quote(value, safe="")
        urls += [
            f"/dicom-web/studies/{encoded}",
            f"/dicom-web/studies/{encoded}/metadata",
            f"/dicom-web/studies/{encoded}/series",
            f"/dicom-web/studies/{study}/series/{encoded}",
            f"/dicom-web/studies/{study}/series/{series}/instances/{encoded}",
            f"/dicom-web/studies/{study}/series/{series}/instances/{encoded}/frames/1",
            f"/dicom-web/studies/{study}/series/{series}/instances/{encoded}/rendered",
            f"/dicom-web/studies/{study}/series/{series}/instances/{encoded}/bulkdata/{encoded}",
            f"/dicom-web/studies?StudyInstanceUID={encoded}",
            f"/dicom-web/instances?SOPInstanceUID={encoded}",
            f"/wado?requestType=WADO&studyUID={encoded}&seriesUID={series}&objectUID={encoded}",
            f"/dicom-web/workitems/{encoded}",
        ]
    # unencoded dot segments, as a client that does not normalise them would send them
    raw = [
        "/dicom-web/studies/../../../../etc/passwd",
        f"/dicom-web/studies/{study}/series/../../../../../etc/passwd/metadata",
        "/viewer/../../../../etc/passwd",
        "/viewer/..%2f..%2f..%2f..%2fetc%2fpasswd",
    ]
    for url in urls:
        status, content = raw_get(archive, url)
        assert status < 500, (url, status, content[:300])
        search = "?" in url or url.endswith(("/series", "/instances"))
        if search and status in (200, 204):  # QIDO-RS: a search that matches nothing
            assert content.strip() in (b"", b"[]"), (url, content[:300])
        else:  # 400 invalid UID, 404 no such resource, 405 where ".." left the route
            assert 400 <= status < 500, (url, status)
        assert b"root:" not in content
    for url in raw:
        status, content = raw_get(archive, url)
        assert b"root:" not in content and b"[extensions]" not in content, url
        if url.startswith("/viewer/"):  # the viewer's client-side routes fall back to it
            assert (status, content) == (200, VIEWER_PAGE) or status == 404, (url, status)
        else:
            assert status in (400, 404), (url, status)
    assert_nothing_outside_storage(archive, tmp_path, before)
    report_cases(request, len(urls) + len(raw))


# -- injection in QIDO-RS and C-FIND ---------------------------------------------------

PATIENTS = [
    ("O'Brien^Ann", "ID'1", "Head' OR '1'='1"),
    ('Quote"Double^Bob', 'ID"2', 'Desc"2'),
    ("100%^Percent", "ID%3", "Scan 100%"),
    ("1000^Percent", "ID13", "Scan 1000"),
    ("Under_Score^X", "ID_5", "Under_score"),
    ("UnderXScore^X", "IDX5", "UnderXscore"),
    ("Semi;colon^Y", "ID;7", "Robert'); DROP TABLE studies;--"),
    ("Dash--Dash^Z", "ID--8", "-- comment"),
    ("Plain^Name", "PLAIN", "Plain"),
    ("Nul\x00Byte^Q", "ID\x00NUL", "Nul byte"),
]
"""(PatientName, PatientID, StudyDescription) of one study each. No text VR allows a
NUL, but senders do not all know: the index keeps such values without it (PostgreSQL
text cannot hold one) and the instance is stored."""

QUERIES = [
    ("PatientName", "100%^Percent"),
    ("PatientName", "100%*"),
    ("PatientName", "100*"),
    ("PatientName", "%"),
    ("PatientName", "%*"),
    ("PatientName", "*%*"),
    ("PatientName", "Under_Score^X"),
    ("PatientName", "Under_*"),
    ("PatientName", "Under?Score*"),
    ("PatientName", "*_*"),
    ("PatientName", "_*"),
    ("PatientName", "O'Brien*"),
    ("PatientName", "o'brien^ann"),
    ("PatientName", "*'*"),
    ("PatientName", '*"*'),
    ("PatientName", "' OR '1'='1"),
    ("PatientName", "' OR 1=1 --"),
    ("PatientName", "x'; DROP TABLE patients; --"),
    ("PatientName", "Semi;colon*"),
    ("PatientName", "*--*"),
    ("PatientName", "Dash--Dash^Z\\Plain^Name"),
    ("PatientName", "100%^Percent\\Under_Score^X"),
    ("PatientID", "ID%3"),
    ("PatientID", "ID%*"),
    ("PatientID", "ID_5"),
    ("PatientID", "ID_*"),
    ("PatientID", "ID?5"),
    ("PatientID", "ID'1"),
    ("PatientID", 'ID"2'),
    ("PatientID", "ID;7"),
    ("PatientID", "ID--8"),
    ("PatientID", "ID%3\\ID_5"),
    ("PatientID", "ID%3\\ID13\\nothing"),
    ("PatientID", "%"),
    ("PatientID", "I_%"),
    ("PatientID", "id_5"),
    ("PatientID", "IDNUL"),
    ("PatientName", "NulByte*"),
    ("StudyDescription", "Scan 100%"),
    ("StudyDescription", "Scan 100*"),
    ("StudyDescription", "Under_score"),
    ("StudyDescription", "under_score"),
    ("StudyDescription", "Robert'); DROP TABLE studies;--"),
    ("StudyDescription", "*DROP*"),
    ("StudyDescription", "-- comment"),
    ("StudyDescription", "*'*"),
    ("AdmittingDiagnosesDescription", "Scan 100%"),
    ("AdmittingDiagnosesDescription", "*_*"),
    ("AdmittingDiagnosesDescription", "Head' OR '1'='1"),
]
"""(attribute, value) of study-level queries, each sent over QIDO-RS and C-FIND."""

_CASE_INSENSITIVE = {"PatientName"}


def dicom_matches(attribute: str, query: str, stored: str) -> bool:
    """PS3.4 C.2.2.2 matching, written here independently of the archive: ``*`` and
    ``?`` are the only wildcards; a backslash separates values of which any may match;
    PN is matched case-insensitively (C.2.2.2.1 leaves it to the implementation)."""
    if query in ("", "*"):
        return True
    fold = attribute in _CASE_INSENSITIVE
    if fold:
        query, stored = query.upper(), stored.upper()
    values = query.split("\\")
    if len(values) > 1:
        return stored in values
    if "*" in query or "?" in query:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in query)
        return re.fullmatch(pattern, stored, flags=re.DOTALL) is not None
    return stored == query


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def injection_archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ArchiveProcess, dict[str, tuple[str, str, str]]]]:
    """An archive (SQLite, then PostgreSQL) holding one study per entry of PATIENTS;
    yields it and the studies by Study Instance UID."""
    with (
        temporary_postgres_database() if request.param == "postgresql" else contextlib.nullcontext()
    ) as database_url:
        env = dict(os.environ)
        if database_url:
            env["OPENVNA_DATABASE_URL"] = database_url
        directory = tmp_path_factory.mktemp(f"injection-{request.param}")
        archive = ArchiveProcess(
            directory / "data", free_port(), "OPENVNA", None, directory / "log", (), env
        )
        archive.start()
        try:
            studies = {}
            parts = []
            for name, patient_id, description in PATIENTS:
                study = generate_uid()
                studies[study] = (name, patient_id, description)
                parts.append(
                    part10(
                        generate_uid(),
                        study,
                        generate_uid(),
                        PatientName=name,
                        PatientID=patient_id,
                        StudyDescription=description,
                        AdmittingDiagnosesDescription=description,
                    )
                )
            stored = requests.post(
                f"{archive.http_url}/dicom-web/studies",
                data=multipart(parts),
                headers={"Content-Type": MULTIPART_DICOM, "Accept": "application/dicom+json"},
                timeout=120,
            )
            assert stored.status_code == 200, stored.text
            yield archive, studies
        finally:
            archive.stop()


def expected_studies(
    studies: dict[str, tuple[str, str, str]], attribute: str, value: str
) -> set[str]:
    column = {
        "PatientName": 0,
        "PatientID": 1,
        "StudyDescription": 2,
        "AdmittingDiagnosesDescription": 2,
    }
    return {
        uid
        for uid, row in studies.items()
        if dicom_matches(attribute, value, row[column[attribute]].replace("\x00", ""))
    }


def qido_studies(archive: ArchiveProcess, attribute: str, value: str) -> set[str]:
    response = requests.get(
        f"{archive.http_url}/dicom-web/studies",
        params={attribute: value, "limit": "1000"},
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    assert response.status_code in (200, 204), (attribute, value, response.text)
    if response.status_code == 204 or not response.content:
        return set()
    return {item["0020000D"]["Value"][0] for item in response.json()}


def cfind_studies(archive: ArchiveProcess, out: Path, attribute: str, value: str) -> set[str]:
    for old in out.glob("rsp*"):
        old.unlink()
    result = run_tool(
        "findscu",
        "-S",
        "-X",
        "-od",
        str(out),
        "-aec",
        "OPENVNA",
        *archive.address,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"{attribute}={value}",
        "-k",
        "StudyInstanceUID",
    )
    output = result.stdout + result.stderr
    assert "Failed" not in output and "Error" not in output, output
    return {str(dcmread(path).StudyInstanceUID) for path in sorted(out.glob("rsp*"))}


def test_query_values_are_matched_literally_not_as_sql(
    injection_archive: tuple[ArchiveProcess, dict[str, tuple[str, str, str]]],
    tmp_path: Path,
    request: pytest.FixtureRequest,
):
    archive, studies = injection_archive
    cases = 0
    mismatches = []
    for attribute, value in QUERIES:
        expected = expected_studies(studies, attribute, value)
        qido = qido_studies(archive, attribute, value)
        cfind = cfind_studies(archive, tmp_path, attribute, value)
        cases += 2
        for protocol, found in (("QIDO-RS", qido), ("C-FIND", cfind)):
            if found != expected:
                names = {uid: studies[uid][0] for uid in found ^ expected}
                mismatches.append(f"{protocol} {attribute}={value!r}: differs on {names}")
    # the index is intact after every attempt at injecting SQL
    assert qido_studies(archive, "PatientName", "*") == set(studies)
    assert not mismatches, "\n".join(mismatches)
    report_cases(request, cases)
