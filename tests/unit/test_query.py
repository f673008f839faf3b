"""PS3.4 C.2.2.2 matching through the archive's search, as C-FIND builds the query.

The archive holds a small, fully controlled set of instances (written with pydicom and
ingested through the one ingest path), so every expected result set is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from openvna.app import open_archive
from openvna.archive.ingest import Origin
from openvna.archive.query import MatchKind, Query, build_condition
from openvna.archive.service import Archive
from openvna.config import load_settings
from openvna.dimse.identifier import (
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    identifier_to_query,
)
from openvna.errors import QueryError
from tests.conftest import temporary_postgres_database

ROOT = "1.2.826.0.1.3680043.8.498.7"
# (patient id, patient name, birth date, sex)
PATIENTS = {
    "P1": ("Doe^John", "19700101", "M"),
    "P2": ("DOE^JANE", "19851231", "F"),
    "P3": ("Smith^Bob", "19500615", "M"),
}
# study uid -> (patient id, date, time, accession, description, referring physician)
STUDIES = {
    f"{ROOT}.1": ("P1", "20240110", "101500", "ACC1", "Chest CT", "Smith^Anna"),
    f"{ROOT}.2": ("P1", "20240215", "083000", "ACC2", "Brain MR", "Jones^Tom"),
    f"{ROOT}.3": ("P2", "20231231", "235959", "XYZ9", "chest xray", ""),
    f"{ROOT}.4": ("P3", "20240301", "120000.5", "X_Z9", "Mammo", ""),
}
# series uid -> (study uid, modality, number, description, protocol, instance count)
SERIES = {
    f"{ROOT}.1.1": (f"{ROOT}.1", "CT", 1, "Axial", "Head routine", 2),
    f"{ROOT}.1.2": (f"{ROOT}.1", "PR", 2, "Presentation", "Other", 1),
    f"{ROOT}.2.1": (f"{ROOT}.2", "MR", 1, "T1", "Head MR", 1),
    f"{ROOT}.3.1": (f"{ROOT}.3", "CR", 1, "PA", "chest", 1),
    f"{ROOT}.4.1": (f"{ROOT}.4", "MG", 1, "CC", "mammo", 1),
}
S1, S2, S3, S4 = (f"{ROOT}.{n}" for n in range(1, 5))


def instance_uid(series_uid: str, number: int) -> str:
    return f"{series_uid}.{number}"


def write_instance(path: Path, series_uid: str, number: int) -> None:
    study_uid, modality, series_number, series_description, protocol, _ = SERIES[series_uid]
    patient_id, date, time, accession, description, referring = STUDIES[study_uid]
    name, birth, sex = PATIENTS[patient_id]
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid(series_uid, number)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.StudyDate = date
    ds.StudyTime = time
    ds.AccessionNumber = accession
    ds.StudyDescription = description
    ds.ReferringPhysicianName = referring
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.ProtocolName = protocol
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
    """The same archive on each index backend: matching must not depend on the database."""
    root = tmp_path_factory.mktemp("query")
    with ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            database_url = stack.enter_context(temporary_postgres_database())
        settings = load_settings(None, data_dir=root / "data", database_url=database_url)
        archive, executor = open_archive(settings)
        try:
            for series_uid, spec in SERIES.items():
                for number in range(1, spec[5] + 1):
                    path = root / f"{instance_uid(series_uid, number)}.dcm"
                    write_instance(path, series_uid, number)
                    with path.open("rb") as source:
                        archive.ingest_file(source, origin=Origin("test"))
            yield archive
        finally:
            executor.shutdown()
            archive.close()


def find(
    archive: Archive, level: str, model: str = STUDY_ROOT_FIND, **keys: Any
) -> list[dict[str, Any]]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return list(archive.search(identifier_to_query(identifier, model)))


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    """The first value of ``tag`` in every result (None when empty), in result order."""
    out = []
    for result in results:
        element = result.get(tag, {})
        value = (element.get("Value") or [None])[0]
        out.append(value["Alphabetic"] if isinstance(value, dict) else value)
    return out


def studies(results: list[dict[str, Any]]) -> set[str]:
    return set(values(results, "0020000D"))


# -- classification of values (PS3.4 C.2.2.2) ------------------------------------------


def test_build_condition_classifies_each_matching_kind() -> None:
    assert build_condition(0x00100010, "") is None  # universal
    assert build_condition(0x00100010, "*") is None  # "*" alone matches everything
    single = build_condition(0x00100020, "P1")
    assert single is not None and single.kind is MatchKind.SINGLE
    wildcard = build_condition(0x00100010, "Do?^*")
    assert wildcard is not None and wildcard.kind is MatchKind.WILDCARD
    date_range = build_condition(0x00080020, "20240101-20240131")
    assert date_range is not None and date_range.kind is MatchKind.RANGE
    assert (date_range.low, date_range.high) == ("20240101", "20240131")
    open_low = build_condition(0x00080020, "-20240131")
    assert open_low is not None and (open_low.low, open_low.high) == (None, "20240131")
    uid_list = build_condition(0x0020000D, f"{S1}\\{S2}")
    assert uid_list is not None and uid_list.kind is MatchKind.LIST
    assert uid_list.values == (S1, S2)
    # "*" and "?" are not wildcards in a UI value (C.2.2.2.4 applies to string VRs)
    uid = build_condition(0x0020000D, "1.2.*")
    assert uid is not None and uid.kind is MatchKind.SINGLE


@pytest.mark.parametrize(
    "value",
    [
        "2024011",
        "20240132x",
        "20240201-20240101",
        "a-b",
        "20241301",
        "20240230",
        "20240101-20241232",
    ],
)
def test_invalid_dates_and_reversed_ranges_are_query_errors(value: str) -> None:
    with pytest.raises(QueryError):
        build_condition(0x00080020, value)


@pytest.mark.parametrize(
    ("tag", "value"), [(0x00080030, "2500"), (0x00080030, "1261"), (0x0008002A, "20241301120000")]
)
def test_impossible_times_are_query_errors(tag: int, value: str) -> None:
    with pytest.raises(QueryError):
        build_condition(tag, value)


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (0x00080020, "20240229"),
        (0x00080030, "235960"),
        (0x0008002A, "2024"),
        (0x0008002A, "20240101120000+0100"),
    ],
)
def test_valid_edge_dates_and_times_are_accepted(tag: int, value: str) -> None:
    assert build_condition(tag, value) is not None


def test_missing_or_invalid_level_is_a_query_error(archive: Archive) -> None:
    with pytest.raises(QueryError, match="Query/Retrieve Level"):
        identifier_to_query(Dataset(), STUDY_ROOT_FIND)
    with pytest.raises(QueryError):
        find(archive, "WORKLIST")
    with pytest.raises(QueryError, match="not part of this information model"):
        find(archive, "PATIENT", model=STUDY_ROOT_FIND)


# -- study level -------------------------------------------------------------------------


def test_single_value_matching(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", PatientID="P1")) == {S1, S2}
    assert studies(find(archive, "STUDY", AccessionNumber="ACC2")) == {S2}
    assert studies(find(archive, "STUDY", StudyInstanceUID=S3)) == {S3}
    assert find(archive, "STUDY", AccessionNumber="ACC") == []  # no prefix matching


def test_single_value_matching_is_case_sensitive_for_non_pn(archive: Archive) -> None:
    assert find(archive, "STUDY", AccessionNumber="acc1") == []
    assert studies(find(archive, "STUDY", StudyDescription="chest xray")) == {S3}
    assert find(archive, "STUDY", StudyDescription="CHEST XRAY") == []


def test_wildcard_star_and_question_mark(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", AccessionNumber="ACC*")) == {S1, S2}
    assert studies(find(archive, "STUDY", AccessionNumber="ACC?")) == {S1, S2}
    assert find(archive, "STUDY", AccessionNumber="AC?") == []  # ? is exactly one character
    assert studies(find(archive, "STUDY", AccessionNumber="*9")) == {S3, S4}
    assert studies(find(archive, "STUDY", StudyDescription="*CT")) == {S1}


def test_sql_wildcard_characters_in_values_are_literal(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", AccessionNumber="X_Z9")) == {S4}
    assert studies(find(archive, "STUDY", AccessionNumber="X_Z*")) == {S4}
    assert find(archive, "STUDY", AccessionNumber="%") == []


def test_wildcard_matching_is_case_sensitive_for_non_pn(archive: Archive) -> None:
    """C.2.2.2.4 keeps the case sensitivity of C.2.2.2.1: only PN may ignore case."""
    assert studies(find(archive, "STUDY", StudyDescription="chest*")) == {S3}
    assert studies(find(archive, "STUDY", StudyDescription="Chest*")) == {S1}
    assert find(archive, "STUDY", AccessionNumber="acc*") == []


def test_person_name_matching_ignores_case(archive: Archive) -> None:
    """C.2.2.2.1 allows PN matching insensitive to case; this archive implements that."""
    assert studies(find(archive, "STUDY", PatientName="doe^john")) == {S1, S2}
    assert studies(find(archive, "STUDY", PatientName="DOE^JOHN")) == {S1, S2}
    assert studies(find(archive, "STUDY", PatientName="doe*")) == {S1, S2, S3}
    assert studies(find(archive, "STUDY", PatientName="D?E^JANE")) == {S3}
    assert studies(find(archive, "STUDY", ReferringPhysicianName="smith^*")) == {S1}
    assert find(archive, "STUDY", PatientName="doe") == []  # single value is not a prefix


def test_date_ranges(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", StudyDate="20240110")) == {S1}
    assert studies(find(archive, "STUDY", StudyDate="20240101-20240131")) == {S1}
    assert studies(find(archive, "STUDY", StudyDate="20240110-20240215")) == {S1, S2}
    assert studies(find(archive, "STUDY", StudyDate="-20240101")) == {S3}
    assert studies(find(archive, "STUDY", StudyDate="-20231231")) == {S3}
    assert studies(find(archive, "STUDY", StudyDate="20240215-")) == {S2, S4}
    assert find(archive, "STUDY", StudyDate="20250101-") == []
    assert studies(find(archive, "STUDY", PatientBirthDate="19700101-19851231")) == {S1, S2, S3}


def test_time_ranges_and_single_time_values(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", StudyTime="-0900")) == {S2}
    # the upper bound is inclusive at its precision: 12:00:00.5 is within "-1200"
    assert studies(find(archive, "STUDY", StudyTime="1000-1200")) == {S1, S4}
    assert studies(find(archive, "STUDY", StudyTime="2300-")) == {S3}
    assert studies(find(archive, "STUDY", StudyTime="1015")) == {S1}


def test_uid_list_matching(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", StudyInstanceUID=[S1, S3])) == {S1, S3}
    assert studies(find(archive, "STUDY", StudyInstanceUID=[S4, f"{ROOT}.99"])) == {S4}
    assert find(archive, "STUDY", StudyInstanceUID=f"{ROOT}.99") == []


def test_combined_keys_must_all_match(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", PatientID="P1", StudyDate="20240201-")) == {S2}
    assert find(archive, "STUDY", PatientID="P2", AccessionNumber="ACC*") == []


def test_universal_matching_returns_values(archive: Archive) -> None:
    results = find(
        archive,
        "STUDY",
        StudyInstanceUID=S1,
        PatientName="",
        PatientID="",
        StudyDate="",
        StudyTime="",
        AccessionNumber="",
        StudyDescription="",
        ReferringPhysicianName="",
    )
    assert len(results) == 1
    (result,) = results
    assert values(results, "00100010") == ["Doe^John"]
    assert values(results, "00100020") == ["P1"]
    assert values(results, "00080020") == ["20240110"]
    assert values(results, "00080030") == ["101500"]
    assert values(results, "00080050") == ["ACC1"]
    assert values(results, "00081030") == ["Chest CT"]
    assert values(results, "00080090") == ["Smith^Anna"]
    assert result["00100010"]["vr"] == "PN"


def test_universal_matching_on_every_study(archive: Archive) -> None:
    results = find(archive, "STUDY", StudyInstanceUID="", PatientName="")
    assert studies(results) == {S1, S2, S3, S4}
    names = dict(zip(values(results, "0020000D"), values(results, "00100010"), strict=True))
    assert names == {S1: "Doe^John", S2: "Doe^John", S3: "DOE^JANE", S4: "Smith^Bob"}


def test_modalities_in_study(archive: Archive) -> None:
    assert studies(find(archive, "STUDY", ModalitiesInStudy="CT")) == {S1}
    assert studies(find(archive, "STUDY", ModalitiesInStudy="PR")) == {S1}
    assert studies(find(archive, "STUDY", ModalitiesInStudy=["MR", "CR"])) == {S2, S3}
    assert find(archive, "STUDY", ModalitiesInStudy="US") == []
    results = find(archive, "STUDY", StudyInstanceUID=S1, ModalitiesInStudy="")
    assert results[0]["00080061"]["Value"] == ["CT", "PR"]


def test_study_related_counts(archive: Archive) -> None:
    results = find(
        archive,
        "STUDY",
        StudyInstanceUID="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
    )
    counts = {
        uid: (series_count, instance_count)
        for uid, series_count, instance_count in zip(
            values(results, "0020000D"),
            values(results, "00201206"),
            values(results, "00201208"),
            strict=True,
        )
    }
    assert counts == {S1: (2, 3), S2: (1, 1), S3: (1, 1), S4: (1, 1)}
    assert studies(find(archive, "STUDY", NumberOfStudyRelatedInstances="3")) == {S1}
    assert studies(find(archive, "STUDY", NumberOfStudyRelatedSeries="1")) == {S2, S3, S4}


def test_limit_and_offset(archive: Archive) -> None:
    query = identifier_to_query(_identifier("STUDY", StudyInstanceUID=""), STUDY_ROOT_FIND)
    everything = list(archive.search(query))
    paged = Query(
        level=query.level,
        conditions=query.conditions,
        return_tags=query.return_tags,
        limit=2,
        offset=1,
    )
    assert list(archive.search(paged)) == everything[1:3]


def _identifier(level: str, **keys: Any) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


# -- patient level -----------------------------------------------------------------------


def test_patient_level(archive: Archive) -> None:
    results = find(
        archive,
        "PATIENT",
        model=PATIENT_ROOT_FIND,
        PatientName="doe*",
        PatientID="",
        PatientBirthDate="",
        PatientSex="",
        NumberOfPatientRelatedStudies="",
    )
    rows = {
        pid: (name, birth, sex, count)
        for pid, name, birth, sex, count in zip(
            values(results, "00100020"),
            values(results, "00100010"),
            values(results, "00100030"),
            values(results, "00100040"),
            values(results, "00201200"),
            strict=True,
        )
    }
    assert rows == {
        "P1": ("Doe^John", "19700101", "M", 2),
        "P2": ("DOE^JANE", "19851231", "F", 1),
    }
    assert sorted(
        values(find(archive, "PATIENT", model=PATIENT_ROOT_FIND, PatientSex="M"), "00100020")
    ) == ["P1", "P3"]
    assert values(
        find(archive, "PATIENT", model=PATIENT_ROOT_FIND, PatientBirthDate="-19600101"),
        "00100020",
    ) == ["P3"]


# -- series level ------------------------------------------------------------------------


def test_series_level(archive: Archive) -> None:
    results = find(
        archive,
        "SERIES",
        StudyInstanceUID=S1,
        SeriesInstanceUID="",
        Modality="",
        SeriesNumber="",
        NumberOfSeriesRelatedInstances="",
    )
    rows = {
        uid: (modality, number, count)
        for uid, modality, number, count in zip(
            values(results, "0020000E"),
            values(results, "00080060"),
            values(results, "00200011"),
            values(results, "00201209"),
            strict=True,
        )
    }
    assert rows == {f"{ROOT}.1.1": ("CT", 1, 2), f"{ROOT}.1.2": ("PR", 2, 1)}
    by_modality = find(archive, "SERIES", Modality="MR")
    assert values(by_modality, "0020000E") == [f"{ROOT}.2.1"]
    assert values(find(archive, "SERIES", SeriesNumber="2"), "0020000E") == [f"{ROOT}.1.2"]
    counted = find(archive, "SERIES", NumberOfSeriesRelatedInstances="2")
    assert values(counted, "0020000E") == [f"{ROOT}.1.1"]
    assert find(archive, "SERIES", SeriesDescription="axial") == []


def test_series_level_matching_on_a_key_only_the_header_holds(archive: Archive) -> None:
    """ProtocolName has no index column: it is matched against the stored header."""
    results = find(archive, "SERIES", SeriesInstanceUID="", ProtocolName="Head*")
    assert set(values(results, "0020000E")) == {f"{ROOT}.1.1", f"{ROOT}.2.1"}
    assert set(values(results, "00181030")) == {"Head routine", "Head MR"}
    exact = find(archive, "SERIES", ProtocolName="chest")
    assert values(exact, "0020000E") == [f"{ROOT}.3.1"]


# -- image level -------------------------------------------------------------------------


def test_image_level(archive: Archive) -> None:
    series_uid = f"{ROOT}.1.1"
    results = find(
        archive,
        "IMAGE",
        StudyInstanceUID=S1,
        SeriesInstanceUID=series_uid,
        SOPInstanceUID="",
        InstanceNumber="",
        SOPClassUID="",
    )
    rows = dict(zip(values(results, "00080018"), values(results, "00200013"), strict=True))
    assert rows == {instance_uid(series_uid, 1): 1, instance_uid(series_uid, 2): 2}
    assert set(values(results, "00080016")) == {CTImageStorage}
    second = find(archive, "IMAGE", InstanceNumber="2")
    assert values(second, "00080018") == [instance_uid(series_uid, 2)]
    listed = find(
        archive,
        "IMAGE",
        SOPInstanceUID=[instance_uid(series_uid, 1), instance_uid(f"{ROOT}.4.1", 1)],
    )
    assert set(values(listed, "00080018")) == {
        instance_uid(series_uid, 1),
        instance_uid(f"{ROOT}.4.1", 1),
    }
    # the unique keys of every level above are returned (PS3.4 C.4.1.2.1)
    assert set(listed[0]) >= {"0020000D", "0020000E", "00080018"}


# -- time values in the ACR-NEMA hh:mm:ss form, and entities without a date -------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about ':' in a TM value
def test_time_values_with_colons(archive: Archive) -> None:
    """hh:mm[:ss] (PS3.5 TM, kept for ACR-NEMA compatibility) means the same as hhmm[ss]."""
    condition = build_condition(0x00080030, "10:00-12:00")
    assert condition is not None and (condition.low, condition.high) == ("1000", "1200")
    assert studies(find(archive, "STUDY", StudyTime="10:00-12:00")) == {S1, S4}
    assert studies(find(archive, "STUDY", StudyTime="-09:00")) == {S2}
    assert studies(find(archive, "STUDY", StudyTime="10:15")) == {S1}
    assert studies(find(archive, "STUDY", StudyTime="23:59:59")) == {S3}


def test_ranges_do_not_match_empty_dates_and_times(tmp_path: Path) -> None:
    """'-<date>' matches dates up to <date> (C.2.2.2.5); a study without a date has none."""
    archive, executor = open_archive(load_settings(None, data_dir=tmp_path / "data"))
    try:
        for number, (date, time) in enumerate([("20240110", "101500"), ("", "")], start=1):
            series_uid = f"{ROOT}.50.{number}"
            ds = Dataset()
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = instance_uid(series_uid, 1)
            ds.StudyInstanceUID = f"{ROOT}.50.{number}0"
            ds.SeriesInstanceUID = series_uid
            ds.PatientID = "P50"
            ds.StudyDate = date
            ds.StudyTime = time
            ds.Modality = "OT"
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = tmp_path / f"{number}.dcm"
            ds.save_as(path, enforce_file_format=True)
            with path.open("rb") as source:
                archive.ingest_file(source, origin=Origin("test"))
        dated, undated = f"{ROOT}.50.10", f"{ROOT}.50.20"
        assert studies(find(archive, "STUDY", StudyDate="")) == {dated, undated}
        assert studies(find(archive, "STUDY", StudyDate="-20991231")) == {dated}
        assert studies(find(archive, "STUDY", StudyDate="19000101-")) == {dated}
        assert studies(find(archive, "STUDY", StudyDate="19000101-20991231")) == {dated}
        assert studies(find(archive, "STUDY", StudyTime="-2359")) == {dated}
        assert studies(find(archive, "STUDY", StudyTime="0000-")) == {dated}
    finally:
        executor.shutdown()
        archive.close()
