"""Role × endpoint × resource matrix: who may do what to which study, over every protocol.

A real ``openvna serve`` with ``security.require_auth`` on holds synthetic studies from
three institutions and three issuers of patient ID. Principals:

- one API key per role, and a technologist key narrowed to ``study:query``;
- role rules: technologists see issuer SOUTH, AI services see "North Hospital";
  referring physicians and researchers see only what is granted (the default), one
  referring physician by an explicit grant, another by breaking the glass;
- DICOM AEs per role (``security.dicom_aes``), one listed only from another host, and
  one not listed at all; anonymous and forged HTTP credentials.

Every combination is sent for real (``requests`` over HTTP, dcmtk over DIMSE) and
compared with what the rules allow, computed here from the data as stored: forbidden
ones must answer 401/403/404, 0x0124 or an association rejection; allowed ones must
succeed and answer what an unrestricted principal gets; searches, counts and paging
must never include a hidden study. The matrix sizes are printed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, insert

from openvna.config import Role
from openvna.index.schema import api_keys
from openvna.sample import generate_samples
from openvna.security.permissions import Permission, parse_permissions
from openvna.security.principal import Principal, PrincipalKind
from tests.conftest import (
    DCMTK_ENV,
    ArchiveProcess,
    free_port,
    require_tool,
    run_tool,
    wait_until,
)

P = Permission
INSTITUTIONS = ("North Hospital", "South Clinic", "East Imaging")
ISSUERS = ("NORTH", "SOUTH", "EAST")
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MULTIPART_OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PIXEL_DATA = "7FE00010"


# -- the world: studies as stored, principals and what they may see -----------------------


@dataclass
class StudyInfo:
    uid: str
    patient_id: str
    issuer: str
    institution: str
    instances: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> series
    source: Path | None = None  # one stored file of the study (a template for new ones)

    @property
    def series(self) -> set[str]:
        return set(self.instances.values())

    def first(self) -> tuple[str, str]:
        """(series, SOP Instance UID) of an image of the study's first series."""
        sop = sorted(self.instances)[0]
        return self.instances[sop], sop


@dataclass(frozen=True)
class Actor:
    """An HTTP principal (API key) or a DICOM AE, with the rule that limits it."""

    name: str
    roles: frozenset[Role]
    sees: Callable[[StudyInfo], bool] | None  # None: every study
    scopes: str = ""
    token: str | None = None
    subject: str = ""

    def can(self, permission: Permission) -> bool:
        scopes = parse_permissions(self.scopes) if self.scopes else None
        return Principal("x", PrincipalKind.API_KEY, self.roles, scopes=scopes).can(permission)


@dataclass
class World:
    archive: ArchiveProcess
    samples: Path
    studies: dict[str, StudyInfo]
    actors: dict[str, Actor]
    aes: dict[str, Actor]
    grants: dict[str, set[str]]  # subject -> study UIDs granted (or broken glass)
    workitems: dict[str, str]  # workitem UID -> its study UID
    move_dir: Path
    counts: Counter[str] = field(default_factory=Counter)

    def visible(self, actor: Actor, study: StudyInfo) -> bool:
        if actor.sees is None:
            return True
        return actor.sees(study) or study.uid in self.grants.get(actor.subject, set())

    def visible_studies(self, actor: Actor) -> set[str]:
        return {uid for uid, study in self.studies.items() if self.visible(actor, study)}

    def restricted(self, actor: Actor) -> bool:
        return actor.sees is not None


def _issuer(issuer: str) -> Callable[[StudyInfo], bool]:
    return lambda study: study.issuer == issuer


def _institution(name: str) -> Callable[[StudyInfo], bool]:
    return lambda study: study.institution == name


def _nothing(study: StudyInfo) -> bool:
    return False


HTTP_ACTORS = [
    Actor("admin", frozenset({Role.ADMIN}), None),
    Actor("radiologist", frozenset({Role.RADIOLOGIST}), None),
    Actor("technologist", frozenset({Role.TECHNOLOGIST}), _issuer("SOUTH")),
    Actor("ai_service", frozenset({Role.AI_SERVICE}), _institution("North Hospital")),
    Actor("referring", frozenset({Role.REFERRING_PHYSICIAN}), _nothing),
    Actor("researcher", frozenset({Role.RESEARCHER}), _nothing),
    Actor("auditor", frozenset({Role.AUDITOR}), _nothing),
    Actor("breakglass", frozenset({Role.REFERRING_PHYSICIAN}), _nothing),
    Actor("scoped", frozenset({Role.TECHNOLOGIST}), _issuer("SOUTH"), scopes="study:query"),
]
DICOM_AES = [
    Actor("ECHOSCU", frozenset({Role.TECHNOLOGIST}), _issuer("SOUTH"), subject="ae:ECHOSCU"),
    Actor("ADMINAE", frozenset({Role.ADMIN}), None, subject="ae:ADMINAE"),
    Actor("RADAE", frozenset({Role.RADIOLOGIST}), None, subject="ae:RADAE"),
    Actor("TECHAE", frozenset({Role.TECHNOLOGIST}), _issuer("SOUTH"), subject="ae:TECHAE"),
    Actor("AIAE", frozenset({Role.AI_SERVICE}), _institution("North Hospital"), subject="ae:AIAE"),
    Actor("REFAE", frozenset({Role.REFERRING_PHYSICIAN}), _nothing, subject="ae:REFAE"),
    Actor("AUDAE", frozenset({Role.AUDITOR}), _nothing, subject="ae:AUDAE"),
]
REJECTED_AES = ("WRONGHOST", "STRANGER")  # listed for another host only; not listed


def _settings_env(move_port: int) -> dict[str, str]:
    aes = [{"ae_title": ae.name, "roles": sorted(ae.roles)} for ae in DICOM_AES]
    aes.append({"ae_title": "WRONGHOST", "roles": ["radiologist"], "hosts": ["192.0.2.7"]})
    return {
        **os.environ,
        "OPENVNA_SECURITY__REQUIRE_AUTH": "true",
        "OPENVNA_SECURITY__DICOM_AES": json.dumps(aes),
        "OPENVNA_SECURITY__ACCESS_RULES": json.dumps(
            [
                {"role": "technologist", "issuers_of_patient_id": ["SOUTH"]},
                {"role": "ai_service", "institutions": ["North Hospital"]},
            ]
        ),
        "OPENVNA_DIMSE__PEERS": json.dumps(
            [{"ae_title": "MOVESCP", "host": "127.0.0.1", "port": move_port}]
        ),
        "OPENVNA_AI__ENABLED": "false",
        "OPENVNA_AI__BUILTIN_MODELS": "false",
    }


def _prepare_samples(out: Path) -> tuple[Path, dict[str, StudyInfo]]:
    """Synthetic studies, each rewritten with an issuer (per patient) and an institution
    (per study, in turn), so every rule matches some studies of some patients."""
    generated = generate_samples(out / "generated", seed=11, patients=3, small=True)
    patients = sorted({study.patient_id for study in generated})
    loaded = out / "loaded"
    studies: dict[str, StudyInfo] = {}
    for index, generated_study in enumerate(generated):
        issuer = ISSUERS[patients.index(generated_study.patient_id)]
        institution = INSTITUTIONS[index % len(INSTITUTIONS)]
        info = StudyInfo(
            generated_study.study_instance_uid,
            generated_study.patient_id,
            issuer,
            institution,
        )
        for number, path in enumerate(generated_study.paths):
            dataset = dcmread(path)
            dataset.IssuerOfPatientID = issuer
            dataset.InstitutionName = institution
            target = loaded / info.uid / f"{number}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(target, enforce_file_format=True)
            info.instances[str(dataset.SOPInstanceUID)] = str(dataset.SeriesInstanceUID)
            info.source = info.source or target
        studies[info.uid] = info
    return loaded, studies


def _insert_api_key(engine: Any, name: str, roles: frozenset[Role], scopes: str) -> str:
    """A key row as the contract describes it: ``ovna_<key_id>_<secret>``, SHA-256."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with engine.begin() as connection:
        connection.execute(
            insert(api_keys).values(
                key_id=key_id,
                secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
                name=name,
                roles=",".join(sorted(roles)),
                scopes=scopes,
                owner="test",
                created_at=time.time(),
            )
        )
    return f"ovna_{key_id}_{secret}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("access-matrix")
    loaded, studies = _prepare_samples(root)
    move_dir = root / "moved"
    move_dir.mkdir()
    move_port = free_port()
    storescp = subprocess.Popen(
        [require_tool("storescp"), "-aet", "MOVESCP", "-od", str(move_dir), "+xa", str(move_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", move_port)) == 0

    archive = ArchiveProcess(
        root / "data",
        free_port(),
        "OPENVNA",
        None,
        root / "archive.log",
        (),
        _settings_env(move_port),
    )
    try:
        wait_until(listening, 20, "storescp to listen")
        archive.start()
        stored = run_tool(
            "storescu",
            "-aet",
            "ADMINAE",
            "-aec",
            "OPENVNA",
            "+sd",
            "+r",
            "-v",
            *archive.address,
            str(loaded),
            timeout=300,
        )
        total = sum(len(study.instances) for study in studies.values())
        assert (stored.stdout + stored.stderr).count("(Success)") == total
        engine = create_engine(f"sqlite:///{(archive.data_dir / 'index.sqlite').resolve()}")
        actors = {
            actor.name: Actor(
                actor.name,
                actor.roles,
                actor.sees,
                actor.scopes,
                token := _insert_api_key(engine, actor.name, actor.roles, actor.scopes),
                f"apikey:{token.split('_')[1]}",
            )
            for actor in HTTP_ACTORS
        }
        engine.dispose()
        world = World(
            archive,
            root,
            studies,
            actors,
            {ae.name: ae for ae in DICOM_AES},
            {},
            {},
            move_dir,
        )
        _grant_and_break_glass(world)
        _create_workitems(world)
        yield world
    finally:
        archive.stop()
        storescp.terminate()
        storescp.wait(timeout=10)


def _ordered(world: World) -> list[StudyInfo]:
    return [world.studies[uid] for uid in sorted(world.studies)]


def _grant_and_break_glass(world: World) -> None:
    """The referring key gets a grant (REST, by the admin), REFAE one (CLI), and the
    break-glass key opens a third study with a reason."""
    ordered = _ordered(world)
    granted, ae_granted, broken = ordered[-1], ordered[1], ordered[2]
    referring = world.actors["referring"]
    answer = http(
        world,
        "admin",
        "POST",
        "/api/access/grants",
        body={
            "subject": referring.subject,
            "studyInstanceUID": granted.uid,
            "reason": "consult",
        },
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["grantedBy"] == world.actors["admin"].subject
    world.grants.setdefault(referring.subject, set()).add(granted.uid)
    world.archive.cli("access", "grant", "ae:REFAE", ae_granted.uid, "--reason", "second read")
    world.grants.setdefault("ae:REFAE", set()).add(ae_granted.uid)
    glass = world.actors["breakglass"]
    before = http(world, "breakglass", "GET", f"/dicom-web/studies/{broken.uid}/metadata")
    assert before.status_code == 404
    answer = http(
        world,
        "breakglass",
        "POST",
        "/api/access/break-glass",
        body={
            "studyInstanceUID": broken.uid,
            "reason": "unconscious patient in the ED",
        },
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["kind"] == "break-glass"
    world.grants.setdefault(glass.subject, set()).add(broken.uid)


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _workitem(study_uid: str) -> dict[str, Any]:
    return {
        "00741204": _element("LO", "access matrix"),
        "00100020": _element("LO", "WI"),
        "00404005": _element("DT", "20300101120000"),
        "0020000D": _element("UI", study_uid),
    }


def _create_workitems(world: World) -> None:
    for study in _ordered(world):
        uid = str(generate_uid())
        answer = http(
            world,
            "admin",
            "POST",
            f"/dicom-web/workitems?{uid}",
            body=_workitem(study.uid),
            content_type=DICOM_JSON,
        )
        assert answer.status_code == 201, answer.text
        world.workitems[uid] = study.uid


def http(
    world: World,
    who: str,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    accept: str | None = None,
    body: Any = None,
    data: bytes | None = None,
    content_type: str = "application/json",
) -> requests.Response:
    headers: dict[str, str] = {}
    if who == "bogus":
        headers["Authorization"] = "Bearer ovna_0123456789ab_" + "x" * 43
    elif who != "anonymous":
        token = world.actors[who].token
        assert token is not None
        # both ways of sending a key are accepted (contract): alternate between them
        if len(who) % 2:
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers["X-API-Key"] = token
    if accept:
        headers["Accept"] = accept
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = content_type
    return requests.request(
        method,
        world.archive.http_url + path,
        params=params,
        headers=headers,
        data=data,
        timeout=60,
    )


# -- the HTTP matrix ----------------------------------------------------------------------


@dataclass(frozen=True)
class StudyEndpoint:
    """An endpoint that names one study; ``hidden_status`` is what a principal that may
    use it but not see the study gets (404, or 200 with nothing for a search)."""

    name: str
    permission: Permission
    request: Callable[[World, StudyInfo], dict[str, Any]]
    hidden_status: int = 404
    hidden_check: Callable[[requests.Response], bool] | None = None


def _series_path(study: StudyInfo) -> str:
    series, _ = study.first()
    return f"/dicom-web/studies/{study.uid}/series/{series}"


def _instance_path(study: StudyInfo) -> str:
    series, sop = study.first()
    return f"/dicom-web/studies/{study.uid}/series/{series}/instances/{sop}"


def _workitem_of(world: World, study: StudyInfo) -> str:
    return next(uid for uid, of in world.workitems.items() if of == study.uid)


STUDY_ENDPOINTS = [
    StudyEndpoint(
        "QIDO studies?StudyInstanceUID",
        P.QUERY,
        lambda w, s: {"path": "/dicom-web/studies", "params": {"StudyInstanceUID": s.uid}},
        hidden_status=200,
        hidden_check=lambda r: r.json() == [],
    ),
    StudyEndpoint(
        "QIDO series of study",
        P.QUERY,
        lambda w, s: {
            "path": f"/dicom-web/studies/{s.uid}/series",
            "params": {"includefield": "all"},
        },
    ),
    StudyEndpoint(
        "QIDO instances of series",
        P.QUERY,
        lambda w, s: {"path": _series_path(s) + "/instances"},
    ),
    StudyEndpoint(
        "WADO-RS study",
        P.READ,
        lambda w, s: {"path": f"/dicom-web/studies/{s.uid}", "accept": MULTIPART_DICOM},
    ),
    StudyEndpoint(
        "WADO-RS series", P.READ, lambda w, s: {"path": _series_path(s), "accept": MULTIPART_DICOM}
    ),
    StudyEndpoint(
        "WADO-RS instance",
        P.READ,
        lambda w, s: {"path": _instance_path(s), "accept": MULTIPART_DICOM},
    ),
    StudyEndpoint(
        "WADO-RS metadata",
        P.READ,
        lambda w, s: {"path": f"/dicom-web/studies/{s.uid}/metadata", "accept": DICOM_JSON},
    ),
    StudyEndpoint(
        "WADO-RS frames",
        P.READ,
        lambda w, s: {"path": _instance_path(s) + "/frames/1", "accept": MULTIPART_OCTETS},
    ),
    StudyEndpoint(
        "WADO-RS rendered",
        P.READ,
        lambda w, s: {"path": _instance_path(s) + "/rendered", "accept": "image/jpeg"},
    ),
    StudyEndpoint(
        "WADO-RS thumbnail",
        P.READ,
        lambda w, s: {"path": f"/dicom-web/studies/{s.uid}/thumbnail", "accept": "image/jpeg"},
    ),
    StudyEndpoint(
        "WADO-RS bulkdata",
        P.READ,
        lambda w, s: {"path": _instance_path(s) + f"/bulkdata/{PIXEL_DATA}", "accept": "*/*"},
    ),
    StudyEndpoint(
        "WADO-URI",
        P.READ,
        lambda w, s: {
            "path": "/wado",
            "params": {
                "requestType": "WADO",
                "studyUID": s.uid,
                "seriesUID": s.first()[0],
                "objectUID": s.first()[1],
                "contentType": "application/dicom",
            },
        },
    ),
    StudyEndpoint(
        "AI jobs of study",
        P.QUERY,
        lambda w, s: {"path": "/api/ai/jobs", "params": {"study": s.uid}},
    ),
    StudyEndpoint(
        "AI results of study",
        P.READ,
        lambda w, s: {"path": "/api/ai/results", "params": {"study": s.uid}},
    ),
    StudyEndpoint(
        "AI run on study",  # AI is stopped in this archive: allowed means 400, not 2xx
        P.AI_RUN,
        lambda w, s: {"method": "POST", "path": "/api/ai/jobs", "body": {"study": s.uid}},
    ),
    StudyEndpoint(
        "UPS workitem of study",
        P.WORKITEM_READ,
        lambda w, s: {"path": f"/dicom-web/workitems/{_workitem_of(w, s)}", "accept": DICOM_JSON},
    ),
]


@dataclass
class Matrix:
    """Every combination sent, by outcome; failures listed at the end."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def record(self, protocol: str, ok: bool, allowed: bool, description: str) -> None:
        self.counts[f"{protocol} {'allowed' if allowed else 'refused'}"] += 1
        if not ok:
            self.failures.append(description)


def _send(world: World, who: str, spec: dict[str, Any]) -> requests.Response:
    return http(
        world,
        who,
        spec.get("method", "GET"),
        spec["path"],
        params=spec.get("params"),
        accept=spec.get("accept"),
        body=spec.get("body"),
    )


def _shape(response: requests.Response) -> tuple[int, str, Any]:
    """What must be equal between two allowed principals: status, type, body (JSON
    parsed; other bodies by length, multipart boundaries being random but as long)."""
    media = response.headers.get("content-type", "").split(";")[0]
    if "json" in media:
        return response.status_code, media, response.json()
    return response.status_code, media, len(response.content)


def _expected_refusal(world: World, who: str, permission: Permission) -> int | None:
    if who in ("anonymous", "bogus"):
        return 401
    if not world.actors[who].can(permission):
        return 403
    return None


WHO = [*(actor.name for actor in HTTP_ACTORS), "anonymous", "bogus"]


def test_http_study_matrix(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Every principal × every study-scoped endpoint × every study."""
    matrix = Matrix()
    for study in _ordered(world):
        for endpoint in STUDY_ENDPOINTS:
            spec = endpoint.request(world, study)
            reference = _shape(_send(world, "admin", spec))
            allowed_status = 400 if endpoint.name == "AI run on study" else 200
            assert reference[0] == allowed_status, (endpoint.name, study.uid, reference)
            for who in WHO:
                response = _send(world, who, spec)
                refusal = _expected_refusal(world, who, endpoint.permission)
                visible = refusal is None and world.visible(world.actors[who], study)
                label = f"{who} {endpoint.name} {study.uid}: {response.status_code}"
                if refusal is not None:
                    ok = response.status_code == refusal
                elif visible:
                    ok = _shape(response) == reference
                else:
                    ok = response.status_code == endpoint.hidden_status and (
                        endpoint.hidden_check is None or endpoint.hidden_check(response)
                    )
                    refusal = endpoint.hidden_status
                matrix.record("HTTP", ok, refusal is None, label)
    _report(capsys, "HTTP principal × study endpoint × study", matrix)


def _uids(results: list[dict[str, Any]], tag: str) -> list[str]:
    return [result[tag]["Value"][0] for result in results if result.get(tag, {}).get("Value")]


def test_http_searches_counts_and_paging_never_include_hidden_studies(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = Matrix()
    for who in WHO:
        refusal = _expected_refusal(world, who, P.QUERY)
        checks = _search_checks(world, who) if refusal is None else {}
        for name, (ok, detail) in checks.items():
            matrix.record("HTTP", ok, True, f"{who} {name}: {detail}")
        if refusal is not None:
            for path in (
                "/dicom-web/studies",
                "/dicom-web/series",
                "/dicom-web/instances",
                "/api/studies",
            ):
                status = http(world, who, "GET", path).status_code
                matrix.record("HTTP", status == refusal, False, f"{who} GET {path}: {status}")
        system = http(world, who, "GET", "/api/system")
        system_refusal = _expected_refusal(world, who, P.SYSTEM_READ)
        if system_refusal is not None:
            ok = system.status_code == system_refusal
        else:
            ok = system.status_code == 200 and system.json()["counts"] == _counts(world, who)
        matrix.record("HTTP", ok, system_refusal is None, f"{who} /api/system: {system.text}")
    _report(capsys, "HTTP searches, counts and paging", matrix)


def _counts(world: World, who: str) -> dict[str, int]:
    visible = [world.studies[uid] for uid in world.visible_studies(world.actors[who])]
    return {
        "patients": len({(s.patient_id, s.issuer) for s in visible}),
        "studies": len(visible),
        "series": sum(len(s.series) for s in visible),
        "instances": sum(len(s.instances) for s in visible),
    }


def _search_checks(world: World, who: str) -> dict[str, tuple[bool, str]]:
    actor = world.actors[who]
    visible = world.visible_studies(actor)
    series = {se for uid in visible for se in world.studies[uid].series}
    instances = {sop for uid in visible for sop in world.studies[uid].instances}
    checks: dict[str, tuple[bool, str]] = {}

    def get(path: str, **params: str) -> requests.Response:
        return http(world, who, "GET", path, params=params, accept=DICOM_JSON)

    found = get("/dicom-web/studies", PatientName="*", includefield="all").json()
    checks["QIDO studies PatientName=* includefield=all"] = (
        set(_uids(found, "0020000D")) == visible and len(found) == len(visible),
        f"{len(found)} found, {len(visible)} visible",
    )
    found = get("/dicom-web/series", includefield="all", Modality="*").json()
    checks["QIDO series includefield=all"] = (
        set(_uids(found, "0020000E")) == series and set(_uids(found, "0020000D")) <= visible,
        f"{len(found)} found, {len(series)} visible",
    )
    found = get("/dicom-web/instances", includefield="all", limit="1000").json()
    checks["QIDO instances includefield=all"] = (
        set(_uids(found, "00080018")) == instances,
        f"{len(found)} found, {len(instances)} visible",
    )
    paged: list[str] = []
    warnings: list[bool] = []
    for offset in range(0, len(world.studies) + 4, 3):
        page = get("/dicom-web/studies", PatientName="*", limit="3", offset=str(offset))
        paged.extend(_uids(page.json(), "0020000D"))
        warnings.append("Warning" in page.headers)
    expected_warnings = [
        offset + 3 < len(visible) for offset in range(0, len(world.studies) + 4, 3)
    ]
    checks["QIDO paging limit=3"] = (
        sorted(paged) == sorted(visible) and warnings == expected_warnings,
        f"pages {paged}, warnings {warnings} for {len(visible)} visible",
    )
    listed = http(world, who, "GET", "/api/studies", params={"limit": "1000"}).json()
    checks["REST /api/studies"] = (
        {study["studyInstanceUID"] for study in listed} == visible,
        f"{len(listed)} listed",
    )
    patient_level = get(
        "/dicom-web/studies", PatientName="*", includefield="NumberOfPatientRelatedStudies"
    ).json()
    per_patient = Counter(world.studies[uid].patient_id for uid in visible)
    checks["QIDO NumberOfPatientRelatedStudies"] = (
        all(
            int(r["00201200"]["Value"][0]) == per_patient[r["00100020"]["Value"][0]]
            for r in patient_level
        ),
        json.dumps([r.get("00201200") for r in patient_level]),
    )
    return checks


GlobalCheck = tuple[str, Permission | None, dict[str, Any], Callable[[requests.Response], bool]]


def _global_checks(world: World) -> list[GlobalCheck]:
    """Endpoints that name no study: (name, permission, request, success check)."""
    hidden_study = str(generate_uid())
    granted = set(world.grants)
    return [
        ("health", None, {"path": "/api/health"}, lambda r: r.status_code == 200),
        ("openapi", P.SYSTEM_READ, {"path": "/api/openapi.json"}, lambda r: r.status_code == 200),
        (
            "capabilities",
            P.SYSTEM_READ,
            {"method": "OPTIONS", "path": "/dicom-web"},
            lambda r: r.status_code == 200,
        ),
        ("AI models", P.SYSTEM_READ, {"path": "/api/ai/models"}, lambda r: r.status_code == 200),
        (
            "AI stop switch",
            P.AI_ADMIN,
            {"method": "POST", "path": "/api/ai/stop"},
            lambda r: r.status_code == 200,
        ),
        (
            "grants list",
            P.USER_ADMIN,
            {"path": "/api/access/grants"},
            lambda r: r.status_code == 200 and granted <= {g["subject"] for g in r.json()},
        ),
        (
            "break-glass without a reason",
            P.BREAK_GLASS,
            {
                "method": "POST",
                "path": "/api/access/break-glass",
                "body": {"studyInstanceUID": hidden_study, "reason": " "},
            },
            lambda r: r.status_code == 400,
        ),
        (
            "users (authentication module)",
            P.USER_ADMIN,
            {"path": "/api/users"},
            lambda r: r.status_code not in (401, 403),
        ),
        (
            "audit trail (audit module)",
            P.AUDIT_READ,
            {"path": "/api/audit"},
            lambda r: r.status_code not in (401, 403),
        ),
        (
            "UPS search",
            P.WORKITEM_READ,
            {"path": "/dicom-web/workitems", "accept": DICOM_JSON},
            lambda r: r.status_code in (200, 204),
        ),
    ]


def test_http_global_endpoints(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    matrix = Matrix()
    for name, permission, spec, succeeded in _global_checks(world):
        for who in WHO:
            response = _send(world, who, spec)
            # explicit credentials that fail are refused everywhere, public paths too
            refusal = 401 if who == "bogus" else None
            if permission is not None:
                refusal = _expected_refusal(world, who, permission)
            ok = response.status_code == refusal if refusal is not None else succeeded(response)
            matrix.record("HTTP", ok, refusal is None, f"{who} {name}: {response.status_code}")
        if name == "AI stop switch":
            http(world, "admin", "POST", "/api/ai/start")
    for who in WHO:
        # a route the table does not know: administrators only (then the router's 404)
        unknown = http(world, who, "GET", "/api/no-such-route").status_code
        expected = {"anonymous": 401, "bogus": 401, "admin": 404}.get(who, 403)
        matrix.record("HTTP", unknown == expected, who == "admin", f"{who} unknown: {unknown}")
        # AI lists: a restricted principal lists one study at a time
        refusal = _expected_refusal(world, who, P.QUERY)
        if refusal is None and world.restricted(world.actors[who]):
            refusal = 403
        status = http(world, who, "GET", "/api/ai/jobs").status_code
        expected = refusal or 200
        matrix.record("HTTP", status == expected, refusal is None, f"{who} AI jobs: {status}")
        # UPS search holds only workitems of visible studies
        if _expected_refusal(world, who, P.WORKITEM_READ) is None:
            found = http(world, who, "GET", "/dicom-web/workitems", accept=DICOM_JSON)
            studies = _uids(found.json(), "0020000D") if found.status_code == 200 else []
            actor = world.actors[who]
            expected_studies = sorted(
                study
                for study in world.workitems.values()
                if (study in world.studies and world.visible(actor, world.studies[study]))
                or (not world.restricted(actor) and study not in world.studies)
            )
            matrix.record(
                "HTTP", sorted(studies) == expected_studies, True, f"{who} UPS search {studies}"
            )
    _report(capsys, "HTTP global endpoints", matrix)


def _new_instance(study: StudyInfo, *, new_study: bool = False) -> tuple[bytes, str, str]:
    """A copy of one of the study's files as a new instance in a new series (or, with
    ``new_study``, in a new study of the same patient); returns (bytes, study, SOP UID)."""
    assert study.source is not None
    dataset = dcmread(study.source)
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if new_study:
        dataset.StudyInstanceUID = generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)


def _stow_body(part: bytes) -> tuple[bytes, str]:
    boundary = "access-matrix-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_http_stow_and_ups_create(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Writes: STOW-RS of a new study, STOW-RS into a visible and a hidden study, and
    UPS Create. What is stored is added to the world, so other tests expect it."""
    matrix = Matrix()
    for who in WHO:
        refusal = _expected_refusal(world, who, P.STORE)
        targets: list[tuple[str, StudyInfo, bool]] = []
        template = _ordered(world)[0]
        targets.append(("/dicom-web/studies", template, True))
        if who in world.actors:
            actor = world.actors[who]
            visible = [s for s in _ordered(world) if world.visible(actor, s)]
            hidden = [s for s in _ordered(world) if not world.visible(actor, s)]
            targets += [(f"/dicom-web/studies/{s.uid}", s, False) for s in visible[:1] + hidden[:1]]
        for path, study, new_study in targets:
            part, study_uid, sop_uid = _new_instance(study, new_study=new_study)
            body, content_type = _stow_body(part)
            response = http(
                world,
                who,
                "POST",
                path,
                data=body,
                content_type=content_type,
                accept=DICOM_JSON,
            )
            expected = refusal
            if expected is None and not new_study and not world.visible(world.actors[who], study):
                expected = 404
            if expected is None:
                ok = response.status_code == 200
                if ok:
                    stored = world.studies.setdefault(
                        study_uid,
                        StudyInfo(
                            study_uid,
                            study.patient_id,
                            study.issuer,
                            study.institution,
                            source=study.source,
                        ),
                    )
                    stored.instances[sop_uid] = str(dcmread(io.BytesIO(part)).SeriesInstanceUID)
            else:
                ok = response.status_code == expected
            matrix.record(
                "HTTP", ok, expected is None, f"{who} STOW {path}: {response.status_code}"
            )
        # UPS Create for a study the archive does not hold
        uid, study_uid = str(generate_uid()), str(generate_uid())
        response = http(
            world,
            who,
            "POST",
            f"/dicom-web/workitems?{uid}",
            body=_workitem(study_uid),
            content_type=DICOM_JSON,
        )
        refusal = _expected_refusal(world, who, P.WORKITEM_WRITE)
        ok = response.status_code == (refusal or 201)
        if response.status_code == 201:
            world.workitems[uid] = study_uid
        matrix.record("HTTP", ok, refusal is None, f"{who} UPS create: {response.status_code}")
    _report(capsys, "HTTP STOW-RS and UPS create", matrix)


def test_break_glass_and_grant_administration(world: World) -> None:
    """Break-the-glass needs a reason and the permission; grants need an administrator;
    a revoked grant hides the study again at once."""
    study = _ordered(world)[3]
    assert not world.visible(world.actors["researcher"], study)
    body = {"studyInstanceUID": study.uid, "reason": "tumour board"}
    assert (
        http(world, "researcher", "POST", "/api/access/break-glass", body=body).status_code == 403
    )
    assert (
        http(
            world,
            "radiologist",
            "POST",
            "/api/access/grants",
            body={
                "subject": world.actors["researcher"].subject,
                "studyInstanceUID": study.uid,
            },
        ).status_code
        == 403
    )
    missing = {"studyInstanceUID": str(generate_uid()), "reason": "no such study"}
    assert (
        http(world, "referring", "POST", "/api/access/break-glass", body=missing).status_code == 404
    )
    for bad in ({"studyInstanceUID": study.uid}, {"studyInstanceUID": "../x", "reason": "r"}, [1]):
        assert (
            http(world, "referring", "POST", "/api/access/break-glass", body=bad).status_code == 400
        )
    researcher = world.actors["researcher"]
    path = f"/dicom-web/studies/{study.uid}/metadata"
    assert http(world, "researcher", "GET", path).status_code == 404
    made = http(
        world,
        "admin",
        "POST",
        "/api/access/grants",
        body={
            "subject": researcher.subject,
            "studyInstanceUID": study.uid,
            "hours": 1,
        },
    )
    assert made.status_code == 201 and made.json()["expiresAt"] > time.time() + 3000
    assert http(world, "researcher", "GET", path).status_code == 200
    listed = http(
        world, "admin", "GET", "/api/access/grants", params={"subject": researcher.subject}
    ).json()
    assert [grant["studyInstanceUID"] for grant in listed] == [study.uid]
    revoked = http(world, "admin", "DELETE", f"/api/access/grants/{made.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert http(world, "researcher", "GET", path).status_code == 404
    assert http(world, "admin", "DELETE", "/api/access/grants/99999999").status_code == 404
    everything = http(world, "admin", "GET", "/api/access/grants", params={"all": "true"}).json()
    assert {grant["kind"] for grant in everything} == {"grant", "break-glass"}
    listing = world.archive.cli("access", "list", "--all")
    assert "break-glass" in listing.stdout and "ae:REFAE" in listing.stdout


# -- DIMSE --------------------------------------------------------------------------------


REFUSED = "0x124"


def _dimse(*args: str) -> subprocess.CompletedProcess[str]:
    return run_tool(*args, check=False, timeout=120)


def _find(world: World, ae: str, out: Path, *keys: str, model: str = "-S") -> tuple[str, list[Any]]:
    out.mkdir(parents=True)
    arguments = ["findscu", "-v", model, "-aet", ae, "-aec", "OPENVNA", "-X", "-od", str(out)]
    for key in keys:
        arguments += ["-k", key]
    result = _dimse(*arguments, *world.archive.address)
    return result.stdout + result.stderr, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _rejected(output: str) -> bool:
    return "Association Rejected" in output and "Calling AE Title Not Recognized" in output


def test_dimse_matrix(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """C-ECHO, C-FIND at three levels, C-GET and C-MOVE of every study, and C-STORE, by
    every calling AE."""
    matrix = Matrix()
    studies = _ordered(world)
    for ae in REJECTED_AES:
        echo = _dimse("echoscu", "-v", "-aet", ae, "-aec", "OPENVNA", *world.archive.address)
        matrix.record(
            "DIMSE",
            echo.returncode != 0 and _rejected(echo.stdout + echo.stderr),
            False,
            f"{ae} C-ECHO: {echo.stderr[-200:]}",
        )
        output, found = _find(
            world, ae, tmp_path / f"{ae}-find", "QueryRetrieveLevel=STUDY", "StudyInstanceUID="
        )
        matrix.record(
            "DIMSE", _rejected(output) and not found, False, f"{ae} C-FIND: {output[-200:]}"
        )
    for ae in world.aes.values():
        echo = _dimse("echoscu", "-aet", ae.name, "-aec", "OPENVNA", *world.archive.address)
        matrix.record("DIMSE", echo.returncode == 0, True, f"{ae.name} C-ECHO")
        _dimse_find(world, ae, tmp_path, matrix)
        for study in studies:
            _dimse_get(world, ae, study, tmp_path, matrix)
        for study in _move_sample(world, ae, studies):
            _dimse_move(world, ae, study, matrix)
        _dimse_store(world, ae, tmp_path, matrix)
    _report(capsys, "DIMSE calling AE × operation × study", matrix)


def _dimse_find(world: World, ae: Actor, tmp_path: Path, matrix: Matrix) -> None:
    visible = world.visible_studies(ae)
    refused = not ae.can(P.QUERY)
    base = tmp_path / ae.name
    output, found = _find(
        world,
        ae.name,
        base / "studies",
        "QueryRetrieveLevel=STUDY",
        "PatientName=*",
        "StudyInstanceUID=",
        "NumberOfStudyRelatedInstances=",
    )
    if refused:
        matrix.record("DIMSE", REFUSED in output and not found, False, f"{ae.name} C-FIND STUDY")
        return
    counts_ok = all(
        int(r.NumberOfStudyRelatedInstances) == len(world.studies[r.StudyInstanceUID].instances)
        for r in found
    )
    matrix.record(
        "DIMSE",
        {r.StudyInstanceUID for r in found} == visible and counts_ok,
        True,
        f"{ae.name} C-FIND STUDY {len(found)} of {len(visible)}",
    )
    output, found = _find(
        world,
        ae.name,
        base / "patients",
        "QueryRetrieveLevel=PATIENT",
        "PatientID=",
        "IssuerOfPatientID=",
        "NumberOfPatientRelatedStudies=",
        model="-P",
    )
    per_patient = Counter(world.studies[uid].patient_id for uid in visible)
    answered = {r.PatientID: int(r.NumberOfPatientRelatedStudies) for r in found}
    matrix.record(
        "DIMSE",
        answered == dict(per_patient),
        True,
        f"{ae.name} C-FIND PATIENT {answered} != {dict(per_patient)}",
    )
    series = {se for uid in visible for se in world.studies[uid].series}
    output, found = _find(
        world,
        ae.name,
        base / "series",
        "QueryRetrieveLevel=SERIES",
        "StudyInstanceUID=",
        "SeriesInstanceUID=",
        "InstitutionName=",
    )
    matrix.record(
        "DIMSE",
        {r.SeriesInstanceUID for r in found} == series,
        True,
        f"{ae.name} C-FIND SERIES {len(found)} of {len(series)}",
    )
    for study in world.studies.values():
        if study.uid in visible:
            continue
        output, found = _find(
            world,
            ae.name,
            base / f"hidden-{study.uid}",
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={study.uid}",
            "SOPInstanceUID=",
        )
        matrix.record(
            "DIMSE",
            not found and "(Success)" in output,
            False,
            f"{ae.name} C-FIND IMAGE of hidden {study.uid}",
        )


def _dimse_get(world: World, ae: Actor, study: StudyInfo, tmp_path: Path, matrix: Matrix) -> None:
    out = tmp_path / ae.name / f"get-{study.uid}"
    out.mkdir(parents=True)
    result = _dimse(
        "getscu",
        "-v",
        "-S",
        "-aet",
        ae.name,
        "-aec",
        "OPENVNA",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study.uid}",
        *world.archive.address,
    )
    output = result.stdout + result.stderr
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir()}
    label = f"{ae.name} C-GET {study.uid}: {len(received)} received"
    if not ae.can(P.READ):
        matrix.record("DIMSE", REFUSED in output and not received, False, label)
    elif world.visible(ae, study):
        matrix.record("DIMSE", received == set(study.instances), True, label)
    else:
        matrix.record("DIMSE", not received and REFUSED not in output, False, label)


def _move_sample(world: World, ae: Actor, studies: list[StudyInfo]) -> list[StudyInfo]:
    """One visible and one hidden study (C-MOVE needs an outbound association each)."""
    visible = [s for s in studies if world.visible(ae, s)]
    hidden = [s for s in studies if not world.visible(ae, s)]
    return visible[:1] + hidden[:1]


def _dimse_move(world: World, ae: Actor, study: StudyInfo, matrix: Matrix) -> None:
    for leftover in world.move_dir.iterdir():
        leftover.unlink()
    result = _dimse(
        "movescu",
        "-v",
        "-S",
        "-aet",
        ae.name,
        "-aem",
        "MOVESCP",
        "-aec",
        "OPENVNA",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study.uid}",
        *world.archive.address,
    )
    output = result.stdout + result.stderr
    wanted = set(study.instances) if ae.can(P.READ) and world.visible(ae, study) else set()
    received: set[str] = set()

    def arrived() -> bool:
        received.clear()
        for path in world.move_dir.iterdir():
            try:
                received.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
            except Exception:
                return False  # still being written
        return received == wanted

    deadline_ok = True
    try:
        wait_until(arrived, 10 if wanted else 0.5, "moved instances")
    except AssertionError:
        deadline_ok = False
    label = f"{ae.name} C-MOVE {study.uid}: {len(received)} of {len(wanted)}"
    if not ae.can(P.READ):
        matrix.record("DIMSE", REFUSED in output and not received, False, label)
    else:
        matrix.record(
            "DIMSE",
            deadline_ok and received == wanted and REFUSED not in output,
            bool(wanted),
            label,
        )


def _dimse_store(world: World, ae: Actor, tmp_path: Path, matrix: Matrix) -> None:
    template = _ordered(world)[0]
    part, study_uid, sop_uid = _new_instance(template, new_study=True)
    path = tmp_path / ae.name / "store.dcm"
    path.write_bytes(part)
    result = _dimse(
        "storescu", "-v", "-aet", ae.name, "-aec", "OPENVNA", *world.archive.address, str(path)
    )
    output = result.stdout + result.stderr
    if ae.can(P.STORE):
        ok = "Received Store Response (Success)" in output
        if ok:
            stored = world.studies.setdefault(
                study_uid,
                StudyInfo(
                    study_uid,
                    template.patient_id,
                    template.issuer,
                    template.institution,
                    source=template.source,
                ),
            )
            stored.instances[sop_uid] = str(dcmread(path).SeriesInstanceUID)
        matrix.record("DIMSE", ok, True, f"{ae.name} C-STORE: {output[-300:]}")
    else:
        matrix.record("DIMSE", REFUSED in output, False, f"{ae.name} C-STORE: {output[-300:]}")


def _report(capsys: pytest.CaptureFixture[str], title: str, matrix: Matrix) -> None:
    total = sum(matrix.counts.values())
    with capsys.disabled():
        print(f"\n{title}: {total} combinations ({dict(sorted(matrix.counts.items()))})")
    assert not matrix.failures, f"{len(matrix.failures)} of {total} wrong:\n" + "\n".join(
        matrix.failures[:60]
    )
    assert total > 0


def test_no_anonymous_access_beyond_public_paths(world: World) -> None:
    """Every route of the application, anonymously: 401 unless it is public."""
    uid = _ordered(world)[0].uid
    for path in ("/api/health", "/", "/viewer", "/viewer/app-config.js", "/login"):
        answer = requests.get(world.archive.http_url + path, allow_redirects=False, timeout=30)
        assert answer.status_code != 401, path
    assert requests.get(world.archive.http_url + "/api/health", timeout=30).status_code == 200
    private = [
        ("GET", "/api/system"),
        ("GET", "/api/studies"),
        ("GET", "/api/openapi.json"),
        ("GET", "/dicom-web/studies"),
        ("OPTIONS", "/dicom-web"),
        ("POST", "/dicom-web/studies"),
        ("GET", f"/dicom-web/studies/{uid}"),
        ("GET", "/wado"),
        ("GET", "/dicom-web/workitems"),
        ("GET", "/api/ai/jobs"),
        ("GET", "/api/access/grants"),
        ("GET", "/api/users"),
        ("GET", "/api/audit"),
        ("DELETE", f"/dicom-web/studies/{uid}"),
        ("GET", "/metrics"),
    ]
    for method, path in private:
        answer = requests.request(method, world.archive.http_url + path, timeout=30)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert uid not in answer.text


def test_cli_access_commands_need_a_reason_and_valid_uids(world: World) -> None:
    archive = world.archive
    refused = archive.cli(
        "access", "break-glass", "user:alice", _ordered(world)[0].uid, check=False
    )
    assert refused.returncode == 2 and "reason" in refused.stdout
    bad = archive.cli("access", "grant", "user:alice", "not-a-uid", check=False)
    assert bad.returncode == 2
    absent = archive.cli(
        "access", "break-glass", "user:alice", str(generate_uid()), "--reason", "x", check=False
    )
    assert absent.returncode == 1
    assert archive.cli("access", "revoke", "987654", check=False).returncode == 1


def test_breaking_the_glass_is_audited(world: World) -> None:
    """The break-the-glass of the fixture is a security alert (110113) "Emergency
    Override Started" (110127) by the principal that broke the glass."""
    engine = create_engine(f"sqlite:///{(world.archive.data_dir / 'index.sqlite').resolve()}")
    subject = world.actors["breakglass"].subject

    def recorded() -> bool:
        with engine.connect() as connection:
            messages = connection.exec_driver_sql(
                "SELECT message FROM audit_log WHERE event_id = '110113' AND user_id = ?",
                (subject,),
            ).scalars()
            return any("110127" in message for message in messages)

    try:
        wait_until(recorded, 10, f"an Emergency Override Started record by {subject}")
    finally:
        engine.dispose()
