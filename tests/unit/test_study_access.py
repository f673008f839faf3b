"""Study-level access applied by the index: what a restricted principal's queries see.

A small archive of five studies from three institutions and issuers, ingested through
the one ingest path, on SQLite and PostgreSQL. Every expectation is the set of studies
the rules allow, computed from the table below, never from the code under test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from openvna.app import open_archive
from openvna.archive.ingest import Origin
from openvna.archive.service import Archive
from openvna.config import Role, load_settings
from openvna.dimse.identifier import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, identifier_to_query
from openvna.index import access_repository
from openvna.security.authz import StudyAccess
from openvna.security.errors import NotVisible
from openvna.security.permissions import Permission
from openvna.security.principal import Principal, PrincipalKind
from tests.conftest import temporary_postgres_database

ROOT = "1.2.826.0.1.3680043.8.498.55"
# patient id -> (issuer of patient id, name)
PATIENTS = {"N1": ("NORTH", "North^One"), "S1": ("SOUTH", "South^One"), "X1": ("", "None^X")}
# study uid -> patient id
STUDIES = {
    f"{ROOT}.1": "N1",
    f"{ROOT}.2": "N1",
    f"{ROOT}.3": "S1",
    f"{ROOT}.4": "S1",
    f"{ROOT}.5": "X1",
}
A, B, C, D, E = STUDIES
# series uid -> (study uid, institution name, instances)
SERIES = {
    f"{A}.1": (A, "North Hospital", 2),
    f"{B}.1": (B, "Elsewhere", 1),
    f"{C}.1": (C, "South Clinic", 1),
    f"{D}.1": (D, "South Clinic", 1),
    f"{D}.2": (D, "North Hospital", 2),  # a study read at another site: one series there
    f"{E}.1": (E, "", 1),
}


def write_instance(path: Path, series_uid: str, number: int) -> None:
    study_uid, institution, _ = SERIES[series_uid]
    patient_id = STUDIES[study_uid]
    issuer, name = PATIENTS[patient_id]
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{series_uid}.{number}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    ds.PatientName = name
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = study_uid[-1]
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.InstitutionName = institution
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("access")
    with ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            database_url = stack.enter_context(temporary_postgres_database())
        settings = load_settings(None, data_dir=root / "data", database_url=database_url)
        archive, executor = open_archive(settings)
        try:
            for series_uid, (_, _, count) in SERIES.items():
                for number in range(1, count + 1):
                    path = root / f"{series_uid}.{number}.dcm"
                    write_instance(path, series_uid, number)
                    with path.open("rb") as source:
                        archive.ingest_file(source, origin=Origin("test"))
            yield archive
        finally:
            executor.shutdown()
            archive.close()


def find(
    archive: Archive,
    access: StudyAccess | None,
    level: str,
    model: str = STUDY_ROOT_FIND,
    **keys: Any,
) -> list[dict[str, Any]]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    query = replace(identifier_to_query(identifier, model), access=access)
    return list(archive.search(query))


def first(result: dict[str, Any], tag: str) -> Any:
    value = (result.get(tag, {}).get("Value") or [None])[0]
    return value["Alphabetic"] if isinstance(value, dict) else value


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    return {first(result, "0020000D") for result in results}


INSTITUTION = StudyAccess("apikey:inst", institutions=("North Hospital",))
ISSUER = StudyAccess("apikey:issuer", issuers_of_patient_id=("SOUTH",))
GRANTS_ONLY = StudyAccess("user:referrer")
CASES = {
    "institution": (INSTITUTION, {A, D}),
    "issuer": (ISSUER, {C, D}),
    "both": (StudyAccess("k", ("Elsewhere",), ("SOUTH",)), {B, C, D}),
    "grants only, none": (GRANTS_ONLY, set()),
    "unrestricted": (None, {A, B, C, D, E}),
}


def expected_series(visible: set[str]) -> set[str]:
    return {uid for uid, (study, _, _) in SERIES.items() if study in visible}


def expected_instances(visible: set[str]) -> set[str]:
    return {
        f"{uid}.{n}"
        for uid, (study, _, count) in SERIES.items()
        if study in visible
        for n in range(1, count + 1)
    }


@pytest.mark.parametrize("case", list(CASES))
def test_every_level_sees_only_visible_studies(archive: Archive, case: str) -> None:
    access, visible = CASES[case]
    assert study_uids(find(archive, access, "STUDY", PatientName="*")) == visible
    series = find(archive, access, "SERIES", SeriesInstanceUID="", InstitutionName="")
    # every series of a visible study, including those from another institution
    assert {first(s, "0020000E") for s in series} == expected_series(visible)
    instances = find(archive, access, "IMAGE", SOPInstanceUID="")
    assert {first(i, "00080018") for i in instances} == expected_instances(visible)
    patients = find(
        archive,
        access,
        "PATIENT",
        PATIENT_ROOT_FIND,
        PatientID="",
        NumberOfPatientRelatedStudies="",
    )
    by_patient = {first(p, "00100020"): int(first(p, "00201200")) for p in patients}
    expected = {
        patient: sum(1 for s in visible if STUDIES[s] == patient)
        for patient in PATIENTS
        if any(STUDIES[s] == patient for s in visible)
    }
    assert by_patient == expected


def test_a_study_uid_of_a_hidden_study_matches_nothing(archive: Archive) -> None:
    assert find(archive, INSTITUTION, "STUDY", StudyInstanceUID=B) == []
    assert find(archive, INSTITUTION, "SERIES", StudyInstanceUID=B, SeriesInstanceUID="") == []
    assert archive.find_retrievable(study_uids=(B,), access=INSTITUTION) == []
    assert archive.find_retrievable(series_uids=(f"{B}.1",), access=INSTITUTION) == []
    assert archive.find_retrievable(sop_instance_uids=(f"{B}.1.1",), access=INSTITUTION) == []
    by_patient = archive.find_retrievable(patient_ids=("N1",), access=INSTITUTION)
    assert {i.study_instance_uid for i in by_patient} == {A}
    assert len(archive.find_retrievable(study_uids=(D,), access=INSTITUTION)) == 3


def test_paging_counts_only_visible_studies(archive: Archive) -> None:
    seen: list[str] = []
    for offset in range(0, 4):
        query = identifier_to_query(_study_identifier(), STUDY_ROOT_FIND)
        page = list(archive.search(replace(query, access=ISSUER, limit=1, offset=offset)))
        seen.extend(study_uids(page))
    assert sorted(seen) == sorted({C, D})  # two pages, then empty ones
    assert archive.counts(ISSUER) == {"patients": 1, "studies": 2, "series": 3, "instances": 4}
    assert archive.counts(GRANTS_ONLY) == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert archive.counts()["studies"] == 5


def _study_identifier() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    return identifier


def test_patient_level_headers_come_from_visible_studies(archive: Archive) -> None:
    """At PATIENT level with all attributes, the representative header must belong to a
    visible study, or it would reveal a hidden study's UID and institution."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = "N1"
    query = replace(identifier_to_query(identifier, PATIENT_ROOT_FIND), include_all=True)
    results = list(archive.search(replace(query, access=StudyAccess("k", ("Elsewhere",)))))
    assert len(results) == 1
    assert first(results[0], "0020000D") == B
    assert first(results[0], "00080080") == "Elsewhere"


def test_grants_expire_and_are_revoked(archive: Archive) -> None:
    engine = archive.engine
    subject = f"user:referrer-{archive.engine.dialect.name}"
    access = StudyAccess(subject)
    now = time.time()
    granted = access_repository.add_grant(engine, subject=subject, study_uid=E, granted_by="t")
    expired = access_repository.add_grant(engine, subject=subject, study_uid=A, expires_at=now - 1)
    other = access_repository.add_grant(engine, subject="user:someone-else", study_uid=C)
    try:
        assert study_uids(find(archive, access, "STUDY", PatientName="*")) == {E}
        assert [g.pk for g in access_repository.list_grants(engine, subject=subject)] == [
            granted.pk
        ]
        everything = access_repository.list_grants(engine, subject=subject, active_only=False)
        assert {g.pk for g in everything} == {granted.pk, expired.pk}
        glass = access_repository.break_glass(
            engine, subject=subject, study_uid=B, reason="stroke alert", hours=0.5
        )
        assert glass.kind == "break-glass" and glass.granted_by == subject
        assert glass.expires_at == pytest.approx(glass.created_at + 1800)
        assert study_uids(find(archive, access, "STUDY", PatientName="*")) == {B, E}
        revoked = access_repository.revoke_grant(engine, granted.pk)
        assert revoked is not None and revoked.revoked_at is not None and not revoked.active()
        assert study_uids(find(archive, access, "STUDY", PatientName="*")) == {B}
        assert access_repository.revoke_grant(engine, 10**9) is None
        with pytest.raises(ValueError):
            access_repository.break_glass(engine, subject=subject, study_uid=B, reason=" ", hours=1)
    finally:
        for grant in (granted, expired, other):
            access_repository.revoke_grant(engine, grant.pk)
        for grant in access_repository.list_grants(engine, subject=subject):
            access_repository.revoke_grant(engine, grant.pk)


def test_require_study_hides_existence(archive: Archive) -> None:
    authorizer = archive.security.authorizer
    technologist = Principal(
        "ae:TECH", PrincipalKind.AE, frozenset({Role.TECHNOLOGIST}), institutions=("South Clinic",)
    )
    authorizer.require_study(technologist, Permission.READ, C)
    for hidden_or_absent in (A, f"{ROOT}.999"):
        with pytest.raises(NotVisible) as refused:
            authorizer.require_study(technologist, Permission.READ, hidden_or_absent)
        assert refused.value.status == 404
    # storing may name a new study, never a hidden one
    authorizer.require_study(technologist, Permission.STORE, f"{ROOT}.999", allow_new=True)
    with pytest.raises(NotVisible):
        authorizer.require_study(technologist, Permission.STORE, A, allow_new=True)
    assert authorizer.can_see_study(technologist, D)
    assert not authorizer.can_see_study(technologist, B)
