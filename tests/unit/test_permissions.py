"""Roles, permissions, scopes, study-level access and the HTTP route table.

The expected tables here are written out by hand, not derived from the code: they are
the contract the department relies on (who may store, who may read, who administers),
so a change to :mod:`openvna.security.permissions` must change this file too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from openvna.app import open_archive
from openvna.config import AccessRule, Role, load_settings
from openvna.security import routes
from openvna.security.authz import Authorizer, StudyAccess
from openvna.security.errors import AuthenticationRequired, Forbidden
from openvna.security.permissions import ALL_PERMISSIONS, Permission, parse_permissions
from openvna.security.principal import (
    Principal,
    PrincipalKind,
    local_principal,
    system_principal,
)
from openvna.web.app import DicomEndpoint, create_app

P = Permission

EXPECTED: dict[Role, set[Permission]] = {
    Role.ADMIN: set(Permission),
    Role.RADIOLOGIST: {
        P.QUERY,
        P.READ,
        P.AI_RUN,
        P.WORKITEM_READ,
        P.WORKITEM_WRITE,
        P.SYSTEM_READ,
        P.BREAK_GLASS,
    },
    Role.TECHNOLOGIST: {P.QUERY, P.READ, P.STORE, P.UPDATE, P.WORKITEM_READ, P.SYSTEM_READ},
    Role.REFERRING_PHYSICIAN: {P.QUERY, P.READ, P.SYSTEM_READ, P.BREAK_GLASS},
    Role.RESEARCHER: {P.QUERY, P.READ, P.SYSTEM_READ},
    Role.AI_SERVICE: {
        P.QUERY,
        P.READ,
        P.STORE,
        P.WORKITEM_READ,
        P.WORKITEM_WRITE,
        P.SYSTEM_READ,
    },
    Role.AUDITOR: {P.AUDIT_READ, P.SYSTEM_READ},
}


def principal(
    *roles: Role,
    kind: PrincipalKind = PrincipalKind.API_KEY,
    subject: str = "apikey:0123456789ab",
    scopes: frozenset[Permission] | None = None,
    institutions: tuple[str, ...] = (),
    issuers: tuple[str, ...] = (),
) -> Principal:
    return Principal(
        subject=subject,
        kind=kind,
        roles=frozenset(roles),
        scopes=scopes,
        institutions=institutions,
        issuers_of_patient_id=issuers,
    )


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_role_permission_table(role: Role, permission: Permission) -> None:
    assert principal(role).can(permission) is (permission in EXPECTED[role])


def test_every_role_is_in_the_table() -> None:
    assert set(EXPECTED) == set(Role)


def test_roles_combine_as_a_union() -> None:
    both = principal(Role.AUDITOR, Role.RESEARCHER)
    assert both.permissions == EXPECTED[Role.AUDITOR] | EXPECTED[Role.RESEARCHER]


def test_scopes_narrow_and_never_widen() -> None:
    narrowed = principal(Role.TECHNOLOGIST, scopes=frozenset({P.STORE, P.AUDIT_READ}))
    assert narrowed.permissions == {P.STORE}  # audit:read is not the role's to give
    assert not narrowed.can(P.QUERY)
    assert principal(Role.TECHNOLOGIST, scopes=frozenset()).permissions == frozenset()
    assert principal(Role.TECHNOLOGIST, scopes=None).permissions == EXPECTED[Role.TECHNOLOGIST]
    # the stored form of a key's scopes: comma-separated values, '' = no narrowing
    assert parse_permissions("study:store, study:query") == {P.STORE, P.QUERY}
    assert parse_permissions("") == frozenset()
    with pytest.raises(ValueError):
        parse_permissions("study:everything")


def test_local_and_system_principals_hold_every_permission() -> None:
    assert local_principal("127.0.0.1").permissions == ALL_PERMISSIONS
    assert system_principal().permissions == ALL_PERMISSIONS


# -- StudyAccess --------------------------------------------------------------------------


def authorizer(**security: object) -> Authorizer:
    settings = load_settings(None, security=security) if security else load_settings(None)
    return Authorizer(settings, engine=None)  # type: ignore[arg-type]  # no index needed


def test_unrestricted_roles_see_every_study() -> None:
    check = authorizer()
    for role in (Role.ADMIN, Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.AI_SERVICE):
        assert check.study_access(principal(role)) is None
    assert check.study_access(local_principal()) is None
    assert check.study_access(system_principal()) is None


def test_grants_only_roles_see_only_grants_by_default() -> None:
    check = authorizer()
    for role in (Role.REFERRING_PHYSICIAN, Role.RESEARCHER):
        assert check.study_access(principal(role, subject="user:ref")) == StudyAccess("user:ref")


def test_access_rules_restrict_a_role_to_institutions_and_issuers() -> None:
    check = authorizer(
        access_rules=[
            AccessRule(role=Role.RADIOLOGIST, institutions=["North Hospital"]),
            AccessRule(role=Role.RADIOLOGIST, issuers_of_patient_id=["NORTH", "NORTH"]),
            AccessRule(role=Role.TECHNOLOGIST, institutions=["South Clinic"]),
        ],
        grants_only_roles=[Role.RESEARCHER],
    )
    assert check.study_access(principal(Role.RADIOLOGIST, subject="user:r")) == StudyAccess(
        "user:r", ("North Hospital",), ("NORTH",)
    )
    # a restricted role combined with another restricted one: the union of both rules
    both = check.study_access(principal(Role.RADIOLOGIST, Role.TECHNOLOGIST, subject="user:b"))
    assert both == StudyAccess("user:b", ("North Hospital", "South Clinic"), ("NORTH",))
    # with an unrestricted one: everything (referring physicians are not grants-only here)
    assert check.study_access(principal(Role.RADIOLOGIST, Role.REFERRING_PHYSICIAN)) is None
    assert check.study_access(principal(Role.RESEARCHER, subject="k")) == StudyAccess("k")


def test_roles_without_study_permissions_do_not_widen_access() -> None:
    check = authorizer()
    # an auditor acts on no study: a researcher-auditor still sees only grants
    assert check.study_access(principal(Role.RESEARCHER, Role.AUDITOR, subject="x")) == (
        StudyAccess("x")
    )
    assert check.study_access(principal(Role.AUDITOR, subject="a")) == StudyAccess("a")


def test_a_principals_own_institutions_win_over_its_roles() -> None:
    check = authorizer()
    own = principal(
        Role.RADIOLOGIST,
        kind=PrincipalKind.USER,
        subject="user:alice",
        institutions=("East Imaging",),
        issuers=("EAST",),
    )
    assert check.study_access(own) == StudyAccess("user:alice", ("East Imaging",), ("EAST",))


# -- the HTTP route table -----------------------------------------------------------------


def test_public_paths() -> None:
    check = authorizer()
    public = ["/api/health", "/login", "/api/auth/login", "/api/auth/setup", "/api/auth/logout"]
    public += ["/viewer", "/viewer/", "/viewer/app-config.js", "/viewer/assets/index.js", "/"]
    for path in public:
        assert check.is_public("GET", path), path
        check.check_http(None, "GET", path, {})
    for path in ["/viewerx", "/api/healthz", "/api/auth/me", "/dicom-web/studies", "/wado"]:
        assert not check.is_public("GET", path), path
        with pytest.raises(AuthenticationRequired):
            check.check_http(None, "GET", path, {})


def test_unknown_routes_need_an_unnarrowed_administrator() -> None:
    check = authorizer(grants_only_roles=[])
    for path in ["/api/keys/rotate", "/metrics", "/dicom-web/studies/1.2/extra", "/api//studies"]:
        assert routes.requirement("GET", path, {}).admin, path
        check.check_http(principal(Role.ADMIN), "GET", path, {})
        with pytest.raises(Forbidden):
            check.check_http(principal(Role.RADIOLOGIST), "GET", path, {})
        scoped_admin = principal(Role.ADMIN, scopes=frozenset({P.QUERY}))
        with pytest.raises(Forbidden):
            check.check_http(scoped_admin, "GET", path, {})
    # a method the table does not list for a known path is unknown as well
    assert routes.requirement("DELETE", "/dicom-web/studies/1.2.3", {}).admin
    assert routes.requirement("PUT", "/api/studies", {}).admin


@pytest.mark.parametrize(
    ("method", "path", "query", "permission", "study"),
    [
        ("GET", "/dicom-web/studies", {}, P.QUERY, None),
        ("HEAD", "/dicom-web/studies/", {}, P.QUERY, None),
        ("GET", "/dicom-web/series", {"PatientName": "*"}, P.QUERY, None),
        ("GET", "/dicom-web/studies/1.2.3/series", {}, P.QUERY, "1.2.3"),
        ("GET", "/dicom-web/studies/1.2.3/series/4.5/instances", {}, P.QUERY, "1.2.3"),
        ("GET", "/dicom-web/studies/1.2.3", {}, P.READ, "1.2.3"),
        ("GET", "/dicom-web/studies/1.2.3/metadata", {}, P.READ, "1.2.3"),
        ("GET", "/dicom-web/studies/1.2.3/series/4/instances/5/frames/1,2", {}, P.READ, "1.2.3"),
        ("GET", "/dicom-web/studies/1.2.3/series/4/instances/5/rendered", {}, P.READ, "1.2.3"),
        ("GET", "/dicom-web/studies/1.2.3/thumbnail", {}, P.READ, "1.2.3"),
        (
            "GET",
            "/dicom-web/studies/1.2.3/series/4/instances/5/bulkdata/7FE00010",
            {},
            P.READ,
            "1.2.3",
        ),
        ("POST", "/dicom-web/studies", {}, P.STORE, None),
        ("POST", "/dicom-web/studies/1.2.3", {}, P.STORE, "1.2.3"),
        ("POST", "/dicom-web/workitems", {}, P.WORKITEM_WRITE, None),
        ("GET", "/dicom-web/workitems", {}, P.WORKITEM_READ, None),
        ("PUT", "/dicom-web/workitems/1.2/state", {}, P.WORKITEM_WRITE, None),
        ("GET", "/dicom-web/ws/subscribers/AE1", {}, P.WORKITEM_READ, None),
        ("OPTIONS", "/dicom-web", {}, P.SYSTEM_READ, None),
        ("GET", "/wado", {"requestType": "WADO", "studyUID": "1.2.3"}, P.READ, "1.2.3"),
        ("GET", "/api/system", {}, P.SYSTEM_READ, None),
        ("GET", "/api/studies", {}, P.QUERY, None),
        ("GET", "/api/openapi.json", {}, P.SYSTEM_READ, None),
        ("GET", "/api/ai/jobs", {"study": "1.2.3"}, P.QUERY, "1.2.3"),
        ("POST", "/api/ai/jobs", {}, P.AI_RUN, None),
        ("POST", "/api/ai/stop", {}, P.AI_ADMIN, None),
        ("GET", "/api/ai/runs/7/fhir", {}, P.READ, None),
        ("GET", "/api/users", {}, P.USER_ADMIN, None),
        ("DELETE", "/api/apikeys/0123456789ab", {}, P.USER_ADMIN, None),
        ("GET", "/api/audit/export", {}, P.AUDIT_READ, None),
        ("POST", "/api/access/grants", {}, P.USER_ADMIN, None),
        ("DELETE", "/api/access/grants/3", {}, P.USER_ADMIN, None),
        ("POST", "/api/access/break-glass", {}, P.BREAK_GLASS, None),
        ("GET", "/api/auth/me", {}, None, None),
    ],
)
def test_route_requirements(
    method: str,
    path: str,
    query: dict[str, str],
    permission: Permission | None,
    study: str | None,
) -> None:
    needed = routes.requirement(method, path, query)
    assert not needed.admin
    assert needed.permission is permission
    assert needed.study_uid == study


def test_permission_checks_answer_401_then_403() -> None:
    check = authorizer()
    with pytest.raises(AuthenticationRequired):
        check.check_http(None, "GET", "/dicom-web/studies", {})
    with pytest.raises(Forbidden):
        check.check_http(principal(Role.AUDITOR), "GET", "/dicom-web/studies", {})
    with pytest.raises(Forbidden):
        check.check_http(principal(Role.RADIOLOGIST), "POST", "/dicom-web/studies", {})
    check.check_http(principal(Role.AUDITOR), "GET", "/api/audit", {})
    check.check_http(principal(Role.RESEARCHER), "GET", "/api/auth/me", {})
    # unrestricted principals reach a study path without an index lookup (no engine here)
    check.check_http(principal(Role.RADIOLOGIST), "GET", "/dicom-web/studies/1.2.3", {})


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, str]]]:
    """(method, path template) of every route the real HTTP application serves."""
    data_dir: Path = tmp_path_factory.mktemp("routes") / "data"
    archive, executor = open_archive(load_settings(None, data_dir=data_dir))
    try:
        app = create_app(archive, DicomEndpoint("OPENVNA", "127.0.0.1", 11112))
        yield sorted(set(_walk(app.routes, "")))
    finally:
        executor.shutdown()
        archive.close()


def _walk(found: list[BaseRoute], prefix: str) -> Iterator[tuple[str, str]]:
    for route in found:
        if isinstance(route, Mount):
            yield from _walk(list(route.routes), prefix + route.path)
        elif isinstance(route, WebSocketRoute):
            yield "GET", prefix + route.path
        elif isinstance(route, Route):
            for method in route.methods or ("GET",):
                yield method, prefix + route.path


def _example(template: str) -> str:
    """A concrete path for a template (UIDs for UID parameters, digits for ints)."""

    def value(match: re.Match[str]) -> str:
        name, convertor = match.group(1), match.group(2)
        if convertor == "int":
            return "7"
        if convertor == "path":
            return "x/y"
        return "AE1" if name == "aetitle" else "1.2.840.99.1"

    return re.sub(r"{(\w+)(?::(\w+))?}", value, template)


def test_every_route_of_the_app_is_in_the_table(app_routes: list[tuple[str, str]]) -> None:
    """A route added without deciding who may use it would fall to 'administrators
    only'; this names it, so that the decision is made on purpose."""
    assert len(app_routes) > 40
    missing = []
    for method, template in app_routes:
        path = _example(template)
        if routes.is_public_path(path):
            continue
        needed = routes.requirement(method, path, {})
        if needed.admin:
            missing.append(f"{method} {template}")
            continue
        assert needed.rule is not None
        if "{study}" in template:
            assert needed.study_uid == "1.2.840.99.1", f"{method} {template} skips its study"
    assert not missing, "routes without an entry in openvna/security/routes.py: " + ", ".join(
        missing
    )


def test_every_table_entry_is_a_route_of_the_app(app_routes: list[tuple[str, str]]) -> None:
    """Entries for routes that do not exist (a renamed path) would hide the real one."""
    served = {(method, re.sub(r":\w+}", "}", template)) for method, template in app_routes}
    owned_elsewhere = ("/api/users", "/api/apikeys", "/api/audit", "/api/auth/")
    for rule in routes.ROUTES:
        if rule.template.startswith(owned_elsewhere):
            continue  # mounted by the authentication and audit modules
        template = re.sub(r":\w+}", "}", rule.template)
        for method in rule.methods:
            assert (method, template) in served, f"{method} {rule.template} is not served"
