"""API fuzzing against a real archive (issue #5, "API fuzzing with schemathesis").

* The REST API: schemathesis reads ``/api/openapi.json`` from a running ``openvna
  serve`` and sends a bounded number of generated requests per operation, valid ones
  (positive) and invalid ones (negative); every answer must be no 5xx, and must conform
  to the description (documented status code, content type, body schema, headers).
* DICOMweb (described by PS3.18, not OpenAPI): hypothesis generates UIDs (with ``../``,
  backslashes, NUL, percent signs, unicode, 200-character values), frame lists, tags
  and QIDO-RS query strings for every DICOMweb resource and WADO-URI; no answer may be
  a 5xx.

Each test prints how many attack cases it ran (``ATTACK-CASES <test>: <n>``).
"""

from __future__ import annotations

import contextlib
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pydicom import dcmread
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from openvna.sample import GeneratedStudy
from tests.conftest import ArchiveProcess, free_port, temporary_postgres_database
from tests.integration.attack_cases import report_cases

Samples = tuple[Path, list[GeneratedStudy]]

EXAMPLES_PER_OPERATION = int(os.environ.get("OPENVNA_FUZZ_EXAMPLES", "15"))
"""Generated requests per REST operation and generation mode: the module stays under two
minutes on two cores (raise it with OPENVNA_FUZZ_EXAMPLES for a longer hunt)."""
DICOMWEB_EXAMPLES = 200 * max(1, EXAMPLES_PER_OPERATION // 15)
SEED = int(os.environ.get("OPENVNA_FUZZ_SEED", "20260505"))


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples
) -> Iterator[ArchiveProcess]:
    """An archive holding the sample studies; the rate limit raised so that the fuzzer
    measures the endpoints, not the limiter (tests/integration/test_limits.py does)."""
    directory = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "OPENVNA_SECURITY__LIMITS__REQUESTS_PER_MINUTE": "1000000"}
    archive = ArchiveProcess(
        directory / "data", free_port(), "OPENVNA", None, directory / "log", (), env
    )
    archive.start()
    try:
        archive.cli("import", str(sample_studies[0]))
        yield archive
    finally:
        archive.stop()


POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
NEGATIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


def fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    checks: list[Any],
    base_url: str,
    session: requests.Session,
) -> tuple[int, list[str]]:
    """Send generated requests for one operation; (cases sent, failures)."""
    cases = 0
    failures: list[str] = []

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal cases
        cases += 1
        try:
            case.call_and_validate(base_url=base_url, session=session, checks=checks, timeout=30)
        except (Exception, FailureGroup) as failure:
            method = operation.method.upper()
            failures.append(f"{method} {operation.path} ({mode.value}): {failure}")
            raise

    with contextlib.suppress(Exception, FailureGroup):  # the failure is in ``failures``
        run()
    return cases, failures


def test_rest_api_conforms_to_its_openapi_description(
    fuzzed: ArchiveProcess, request: pytest.FixtureRequest
):
    schema = schemathesis.openapi.from_url(f"{fuzzed.http_url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, "the description lists every /api operation"
    failures: list[str] = []
    cases = 0
    with requests.Session() as session:
        for operation in operations:
            for mode, checks in (
                (GenerationMode.POSITIVE, POSITIVE_CHECKS),
                (GenerationMode.NEGATIVE, NEGATIVE_CHECKS),
            ):
                sent, failed = fuzz_operation(operation, mode, checks, fuzzed.http_url, session)
                cases += sent
                failures += failed
        assert session.get(f"{fuzzed.http_url}/api/health").status_code == 200
    report_cases(request, cases)
    assert not failures, "\n\n".join(failures[:10])


# -- DICOMweb (PS3.18) ------------------------------------------------------------------

_NASTY = ["../", "..\\", "\x00", "%00", "%2e%2e%2f", "\\", "'", '"', ";", "--", "%", "_", "*"]
uids = st.one_of(
    st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,6}){1,6}", fullmatch=True),
    st.text(alphabet=string.digits + "./\\%_*'\";-\x00 ", min_size=0, max_size=80),
    st.builds(lambda a, b: a + b, st.sampled_from(_NASTY), st.text(max_size=30)),
    st.text(min_size=65, max_size=300, alphabet="0123456789."),
    st.text(max_size=40),
)
query_keys = st.one_of(
    st.sampled_from(
        [
            "PatientName",
            "PatientID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "00100010",
            "0020000D",
            "includefield",
            "limit",
            "offset",
            "fuzzymatching",
            "00400275.00400009",
            "SeriesNumber",
            "InstanceNumber",
            "NumberOfStudyRelatedInstances",
            "NumberOfPatientRelatedStudies",
        ]
    ),
    st.text(max_size=20),
)
query_values = st.one_of(
    st.text(max_size=60),
    st.sampled_from(_NASTY),
    st.integers().map(str),
    st.integers(min_value=2**62, max_value=10**40).map(str),  # beyond 64-bit columns
    st.from_regex(r"[0-9]{8}-[0-9]{8}", fullmatch=True),  # date ranges, plausible or not
)
queries = st.lists(st.tuples(query_keys, query_values), max_size=5)


def _resources(study: str, series: str, instance: str, extra: str) -> list[str]:
    base = f"/dicom-web/studies/{study}"
    item = f"{base}/series/{series}/instances/{instance}"
    return [
        "/dicom-web/studies",
        "/dicom-web/series",
        "/dicom-web/instances",
        f"{base}/series",
        f"{base}/instances",
        f"{base}/series/{series}/instances",
        base,
        f"{base}/metadata",
        f"{base}/series/{series}",
        f"{base}/series/{series}/metadata",
        item,
        f"{item}/metadata",
        f"{item}/frames/{extra}",
        f"{item}/frames/{extra}/rendered",
        f"{item}/rendered",
        f"{item}/thumbnail",
        f"{item}/bulkdata/{extra}",
        f"{base}/thumbnail",
        "/dicom-web/workitems",
        f"/dicom-web/workitems/{instance}",
        "/wado",
    ]


def fuzz_dicomweb(archive: ArchiveProcess, real: GeneratedStudy) -> tuple[int, list[str]]:
    """Generated GETs over every DICOMweb resource; (cases sent, 5xx answers)."""
    first = dcmread(real.paths[0], stop_before_pixels=True)
    series_uid, instance_uid = str(first.SeriesInstanceUID), str(first.SOPInstanceUID)
    cases = 0
    server_errors: list[str] = []
    with requests.Session() as client:

        @seed(SEED)
        @settings(
            max_examples=DICOMWEB_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            study=st.one_of(uids, st.just(real.study_instance_uid)),
            series=st.one_of(uids, st.just(series_uid)),
            instance=st.one_of(uids, st.just(instance_uid)),
            extra=st.one_of(uids, st.sampled_from(["1", "1,2", "0", "-1", "00280010", "x"])),
            resource=st.integers(min_value=0, max_value=len(_resources("", "", "", "")) - 1),
            query=queries,
            accept=st.sampled_from(
                ["application/dicom+json", "*/*", "multipart/related; type=application/dicom"]
            ),
        )
        def run(
            study: str,
            series: str,
            instance: str,
            extra: str,
            resource: int,
            query: list[tuple[str, str]],
            accept: str,
        ) -> None:
            nonlocal cases
            parts = [quote(value, safe="") for value in (study, series, instance, extra)]
            path = _resources(*parts)[resource]
            if path == "/wado":
                query = [
                    ("requestType", "WADO"),
                    ("studyUID", study),
                    ("seriesUID", series),
                    ("objectUID", instance),
                    *query,
                ]
            url = path + ("?" + urlencode(query) if query else "")
            cases += 1
            response = client.get(archive.http_url + url, headers={"Accept": accept}, timeout=30)
            if response.status_code >= 500:
                server_errors.append(f"GET {url} -> {response.status_code}: {response.text[:300]}")

        run()
        assert client.get(f"{archive.http_url}/api/health").status_code == 200
    return cases, server_errors


def test_dicomweb_survives_generated_uids_and_queries(
    fuzzed: ArchiveProcess, sample_studies: Samples, request: pytest.FixtureRequest
):
    cases, server_errors = fuzz_dicomweb(fuzzed, sample_studies[1][0])
    report_cases(request, cases)
    assert not server_errors, "\n".join(server_errors[:10])


@pytest.fixture(scope="module")
def fuzzed_postgres(
    tmp_path_factory: pytest.TempPathFactory, sample_studies: Samples
) -> Iterator[ArchiveProcess]:
    """The same archive on PostgreSQL, whose text and integer types refuse what SQLite
    takes (NUL, integers past 64 bits): a value that reaches SQL unchecked shows here."""
    with temporary_postgres_database() as database_url:
        directory = tmp_path_factory.mktemp("fuzz-postgres")
        env = {
            **os.environ,
            "OPENVNA_SECURITY__LIMITS__REQUESTS_PER_MINUTE": "1000000",
            "OPENVNA_DATABASE_URL": database_url,
        }
        archive = ArchiveProcess(
            directory / "data", free_port(), "OPENVNA", None, directory / "log", (), env
        )
        archive.start()
        try:
            archive.cli("import", str(sample_studies[0]))
            yield archive
        finally:
            archive.stop()


def test_dicomweb_on_postgresql_survives_generated_uids_and_queries(
    fuzzed_postgres: ArchiveProcess, sample_studies: Samples, request: pytest.FixtureRequest
):
    cases, server_errors = fuzz_dicomweb(fuzzed_postgres, sample_studies[1][0])
    report_cases(request, cases)
    assert not server_errors, "\n".join(server_errors[:10])
