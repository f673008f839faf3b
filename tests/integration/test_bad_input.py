"""Bad input is refused cleanly: a clear status, nothing partial stored, the server keeps serving.

DIMSE cases talk to a real ``openvna serve`` process: dcmtk's storescu where it is willing
to send the broken instance, pynetdicom as the peer where storescu refuses (a data set
without SOP Instance UID, a request whose Affected SOP Instance UID differs from the data
set), and a raw TCP socket for an association that dies in the middle of a PDU. Import
cases run the real ``openvna import`` command line.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import struct
import subprocess
import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from openvna.sample import GeneratedStudy
from tests.conftest import (
    ArchiveProcess,
    dataset_bytes,
    openvna_command,
    run_tool,
    stored_object_files,
    wait_until,
)

pytestmark = pytest.mark.integration

Samples = tuple[Path, list[GeneratedStudy]]
INDEX_TABLES = ("patients", "studies", "series", "instances")


# -- helpers ------------------------------------------------------------------------------


def ct_slice(sample_studies: Samples, index: int = 0) -> Path:
    """A small (about 34 kB) CT slice of the session's synthetic samples."""
    _root, studies = sample_studies
    return next(study for study in studies if study.modality == "CT").paths[index]


def largest_sample(sample_studies: Samples) -> Path:
    _root, studies = sample_studies
    return max((path for study in studies for path in study.paths), key=lambda p: p.stat().st_size)


def index_counts(data_dir: Path) -> dict[str, int]:
    connection = sqlite3.connect(data_dir / "index.sqlite")
    try:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in INDEX_TABLES
        }
    finally:
        connection.close()


def stored_instance_uids(data_dir: Path) -> list[str]:
    connection = sqlite3.connect(data_dir / "index.sqlite")
    try:
        return [row[0] for row in connection.execute("SELECT sop_instance_uid FROM instances")]
    finally:
        connection.close()


def storage_files(data_dir: Path) -> list[Path]:
    """Committed objects (everything under storage/ except temp files and the lock)."""
    return sorted(stored_object_files(data_dir).values())


def temp_files(data_dir: Path) -> list[Path]:
    tmp = data_dir / "storage" / "tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


def assert_nothing_stored(data_dir: Path) -> None:
    assert index_counts(data_dir) == dict.fromkeys(INDEX_TABLES, 0)
    assert storage_files(data_dir) == []
    wait_until(lambda: temp_files(data_dir) == [], 10, "storage/tmp to be empty")


def write_variant(
    source: Path,
    target: Path,
    *,
    sop_instance_uid: str | None = "",
    meta_sop_instance_uid: str | None = None,
) -> Path:
    """Copy ``source`` with SOPInstanceUID changed (``None``: removed; ``""``: kept).

    ``meta_sop_instance_uid`` sets the File Meta's Media Storage SOP Instance UID, which
    pynetdicom sends as the request's Affected SOP Instance UID for a file.
    """
    ds = dcmread(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs we want
        if sop_instance_uid is None:
            del ds.SOPInstanceUID
        elif sop_instance_uid:
            ds.SOPInstanceUID = sop_instance_uid
        if meta_sop_instance_uid is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = meta_sop_instance_uid
        ds.save_as(target)
    return target


def storescu(
    archive: ArchiveProcess, path: Path, *extra: str
) -> tuple[int | None, str, subprocess.CompletedProcess[str]]:
    """Send one file with dcmtk storescu; returns (DIMSE status, Error Comment, result)."""
    result = run_tool(
        "storescu", "-d", *extra, "-aec", archive.ae_title, *archive.address, str(path), check=False
    )
    output = result.stdout + result.stderr
    found = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)
    comment = re.search(r"\(0000,0902\) LO \[(.*?)\]", output)
    return (int(found.group(1), 16) if found else None, comment.group(1) if comment else "", result)


def pynetdicom_store(
    archive: ArchiveProcess, path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """Send ``path`` as stored in the file (no re-encoding, no checks) with pynetdicom.

    With ``STORE_SEND_CHUNKED_DATASET`` pynetdicom takes the Affected SOP Class/Instance
    UIDs from the File Meta and streams the data set bytes unchanged, so it sends what
    storescu refuses to send.
    """
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title="BADSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", archive.port, ae_title=archive.ae_title)
    assert assoc.is_established, "pynetdicom could not associate with the archive"
    try:
        answer = assoc.send_c_store(path)
    finally:
        assoc.release()
        ae.shutdown()
    assert "Status" in answer, "no C-STORE response from the archive"
    return int(answer.Status), str(answer.get("ErrorComment", ""))


def assert_still_serving(archive: ArchiveProcess, good: Path) -> None:
    """C-ECHO answers and a valid instance is stored (one more index row, file on disk)."""
    assert archive.process is not None and archive.process.poll() is None, "archive died"
    assert archive.echo_ok(), "C-ECHO failed after the bad input"
    before = index_counts(archive.data_dir)["instances"]
    status, comment, _result = storescu(archive, good)
    assert status == 0x0000, f"valid C-STORE answered {status!r} {comment}"
    assert index_counts(archive.data_dir)["instances"] == before + 1
    assert str(dcmread(good, stop_before_pixels=True).SOPInstanceUID) in stored_instance_uids(
        archive.data_dir
    )
    stored = storage_files(archive.data_dir)
    assert any(dataset_bytes(path) == dataset_bytes(good) for path in stored)


# -- DIMSE ------------------------------------------------------------------------------


def test_store_without_sop_instance_uid_fails_a900(
    archive: ArchiveProcess,
    sample_studies: Samples,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = ct_slice(sample_studies)
    bad = write_variant(good, tmp_path / "no-uid.dcm", sop_instance_uid=None)
    # storescu refuses to send it ("No SOP Class or Instance UID in file"), so pynetdicom
    # does, the Affected SOP Instance UID taken from the File Meta.
    status, comment = pynetdicom_store(archive, bad, monkeypatch)
    assert status == 0xA900
    assert "SOPInstanceUID" in comment and "missing" in comment
    assert_nothing_stored(archive.data_dir)
    assert_still_serving(archive, good)


def test_store_invalid_uid_fails_a900(
    archive: ArchiveProcess,
    sample_studies: Samples,
    tmp_path: Path,
) -> None:
    good = ct_slice(sample_studies)
    for number, invalid in enumerate(("1.2.03.4", "1.2.abc.4", "1.2..4")):
        bad = write_variant(good, tmp_path / f"bad-uid-{number}.dcm", sop_instance_uid=invalid)
        status, comment, _result = storescu(archive, bad)
        assert status == 0xA900, f"{invalid!r}: status {status!r}"
        assert "SOPInstanceUID" in comment and invalid in comment and "not a valid UID" in comment
    assert_nothing_stored(archive.data_dir)
    assert_still_serving(archive, good)


def test_affected_sop_instance_uid_mismatch_fails_a900(
    archive: ArchiveProcess,
    sample_studies: Samples,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = ct_slice(sample_studies)
    bad = write_variant(
        good,
        tmp_path / "mismatch.dcm",
        sop_instance_uid=generate_uid(),
        meta_sop_instance_uid=generate_uid(),
    )
    status, comment = pynetdicom_store(archive, bad, monkeypatch)
    assert status == 0xA900
    assert "Affected SOP Instance UID" in comment
    assert_nothing_stored(archive.data_dir)
    assert_still_serving(archive, good)


def test_oversize_dataset_fails_a700(
    start_archive: Callable[..., ArchiveProcess],
    sample_studies: Samples,
) -> None:
    archive = start_archive(env={**os.environ, "OPENVNA_INGEST__MAX_DATASET_BYTES": "100000"})
    big = largest_sample(sample_studies)
    assert big.stat().st_size > 100_000
    status, comment, _result = storescu(archive, big)
    assert status == 0xA700
    assert "exceeds the limit of 100000 bytes" in comment
    assert_nothing_stored(archive.data_dir)
    good = ct_slice(sample_studies)
    assert good.stat().st_size < 100_000
    assert_still_serving(archive, good)


# -- an association that dies in the middle of a PDU -------------------------------------


class RawAssociation:
    """A real A-ASSOCIATE over a plain socket, PDUs encoded by pynetdicom, sent by hand."""

    def __init__(self, archive: ArchiveProcess, instance: Path) -> None:
        from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import (
            A_ASSOCIATE,
            ImplementationClassUIDNotification,
            MaximumLengthNotification,
        )
        from pynetdicom.presentation import build_context

        self.instance = instance
        self.meta = dcmread(instance, stop_before_pixels=True).file_meta
        context = build_context(self.meta.MediaStorageSOPClassUID, [self.meta.TransferSyntaxUID])
        context.context_id = 1
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = 16384
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = generate_uid()
        request = A_ASSOCIATE()
        request.application_context_name = "1.2.840.10008.3.1.1.1"
        request.calling_ae_title = "DROPPER"
        request.called_ae_title = archive.ae_title
        request.user_information = [maximum, implementation]
        request.presentation_context_definition_list = [context]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(request)

        self.sock = socket.create_connection(("127.0.0.1", archive.port), timeout=30)
        self.sock.sendall(pdu.encode())
        answer = self._read_pdu()
        assert answer[0] == 0x02, f"association not accepted (PDU type 0x{answer[0]:02X})"
        accept = A_ASSOCIATE_AC()
        accept.decode(answer)
        assert [(cx.context_id, cx.result) for cx in accept.presentation_context] == [(1, 0)]

    def _read_pdu(self) -> bytes:
        data = b""
        while len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
            chunk = self.sock.recv(65536)
            assert chunk, "archive closed the connection"
            data += chunk
        return data

    def c_store_pdus(self, max_pdu: int = 16384) -> list[bytes]:
        """The P-DATA-TF PDUs of a C-STORE-RQ for the instance (command, then data set)."""
        from pynetdicom.dimse_messages import C_STORE_RQ
        from pynetdicom.dimse_primitives import C_STORE
        from pynetdicom.pdu import P_DATA_TF

        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = self.meta.MediaStorageSOPClassUID
        request.AffectedSOPInstanceUID = self.meta.MediaStorageSOPInstanceUID
        request.Priority = 0
        request.DataSet = BytesIO(dataset_bytes(self.instance))
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        pdus = []
        for primitive in message.encode_msg(1, max_pdu):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            pdus.append(pdu.encode())
        return pdus

    def drop(self) -> None:
        """Close abruptly: SO_LINGER 0 sends a TCP RST, no A-RELEASE, no A-ABORT."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def drop_mid_pdu(archive: ArchiveProcess, instance: Path) -> None:
    """Send the C-STORE command and one data set fragment, then half a 1 MB PDU, then RST."""
    raw = RawAssociation(archive, instance)
    pdus = raw.c_store_pdus()
    assert len(pdus) > 3, "the instance must span several PDUs"
    command, first_fragment = pdus[0], pdus[1]
    assert command[6 + 5] & 0x01 == 0x01, "first PDU must carry the command set"
    assert first_fragment[6 + 5] & 0x03 == 0x00, "second PDU: data set, not the last fragment"
    raw.sock.sendall(command + first_fragment)
    # The archive (pynetdicom) now spools the data set to a temporary file.
    wait_until(
        lambda: temp_files(archive.data_dir) != [],
        10,
        "the archive to start receiving the data set",
    )
    raw.sock.sendall(b"\x04\x00" + struct.pack(">I", 1024 * 1024) + pdus[2][6:1006])
    raw.drop()


def test_dropped_association_mid_pdu(archive: ArchiveProcess, sample_studies: Samples) -> None:
    drop_mid_pdu(archive, largest_sample(sample_studies))
    assert archive.echo_ok(), "C-ECHO failed after a dropped association"
    assert index_counts(archive.data_dir) == dict.fromkeys(INDEX_TABLES, 0)
    assert storage_files(archive.data_dir) == []
    wait_until(
        lambda: temp_files(archive.data_dir) == [],
        10,
        "the partial data set's temp file to be removed",
    )
    assert_still_serving(archive, ct_slice(sample_studies))


# -- openvna import ------------------------------------------------------------------------


def run_import(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*openvna_command(), "import", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def summary_counts(output: str) -> dict[str, int]:
    counts = {}
    for name in ("imported", "duplicates", "rejected"):
        found = re.search(rf"│\s*{name}\s*│\s*(\d+)\s*│", output)
        assert found, f"no '{name}' row in the import summary:\n{output}"
        counts[name] = int(found.group(1))
    return counts


def _truncated(good: Path, target: Path) -> None:
    data = good.read_bytes()
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010), explicit VR little endian
    assert pixel_data > 0
    target.write_bytes(data[: pixel_data + 12 + 1000])  # tag, VR, reserved, length + 1000


def _pe_polyglot(good: Path, target: Path) -> None:
    data = good.read_bytes()
    assert data[128:132] == b"DICM"
    preamble = (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 114)[:128]
    target.write_bytes(preamble + data[128:])


BAD_FILES: dict[str, tuple[Callable[[Path, Path], object], str]] = {
    "truncated": (_truncated, "truncated: element (7FE0,0010)"),
    "missing-uid": (
        lambda good, target: write_variant(good, target, sop_instance_uid=None),
        "required attribute SOPInstanceUID is missing",
    ),
    "uid-leading-zero": (
        lambda good, target: write_variant(good, target, sop_instance_uid="1.2.03.4"),
        "SOPInstanceUID '1.2.03.4' is not a valid UID",
    ),
    "uid-letters": (
        lambda good, target: write_variant(good, target, sop_instance_uid="1.2.abc.4"),
        "SOPInstanceUID '1.2.abc.4' is not a valid UID",
    ),
    "text": (lambda _good, target: target.write_text("patient: nobody\n" * 20), "not a DICOM file"),
    "png": (
        lambda _good, target: target.write_bytes(
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 200
        ),
        "not a DICOM file",
    ),
    "pe-polyglot": (_pe_polyglot, "executable preamble rejected: the DICOM preamble holds an"),
    "empty": (lambda _good, target: target.write_bytes(b""), "not a DICOM file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_import_rejects_bad_file(kind: str, sample_studies: Samples, tmp_path: Path) -> None:
    make, reason = BAD_FILES[kind]
    bad = tmp_path / "incoming" / f"{kind}.dcm"
    bad.parent.mkdir()
    make(ct_slice(sample_studies), bad)
    data_dir = tmp_path / "archive"

    result = run_import(data_dir, str(bad), "--show-rejected")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # nothing imported
    assert summary_counts(output) == {"imported": 0, "duplicates": 0, "rejected": 1}
    assert re.search(rf"1 × .*{re.escape(reason.split(':')[0])}", output), output
    assert f"{bad.name}: " in output and reason in output, output
    assert "Traceback" not in output
    assert_nothing_stored(data_dir)


def test_import_exit_code_zero_when_something_was_imported(
    sample_studies: Samples,
    tmp_path: Path,
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    good = ct_slice(sample_studies)
    for kind, (make, _reason) in BAD_FILES.items():
        make(good, incoming / f"{kind}.dcm")
    (incoming / "zz-good.dcm").write_bytes(good.read_bytes())
    data_dir = tmp_path / "archive"

    result = run_import(data_dir, str(incoming))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert summary_counts(output) == {"imported": 1, "duplicates": 0, "rejected": len(BAD_FILES)}
    assert stored_instance_uids(data_dir) == [str(dcmread(good).SOPInstanceUID)]
    assert index_counts(data_dir) == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    [stored] = storage_files(data_dir)
    assert dataset_bytes(stored) == dataset_bytes(good)
    assert temp_files(data_dir) == []
