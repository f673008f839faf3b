"""The audit trail of a real ``openvna serve`` with authentication on.

A scripted workload touches every audited path: storescu C-STORE, findscu, getscu,
movescu to a storescp, a C-STORE by an AE without the permission, an unknown AE, STOW,
QIDO, WADO and metadata with dicomweb-client under an API key, a request without
credentials, the audit API read by an auditor and refused to a technologist. It must
produce exactly the expected records (event, action, outcome, user, studies, patients),
each valid against the DICOM audit schema. Meanwhile a TLS syslog receiver started here
(certificates made with cryptography) gets every record, also those recorded while it
was down (store and forward). Afterwards ``openvna audit verify`` passes, the exports
validate (DICOM schema, FHIR R4), and after one row is edited with sqlite3 verify fails
naming its seq.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from fhir.resources.R4B.bundle import Bundle
from lxml import etree
from pydicom import dcmread

from openvna.index.database import create_index_engine
from openvna.sample import GeneratedStudy
from openvna.security.audit.store import AuditRecord, records_after
from openvna.security.audit.xml import SCHEMA_PATH
from openvna.security.certificates import create_ca, issue_certificate
from tests.conftest import (
    ArchiveProcess,
    StoreSCP,
    free_port,
    openvna_command,
    require_tool,
    run_tool,
    wait_until,
)

pytestmark = pytest.mark.integration

Samples = tuple[Path, list[GeneratedStudy]]
SCHEMA = etree.RelaxNG(etree.parse(str(SCHEMA_PATH)))
_FRAME = re.compile(
    rb'^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) IHE\+RFC-3881 \[meta sequenceId="(\d+)"\] '
    rb"\xef\xbb\xbf(<AuditMessage>.*</AuditMessage>)$",
    re.DOTALL,
)


# -- a TLS syslog receiver (RFC 5425) ---------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, made by the archive's own
    ``openvna tls`` helpers: (ca, cert, key)."""
    ca = create_ca(directory / "ca", days=1, name="audit test CA")
    server = issue_certificate(
        directory / "ca", "audit-repository", directory / "server", alternative_names=["127.0.0.1"]
    )
    return ca.certificate, server.certificate, server.private_key


class SyslogReceiver:
    """An audit record repository: RFC 5425 octet-counted RFC 5424 messages over TLS."""

    def __init__(self, port: int, certificate: Path, key: Path) -> None:
        self.port = port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(str(certificate), str(key))
        self.messages: dict[int, bytes] = {}  # sequenceId -> the audit message
        self.frames = 0
        self.malformed: list[bytes] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def received(self) -> dict[int, bytes]:
        with self._lock:
            return dict(self.messages)

    def start(self) -> None:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def serve() -> None:
            self._server = await asyncio.start_server(
                self._connection, "127.0.0.1", self.port, ssl=self.context
            )
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "syslog receiver did not start"

    def stop(self) -> None:
        """Close the listener and every connection (the forwarder sees the repository go)."""
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None

        async def shut() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                length = await reader.readuntil(b" ")
                frame = await reader.readexactly(int(length[:-1]))
                self._take(frame)
        except (
            asyncio.IncompleteReadError,
            asyncio.CancelledError,
            ConnectionError,
            ssl.SSLError,
            ValueError,
        ):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _take(self, frame: bytes) -> None:
        match = _FRAME.match(frame)
        with self._lock:
            self.frames += 1
            if match is None:
                self.malformed.append(frame)
                return
            self.messages[int(match.group(6))] = match.group(7)


# -- helpers ---------------------------------------------------------------------------


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*openvna_command(), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openvna {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def create_api_key(data_dir: Path, name: str, role: str) -> tuple[str, str]:
    """(token, principal subject) of a new API key made with the CLI."""
    output = cli(data_dir, "apikey", "create", name, "--role", role).stdout
    token = re.search(r"ovna_[0-9a-f]{12}_\S+", output)
    assert token is not None, output
    key_id = token.group(0).split("_")[1]
    return token.group(0), f"apikey:{key_id}"


def chain(data_dir: Path) -> list[AuditRecord]:
    engine = create_index_engine(f"sqlite:///{data_dir / 'index.sqlite'}")
    try:
        records: list[AuditRecord] = []
        while batch := records_after(engine, records[-1].seq if records else 0, 1000):
            records.extend(batch)
        return records
    finally:
        engine.dispose()


def patients_of(message: str) -> set[str]:
    element = etree.fromstring(message.encode("utf-8"))
    return {
        str(item.get("ParticipantObjectID"))
        for item in element.findall(
            "ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']"
        )
    }


def received_everything(receiver: SyslogReceiver, data_dir: Path) -> Callable[[], bool]:
    def check() -> bool:
        records = chain(data_dir)
        got = receiver.received()
        return bool(records) and all(
            got.get(record.seq) == record.message.encode("utf-8") for record in records
        )

    return check


def one_study_per_patient(studies: list[GeneratedStudy]) -> list[GeneratedStudy]:
    first: dict[str, GeneratedStudy] = {}
    for study in studies:
        first.setdefault(study.patient_id, study)
    return list(first.values())


Expected = tuple[str, str, int, str, frozenset[str]]


def summary(record: AuditRecord) -> Expected:
    return (
        record.event_id,
        record.event_action,
        record.outcome,
        record.user_id,
        frozenset(record.study_uids),
    )


# -- the test -----------------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[SyslogReceiver, Path]]:
    ca, certificate, key = make_certificates(tmp_path)
    receiver = SyslogReceiver(free_port(), certificate, key)
    receiver.start()
    yield receiver, ca
    if receiver._thread is not None:
        receiver.stop()


def test_workload_is_audited_forwarded_and_verifiable(
    start_archive: Callable[..., ArchiveProcess],
    sample_studies: Samples,
    storescp: StoreSCP,
    receiver: tuple[SyslogReceiver, Path],
    tmp_path: Path,
) -> None:
    repository, ca = receiver
    require_tool("sqlite3")
    data_dir = tmp_path / "data"
    study_a, study_b, study_c = one_study_per_patient(sample_studies[1])[:3]
    tech_token, tech = create_api_key(data_dir, "workstation", "technologist")
    auditor_token, auditor = create_api_key(data_dir, "audit review", "auditor")
    env = {
        **os.environ,
        "OPENVNA_SECURITY__REQUIRE_AUTH": "true",
        "OPENVNA_SECURITY__DICOM_AES": json.dumps(
            [
                {"ae_title": "ECHOSCU", "roles": ["technologist"]},
                {"ae_title": "MODALITY1", "roles": ["technologist"]},
                {"ae_title": "VIEWER1", "roles": ["researcher"]},
            ]
        ),
        "OPENVNA_DIMSE__PEERS": json.dumps(
            [{"ae_title": storescp.ae_title, "host": "127.0.0.1", "port": storescp.port}]
        ),
        "OPENVNA_SECURITY__AUDIT__SYSLOG_HOST": "127.0.0.1",
        "OPENVNA_SECURITY__AUDIT__SYSLOG_PORT": str(repository.port),
        "OPENVNA_SECURITY__AUDIT__SYSLOG_CA": str(ca),
        "OPENVNA_SECURITY__AUDIT__FLUSH_INTERVAL": "0.05",
    }
    archive = start_archive(data_dir=data_dir, env=env)
    address = archive.address
    aec = ["-aec", archive.ae_title]

    # DIMSE: store, find, get, move as MODALITY1; a store by VIEWER1; an unknown AE
    run_tool("storescu", "-aet", "MODALITY1", *aec, *address, *map(str, study_a.paths))
    run_tool(
        "findscu", "-S", "-aet", "MODALITY1", *aec, "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"PatientID={study_a.patient_id}", "-k", "StudyInstanceUID", *address,
    )  # fmt: skip
    got = tmp_path / "get"
    got.mkdir()
    study_key = [
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_a.study_instance_uid}",
    ]
    run_tool("getscu", "-S", "-aet", "MODALITY1", *aec, "-od", str(got), *study_key, *address)
    assert len(list(got.iterdir())) == len(study_a.paths)
    run_tool(
        "movescu", "-S", "-aet", "MODALITY1", *aec, "-aem", storescp.ae_title, *study_key, *address
    )
    assert len(list(storescp.out_dir.iterdir())) == len(study_a.paths)
    refused = run_tool(
        "storescu", "-aet", "VIEWER1", *aec, *address, str(study_c.paths[0]), check=False
    )
    assert "0124" in refused.stdout + refused.stderr or refused.returncode != 0
    intruder = run_tool("echoscu", "-aet", "INTRUDER", *aec, *address, check=False)
    assert intruder.returncode != 0

    # DICOMweb as the technologist's API key
    web = DICOMwebClient(
        f"{archive.http_url}/dicom-web", headers={"Authorization": f"Bearer {tech_token}"}
    )
    web.store_instances([dcmread(path) for path in study_b.paths])
    found = web.search_for_studies(search_filters={"PatientID": study_a.patient_id})
    assert [item["0020000D"]["Value"][0] for item in found] == [study_a.study_instance_uid]
    assert len(web.retrieve_study(study_a.study_instance_uid)) == len(study_a.paths)
    assert len(web.retrieve_study_metadata(study_a.study_instance_uid)) == len(study_a.paths)
    anonymous = requests.get(f"{archive.http_url}/dicom-web/studies", timeout=30)
    assert anonymous.status_code == 401

    # every record reaches the repository
    wait_until(received_everything(repository, data_dir), 60, "syslog to receive every record")
    assert repository.malformed == []

    # store and forward: the repository goes away, records pile up, then arrive
    repository.stop()
    before = len(chain(data_dir))
    for _ in range(3):
        web.search_for_studies(search_filters={"PatientID": study_b.patient_id})
    wait_until(lambda: len(chain(data_dir)) == before + 3, 30, "queries recorded")
    missed = {record.seq for record in chain(data_dir)[before:]}
    assert not missed & set(repository.received())
    repository.start()
    wait_until(received_everything(repository, data_dir), 60, "the missed records to arrive")

    # the audit API: an auditor reads; a technologist may not
    auditor_headers = {"Authorization": f"Bearer {auditor_token}"}
    listed = requests.get(
        f"{archive.http_url}/api/audit/events",
        params={"event": "Query", "user": tech},
        headers=auditor_headers,
        timeout=30,
    )
    assert listed.status_code == 200, listed.text
    assert [item["eventId"] for item in listed.json()] == ["110112"] * 4
    checked = requests.get(
        f"{archive.http_url}/api/audit/verify", headers=auditor_headers, timeout=30
    )
    assert checked.json()["ok"] is True, checked.json()
    denied = requests.get(
        f"{archive.http_url}/api/audit/events",
        headers={"Authorization": f"Bearer {tech_token}"},
        timeout=30,
    )
    assert denied.status_code == 403

    archive.stop()
    wait_until(received_everything(repository, data_dir), 30, "the last records after stop")

    # exactly the expected records
    a, b = study_a.study_instance_uid, study_b.study_instance_uid
    os_user = f"os:{getpass.getuser()}"
    expected: list[Expected] = [
        ("110113", "E", 0, "system:cli", frozenset()),  # API key created (x2)
        ("110113", "E", 0, "system:cli", frozenset()),
        ("110100", "E", 0, os_user, frozenset()),  # Application Start
        ("110104", "C", 0, "ae:MODALITY1", frozenset({a})),  # C-STORE received
        ("110112", "E", 0, "ae:MODALITY1", frozenset()),  # C-FIND
        ("110102", "E", 0, "ae:MODALITY1", frozenset({a})),  # C-GET
        ("110104", "R", 0, "ae:MODALITY1", frozenset({a})),
        ("110102", "E", 0, "ae:MODALITY1", frozenset({a})),  # C-MOVE
        ("110104", "R", 0, "ae:MODALITY1", frozenset({a})),
        ("110113", "E", 4, "ae:VIEWER1", frozenset()),  # C-STORE refused
        ("110113", "E", 4, "ae:INTRUDER", frozenset()),  # association rejected
        ("110104", "C", 0, tech, frozenset({b})),  # STOW-RS
        ("110112", "E", 0, tech, frozenset()),  # QIDO-RS
        ("110104", "R", 0, tech, frozenset({a})),  # WADO-RS
        ("110103", "R", 0, tech, frozenset({a})),  # WADO-RS metadata
        ("110113", "E", 4, "anonymous", frozenset()),  # 401
        ("110112", "E", 0, tech, frozenset()),  # QIDO-RS while the repository was down
        ("110112", "E", 0, tech, frozenset()),
        ("110112", "E", 0, tech, frozenset()),
        ("110101", "R", 0, auditor, frozenset()),  # audit events read
        ("110101", "R", 0, auditor, frozenset()),  # audit chain verified
        ("110113", "E", 4, tech, frozenset()),  # audit API refused
        ("110100", "E", 0, os_user, frozenset()),  # Application Stop
    ]
    records = chain(data_dir)
    assert Counter(summary(record) for record in records) == Counter(expected)
    assert [record.seq for record in records] == list(range(1, len(records) + 1))
    for record in records:
        assert SCHEMA.validate(etree.fromstring(record.message.encode("utf-8"))), (
            record.seq,
            SCHEMA.error_log,
        )
        if a in record.study_uids:
            assert study_a.patient_id in patients_of(record.message), record.message
        if b in record.study_uids:
            assert study_b.patient_id in patients_of(record.message), record.message
    stored = next(r for r in records if summary(r)[:2] == ("110104", "C") and a in r.study_uids)
    counts = etree.fromstring(stored.message.encode()).findall(".//SOPClass")
    assert sum(int(item.get("NumberOfInstances", "0")) for item in counts) == len(study_a.paths)
    start_stop = [r for r in records if r.event_id == "110100"]
    assert [r.seq for r in start_stop] == [3, len(records)]  # nothing after the stop

    # verify, list, export
    assert "intact" in cli(data_dir, "audit", "verify").stdout
    lines = cli(data_dir, "audit", "list", "--event", "110112", "--json").stdout.splitlines()
    assert len(lines) == 5 and all(json.loads(line)["eventId"] == "110112" for line in lines)
    exported = tmp_path / "audit.xml"
    cli(data_dir, "audit", "export", "--format", "dicom", "--output", str(exported))
    messages = exported.read_text().splitlines()
    assert len(messages) == len(records) + 1  # and the list's own Audit Log Used record
    assert all(SCHEMA.validate(etree.fromstring(line.encode())) for line in messages)
    fhir_path = tmp_path / "audit.json"
    cli(data_dir, "audit", "export", "--format", "fhir", "--output", str(fhir_path))
    bundle = Bundle.model_validate(json.loads(fhir_path.read_text()))
    assert bundle.type == "collection"
    assert len(bundle.entry or []) == len(records) + 2
    resources: list[Any] = [entry.resource for entry in bundle.entry or []]
    assert {resource.type.code for resource in resources} >= {
        "110100", "110101", "110102", "110103", "110104", "110112", "110113",
    }  # fmt: skip
    queries = [
        bytes(resource.entity[0].query) for resource in resources if resource.type.code == "110112"
    ]  # fhir.resources decodes base64Binary
    assert sum(query.startswith(b"/dicom-web/studies?") for query in queries) == 4
    assert sum(b"STUDY" in query and b"/dicom-web" not in query for query in queries) == 1

    # tamper one row: verify names it
    victim = records[len(records) // 2].seq
    subprocess.run(
        [
            "sqlite3",
            str(data_dir / "index.sqlite"),
            f"UPDATE audit_log SET user_id = 'someone else' WHERE seq = {victim}",
        ],
        check=True,
        timeout=60,
    )
    broken = cli(data_dir, "audit", "verify", check=False)
    assert broken.returncode == 1, broken.stdout
    assert f"seq {victim}" in broken.stdout
