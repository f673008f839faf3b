"""The route table of the HTTP adapter: which permission each request needs.

One entry per route of the HTTP application (DICOMweb under ``/dicom-web``, WADO-URI at
``/wado``, the REST API under ``/api``), written with the path templates Starlette uses,
so that a reader compares this table with the routes line by line. A request that no
entry matches needs an administrator (default deny): a route added without an entry
here is closed until someone decides who may use it.

An entry may also say where the request names a study (a path parameter, or a query
parameter such as WADO-URI's ``studyUID``): the authoriser then checks that study
against the principal's study-level access rules, answering 404 when it is hidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from openvna.security.permissions import Permission

AUTHENTICATED: Permission | None = None
"""Marker for entries open to every authenticated principal (no permission needed)."""

PUBLIC_PATHS = frozenset(
    {"/", "/api/health", "/login", "/api/auth/login", "/api/auth/setup", "/api/auth/logout"}
)
"""Served without authentication: the health probe, the login flow, the redirect at ``/``."""

PUBLIC_PREFIXES = ("/viewer",)
"""The viewer's static application shell (no patient data: that comes over DICOMweb)."""

_PARAMETER = re.compile(r"{(\w+)(?::(\w+))?}")


def compile_template(template: str) -> re.Pattern[str]:
    """A regular expression matching the paths a Starlette path template matches.

    ``{name}`` matches one path segment (``[^/]+``, as Starlette's default ``str``
    convertor), ``{name:path}`` the rest of the path, ``{name:int}`` digits.
    """
    pattern = ""
    position = 0
    for match in _PARAMETER.finditer(template):
        pattern += re.escape(template[position : match.start()])
        name, convertor = match.group(1), match.group(2) or "str"
        expression = {"path": ".*", "int": "[0-9]+"}.get(convertor, "[^/]+")
        pattern += f"(?P<{name}>{expression})"
        position = match.end()
    pattern += re.escape(template[position:])
    return re.compile(f"^{pattern}$")


@dataclass(frozen=True)
class RouteRule:
    """One route: the methods and path template it covers and what it requires.

    ``permission`` None means any authenticated principal. ``study_path`` names the
    path parameter holding a Study Instance UID, ``study_query`` the query parameter;
    either makes the authoriser check that study's visibility.
    """

    methods: frozenset[str]
    template: str
    permission: Permission | None
    study_path: str | None = None
    study_query: str | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_template(self.template))

    def study_uid(self, match: re.Match[str], query: Mapping[str, str]) -> str | None:
        if self.study_path is not None:
            return match.group(self.study_path)
        if self.study_query is not None:
            value = query.get(self.study_query, "").strip()
            return value or None
        return None


def _rule(
    methods: str,
    template: str,
    permission: Permission | None,
    *,
    study_path: str | None = None,
    study_query: str | None = None,
) -> RouteRule:
    return RouteRule(frozenset(methods.split()), template, permission, study_path, study_query)


_DW = "/dicom-web"
_STUDY = _DW + "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
_WORKITEM = _DW + "/workitems/{workitem}"

QUERY = Permission.QUERY
READ = Permission.READ
STORE = Permission.STORE

ROUTES: tuple[RouteRule, ...] = (
    # -- DICOMweb: capabilities (PS3.18 8.9) ----------------------------------------------
    _rule("OPTIONS", _DW, Permission.SYSTEM_READ),
    # -- STOW-RS (PS3.18 10.5) -------------------------------------------------------------
    _rule("POST", _DW + "/studies", STORE),
    _rule("POST", _STUDY, STORE, study_path="study"),
    # -- QIDO-RS (PS3.18 10.6): results filtered in SQL by study-level access ------------
    _rule("GET", _DW + "/studies", QUERY),
    _rule("GET", _DW + "/series", QUERY),
    _rule("GET", _DW + "/instances", QUERY),
    _rule("GET", _STUDY + "/series", QUERY, study_path="study"),
    _rule("GET", _STUDY + "/instances", QUERY, study_path="study"),
    _rule("GET", _SERIES + "/instances", QUERY, study_path="study"),
    # -- WADO-RS (PS3.18 10.4): instances, metadata, bulk data, frames, rendered ---------
    _rule("GET", _STUDY, READ, study_path="study"),
    _rule("GET", _SERIES, READ, study_path="study"),
    _rule("GET", _INSTANCE, READ, study_path="study"),
    _rule("GET", _STUDY + "/metadata", READ, study_path="study"),
    _rule("GET", _SERIES + "/metadata", READ, study_path="study"),
    _rule("GET", _INSTANCE + "/metadata", READ, study_path="study"),
    _rule("GET", _INSTANCE + "/bulkdata/{tag:path}", READ, study_path="study"),
    _rule("GET", _INSTANCE + "/frames/{frames}", READ, study_path="study"),
    _rule("GET", _INSTANCE + "/frames/{frames}/rendered", READ, study_path="study"),
    _rule("GET", _INSTANCE + "/frames/{frames}/thumbnail", READ, study_path="study"),
    _rule("GET", _INSTANCE + "/rendered", READ, study_path="study"),
    _rule("GET", _INSTANCE + "/thumbnail", READ, study_path="study"),
    _rule("GET", _SERIES + "/thumbnail", READ, study_path="study"),
    _rule("GET", _STUDY + "/thumbnail", READ, study_path="study"),
    # -- UPS-RS (PS3.18 11): workitem studies are checked by the adapter -----------------
    _rule("POST", _DW + "/workitems", Permission.WORKITEM_WRITE),
    _rule("GET", _DW + "/workitems", Permission.WORKITEM_READ),
    _rule("GET", _WORKITEM, Permission.WORKITEM_READ),
    _rule("POST", _WORKITEM, Permission.WORKITEM_WRITE),
    _rule("PUT", _WORKITEM + "/state", Permission.WORKITEM_WRITE),
    _rule("POST", _WORKITEM + "/cancelrequest", Permission.WORKITEM_WRITE),
    _rule("POST DELETE", _WORKITEM + "/subscribers/{aetitle}", Permission.WORKITEM_READ),
    _rule("POST", _WORKITEM + "/subscribers/{aetitle}/suspend", Permission.WORKITEM_READ),
    _rule("GET", _DW + "/ws/subscribers/{aetitle}", Permission.WORKITEM_READ),
    # -- WADO-URI (PS3.18 9) ----------------------------------------------------------------
    _rule("GET", "/wado", READ, study_query="studyUID"),
    # -- REST API ---------------------------------------------------------------------------
    _rule("GET", "/api/system", Permission.SYSTEM_READ),
    _rule("GET", "/api/studies", QUERY),
    _rule("GET", "/api/openapi.json", Permission.SYSTEM_READ),
    # AI orchestration: study-scoped objects (jobs, runs, results) are checked by ai_api
    _rule("GET", "/api/ai/models", Permission.SYSTEM_READ),
    _rule("POST", "/api/ai/stop", Permission.AI_ADMIN),
    _rule("POST", "/api/ai/start", Permission.AI_ADMIN),
    _rule("POST", "/api/ai/models/{name}/stop", Permission.AI_ADMIN),
    _rule("POST", "/api/ai/models/{name}/start", Permission.AI_ADMIN),
    _rule("GET", "/api/ai/jobs", QUERY, study_query="study"),
    _rule("POST", "/api/ai/jobs", Permission.AI_RUN),
    _rule("GET", "/api/ai/jobs/{uid}", QUERY),
    _rule("POST", "/api/ai/jobs/{uid}/cancel", Permission.AI_ADMIN),
    _rule("GET", "/api/ai/runs", READ, study_query="study"),
    _rule("GET", "/api/ai/runs/{pk:int}", READ),
    _rule("GET", "/api/ai/runs/{pk:int}/fhir", READ),
    _rule("GET", "/api/ai/results", READ, study_query="study"),
    _rule("POST", "/api/ai/results/{uid}/reject", Permission.AI_RUN),
    # study-level access: grants (administrators) and break-the-glass
    _rule("GET POST", "/api/access/grants", Permission.USER_ADMIN),
    _rule("DELETE", "/api/access/grants/{pk:int}", Permission.USER_ADMIN),
    _rule("POST", "/api/access/break-glass", Permission.BREAK_GLASS),
    # administration: users, API keys, the audit trail
    _rule("GET POST PUT PATCH DELETE", "/api/users", Permission.USER_ADMIN),
    _rule("GET POST PUT PATCH DELETE", "/api/users/{rest:path}", Permission.USER_ADMIN),
    _rule("GET POST PUT PATCH DELETE", "/api/apikeys", Permission.USER_ADMIN),
    _rule("GET POST PUT PATCH DELETE", "/api/apikeys/{rest:path}", Permission.USER_ADMIN),
    _rule("GET POST", "/api/audit", Permission.AUDIT_READ),
    _rule("GET POST", "/api/audit/{rest:path}", Permission.AUDIT_READ),
    # the signed-in principal's own account (who am I, TOTP enrolment, password change)
    _rule("GET POST PUT DELETE", "/api/auth/{rest:path}", AUTHENTICATED),
)


@dataclass(frozen=True)
class Requirement:
    """What one request needs: a permission (None: being authenticated; ``admin``:
    every permission, for routes the table does not know) and the study it names."""

    permission: Permission | None
    study_uid: str | None = None
    admin: bool = False
    rule: RouteRule | None = None


def normalize_path(path: str) -> str:
    """The path as the table matches it: one trailing slash does not change the route
    (``/dicom-web/`` is the capabilities resource; elsewhere Starlette answers such a
    path with a redirect to the path without it)."""
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def is_public_path(path: str) -> bool:
    if path in PUBLIC_PATHS:
        return True
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PUBLIC_PREFIXES)


def requirement(
    method: str, path: str, query: Mapping[str, str], rules: Iterable[RouteRule] = ROUTES
) -> Requirement:
    """The first matching entry's requirement; administrators only when none matches."""
    verb = "GET" if method.upper() == "HEAD" else method.upper()
    normalized = normalize_path(path)
    for rule in rules:
        if verb not in rule.methods:
            continue
        match = rule.pattern.match(normalized)
        if match is None:
            continue
        return Requirement(rule.permission, rule.study_uid(match, query), rule=rule)
    return Requirement(None, None, admin=True)
