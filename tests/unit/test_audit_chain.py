"""The audit hash chain: records are appended in order, every kind of tampering is
found and named by seq, and writers in several processes keep one valid chain.

Runs on SQLite and on PostgreSQL (a fresh database per test, see tests/conftest.py).
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
from sqlalchemy import Engine, delete, select, update

from openvna.config import Settings, load_settings
from openvna.index.database import create_index_engine, upgrade_schema
from openvna.index.schema import archive_state, audit_log
from openvna.security.audit import NullAuditTrail, StudyRef, events
from openvna.security.audit.chain import (
    GENESIS,
    HEAD_STATE,
    ChainedAuditTrail,
    chain_key_path,
    load_chain_key,
)
from openvna.security.audit.verify import verify_archive, verify_chain
from openvna.security.context import build_security
from openvna.security.principal import local_principal
from tests.conftest import temporary_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    overrides: dict[str, object] = {"security.audit.flush_interval": 0.05}
    if request.param == "sqlite":
        yield load_settings(data_dir=tmp_path / "data", **overrides)
        return
    with temporary_postgres_database() as url:
        yield load_settings(data_dir=tmp_path / "data", database_url=url, **overrides)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings.index_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def query_event(number: int, who: str = "local") -> events.AuditEvent:
    return events.query(
        local_principal("127.0.0.1"),
        "127.0.0.1",
        query_text=f"/dicom-web/studies?n={number}&w={who}",
    )


def write(settings: Settings, engine: Engine, count: int) -> None:
    trail = ChainedAuditTrail(settings, engine)
    for number in range(count):
        trail.record(query_event(number))
    trail.close()


def key(settings: Settings) -> bytes:
    return load_chain_key(settings.data_dir, create=False)


def rows(engine: Engine) -> list[tuple[int, str, str]]:
    with engine.connect() as connection:
        return [
            (int(seq), str(prev_hash), str(digest))
            for seq, prev_hash, digest in connection.execute(
                select(audit_log.c.seq, audit_log.c.prev_hash, audit_log.c.hash).order_by(
                    audit_log.c.seq
                )
            )
        ]


def test_records_are_linked_in_order(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 25)
    chain = rows(engine)
    assert [seq for seq, _, _ in chain] == list(range(1, 26))
    assert chain[0][1] == GENESIS
    assert all(chain[i][1] == chain[i - 1][2] for i in range(1, len(chain)))
    report = verify_chain(engine, key(settings))
    assert report.ok, report
    assert (report.records, report.last_seq) == (25, 25)
    write(settings, engine, 5)  # a second trail continues the same chain
    assert verify_chain(engine, key(settings)).records == 30


def test_key_is_private_and_kept(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 1)
    path = chain_key_path(settings.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = key(settings)
    assert len(first) == 32
    assert load_chain_key(settings.data_dir) == first
    path.write_text(os.urandom(32).hex())  # another key cannot vouch for the records
    assert not verify_chain(engine, key(settings)).ok


def test_flush_waits_and_close_drains(settings: Settings, engine: Engine) -> None:
    trail = ChainedAuditTrail(settings, engine)
    for number in range(300):
        trail.record(query_event(number))
    trail.flush()
    assert len(rows(engine)) == 300
    for number in range(50):
        trail.record(query_event(number))
    trail.close()
    assert len(rows(engine)) == 350
    trail.record(query_event(999))  # after close: written at once, not lost
    assert len(rows(engine)) == 351
    assert verify_chain(engine, key(settings)).ok


def test_an_edited_message_is_found(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 10)
    with engine.begin() as connection:
        message = connection.execute(
            select(audit_log.c.message).where(audit_log.c.seq == 6)
        ).scalar_one()
        connection.execute(
            update(audit_log)
            .where(audit_log.c.seq == 6)
            .values(message=message.replace("local", "nobody"))
        )
    report = verify_chain(engine, key(settings))
    assert report.broken_seq == 6
    assert "edited" in report.problem
    assert report.records == 5


def test_an_edited_field_is_found(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 4)
    with engine.begin() as connection:
        connection.execute(update(audit_log).where(audit_log.c.seq == 2).values(outcome=4))
    assert verify_chain(engine, key(settings)).broken_seq == 2


def test_a_deleted_middle_record_is_found(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 10)
    with engine.begin() as connection:
        connection.execute(delete(audit_log).where(audit_log.c.seq == 4))
    report = verify_chain(engine, key(settings))
    assert report.broken_seq == 4
    assert "missing" in report.problem


def test_a_renumbered_deletion_is_found(settings: Settings, engine: Engine) -> None:
    """Deleting record 4 and renumbering the rest closes the gap but not the links."""
    write(settings, engine, 6)
    with engine.begin() as connection:
        connection.execute(delete(audit_log).where(audit_log.c.seq == 4))
        for seq in (5, 6):
            connection.execute(update(audit_log).where(audit_log.c.seq == seq).values(seq=seq - 1))
    report = verify_chain(engine, key(settings))
    assert report.broken_seq == 4
    assert "does not link" in report.problem


def test_a_truncated_tail_is_found(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 10)
    with engine.begin() as connection:
        connection.execute(delete(audit_log).where(audit_log.c.seq > 7))
    report = verify_chain(engine, key(settings))
    assert report.broken_seq == 8
    assert "cut off" in report.problem
    with engine.begin() as connection:  # ... and with every record gone
        connection.execute(delete(audit_log))
    assert verify_chain(engine, key(settings)).broken_seq == 1


def test_an_edited_head_is_found(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 3)
    with engine.begin() as connection:
        connection.execute(delete(audit_log).where(audit_log.c.seq == 3))
        last = connection.execute(select(audit_log.c.hash).where(audit_log.c.seq == 2)).scalar_one()
        connection.execute(
            update(archive_state)
            .where(archive_state.c.name == HEAD_STATE)
            .values(value=f'{{"seq": 2, "hash": "{last}", "mac": "forged"}}')
        )
    report = verify_chain(engine, key(settings))
    assert report.broken_seq is not None
    assert "head" in report.problem


def test_writing_after_a_truncation_does_not_hide_it(settings: Settings, engine: Engine) -> None:
    write(settings, engine, 5)
    with engine.begin() as connection:
        connection.execute(delete(audit_log).where(audit_log.c.seq == 5))
    write(settings, engine, 2)  # numbering continues from the head, not the table
    assert verify_chain(engine, key(settings)).broken_seq == 5


def test_missing_key_with_records_fails(settings: Settings, engine: Engine) -> None:
    assert verify_archive(engine, settings.data_dir).ok  # nothing recorded: holds
    write(settings, engine, 2)
    chain_key_path(settings.data_dir).unlink()
    report = verify_archive(engine, settings.data_dir)
    assert not report.ok and "key" in report.problem


def _append_from_process(data_dir: str, database_url: str | None, who: str, count: int) -> None:
    overrides: dict[str, object] = {"security.audit.flush_interval": 0.01}
    if database_url:
        overrides["database_url"] = database_url
    settings = load_settings(data_dir=Path(data_dir), **overrides)
    engine = create_index_engine(settings.index_url)
    trail = ChainedAuditTrail(settings, engine)
    for number in range(count):
        trail.record(query_event(number, who))
        if number % 10 == 0:
            trail.flush()  # many small transactions, interleaving with the other writer
    trail.close()
    engine.dispose()


def test_two_processes_keep_one_chain(settings: Settings, engine: Engine) -> None:
    context = multiprocessing.get_context("spawn")
    database_url = settings.database_url
    writers = [
        context.Process(
            target=_append_from_process,
            args=(str(settings.data_dir), database_url, who, 100),
        )
        for who in ("first", "second")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=240)
    assert [writer.exitcode for writer in writers] == [0, 0]
    report = verify_chain(engine, key(settings))
    assert report.ok, report
    assert report.records == 200
    with engine.connect() as connection:
        messages = connection.execute(select(audit_log.c.message)).scalars().all()
    writers_of = Counter(
        parse_qs(urlsplit(query_text(message)).query)["w"][0] for message in messages
    )
    assert writers_of == {"first": 100, "second": 100}


def query_text(message: str) -> str:
    element = ElementTree.fromstring(message).find(
        "ParticipantObjectIdentification/ParticipantObjectQuery"
    )
    assert element is not None and element.text
    return base64.b64decode(element.text).decode()


def test_audit_off_records_nothing(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, **{"security.audit.enabled": False})
    engine = create_index_engine(settings.index_url)
    upgrade_schema(engine)
    security = build_security(settings, engine)
    assert isinstance(security.audit, NullAuditTrail)
    security.audit.record(events.study_deleted(None, "", [StudyRef("1.2.3")]))
    security.close()
    assert rows(engine) == []
    assert not chain_key_path(tmp_path).exists()


def test_repeated_reads_of_a_batch_become_one_record_and_queries_do_not() -> None:
    from openvna.security.audit import events as audit_events
    from openvna.security.audit.chain import coalesce
    from openvna.security.principal import local_principal

    reader = local_principal("10.0.0.9")
    frame = audit_events.instances_transferred(
        reader, "10.0.0.9", [StudyRef("1.2.3")], action="R", source="OPENVNA", destination="x"
    )
    other_study = audit_events.instances_transferred(
        reader, "10.0.0.9", [StudyRef("1.2.4")], action="R", source="OPENVNA", destination="x"
    )
    query = audit_events.query(reader, "10.0.0.9", query_text="PatientID=1")
    batch = [frame, query, frame, other_study, query, frame]
    merged = coalesce(batch)
    assert [event.event_id for event in merged] == ["110104", "110112", "110104", "110112"]
    assert merged[0].description == "3 requests"
    assert merged[2].studies == (StudyRef("1.2.4"),) and merged[2].description == ""
