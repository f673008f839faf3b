"""OpenAPI 3.1 description of the REST API under ``/api`` (served at ``/api/openapi.json``).

Generated from the routes, so that an endpoint cannot be added without appearing in it,
and completed from :data:`OPERATIONS`: the query parameters, request body and
responses of each operation, precise enough that a client generator or an API fuzzer
(schemathesis, ``tests/integration/test_api_fuzz.py``) can check every answer against
it. A route without an entry there is still described, with its path parameters and
the response classes every route may give (any 2xx JSON, errors as :data:`ERROR`).

Every operation also lists what the layers in front of it may answer: 401 and 403 from
the security middleware; 400 (a NUL in the URL), 429 (with ``Retry-After``) and, for
those with a body, 413 from the hard limits (:mod:`openvna.web.limits`).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from starlette.routing import BaseRoute, Route

from openvna import __version__

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {"status": {"type": "integer"}, "error": {"type": "string"}},
}
"""The body of every error answer (``openvna.web.errors.error_body``)."""

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_STRING = {"type": ["string", "null"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR,
    "System": {
        "type": "object",
        "required": ["name", "version", "dicom", "dicomweb", "counts"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "dicom": {
                "type": "object",
                "required": ["aeTitle", "host", "port"],
                "properties": {
                    "aeTitle": {"type": "string"},
                    "host": {"type": "string"},
                    "port": {"type": "integer"},
                },
            },
            "dicomweb": {"type": "string"},
            "viewer": {"type": "string"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "reason": {"type": "string"},
        },
    },
    "StudySummary": {
        "type": "object",
        "required": ["studyInstanceUID", "viewerUrl", "dicomwebUrl"],
        "properties": {
            "studyInstanceUID": {"type": "string"},
            "patientId": {"type": "string"},
            "patientName": {"type": "string"},
            "studyDate": {"type": "string"},
            "studyDescription": {"type": "string"},
            "accessionNumber": {"type": "string"},
            "modalities": {"type": "array", "items": {"type": "string"}},
            "series": {"type": "integer"},
            "instances": {"type": "integer"},
            "viewerUrl": {"type": "string"},
            "dicomwebUrl": {"type": "string"},
        },
    },
    "AiModels": {
        "type": "object",
        "required": ["aiEnabled", "models", "problems"],
        "properties": {
            "aiEnabled": {"type": "boolean"},
            "worker": {"type": ["object", "null"]},
            "problems": {"type": "array"},
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "version", "enabled"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "runtime": {"type": "string"},
                        "stoppedBy": _NULLABLE_STRING,
                        "stopReason": _NULLABLE_STRING,
                    },
                },
            },
        },
    },
    "AiJob": {
        "type": "object",
        "required": ["jobUID", "model", "studyInstanceUID", "state"],
        "properties": {
            "jobUID": {"type": "string"},
            "model": {"type": "string"},
            "modelVersion": {"type": "string"},
            "studyInstanceUID": {"type": "string"},
            "seriesInstanceUID": _NULLABLE_STRING,
            "state": {"type": "string"},
            "trigger": {"type": "string"},
            "requestedBy": _NULLABLE_STRING,
            "priority": {"type": "integer"},
            "attempts": {"type": "integer"},
            "createdAt": _NULLABLE_NUMBER,
            "startedAt": _NULLABLE_NUMBER,
            "finishedAt": _NULLABLE_NUMBER,
            "runs": {"type": "array", "items": {"$ref": "#/components/schemas/AiRun"}},
        },
    },
    "AiRun": {
        "type": "object",
        "required": ["run", "jobUID", "model", "status"],
        "properties": {
            "run": {"type": "integer"},
            "jobUID": {"type": "string"},
            "model": {"type": "string"},
            "modelVersion": {"type": "string"},
            "studyInstanceUID": {"type": "string"},
            "status": {"type": "string"},
            "result": {"type": "object"},
            "startedAt": _NULLABLE_NUMBER,
            "finishedAt": _NULLABLE_NUMBER,
        },
    },
    "AiOutput": {
        "type": "object",
        "required": ["sopInstanceUID", "studyInstanceUID", "run", "rejected"],
        "properties": {
            "sopInstanceUID": {"type": "string"},
            "sopClassUID": {"type": "string"},
            "seriesInstanceUID": {"type": "string"},
            "studyInstanceUID": {"type": "string"},
            "run": {"type": "integer"},
            "model": {"type": "string"},
            "rejected": {"type": "boolean"},
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any], media: str = "application/json") -> Any:
    return {"description": description, "content": {media: {"schema": schema}}}


def _error(description: str) -> Any:
    return _json(description, _ref("Error"))


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_PAGING = (
    _query("limit", "most results (1 to 1000, default 100)", {"type": "integer"}),
    _query("offset", "results to skip (default 0)", {"type": "integer", "minimum": 0}),
)
_BY_REASON = {
    "type": "object",
    "properties": {"by": {"type": "string"}, "reason": {"type": "string"}},
}


def _body(schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_STUDY_LIST_PARAMETERS = (
    _query("PatientID", "DICOM matching (PS3.4 C.2.2.2): wildcards * and ?"),
    _query("PatientName", "DICOM matching, case-insensitive"),
    _query("StudyDate", "date or range YYYYMMDD-YYYYMMDD"),
    _query("AccessionNumber", "DICOM matching"),
    _query("ModalitiesInStudy", "a modality, or a list separated by backslashes"),
    _query("limit", "most studies (default 100)", {"type": "integer", "minimum": 0}),
    _query("offset", "studies to skip (default 0)", {"type": "integer", "minimum": 0}),
)

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/system"): {"responses": {"200": _json("archive identity", _ref("System"))}},
    ("GET", "/api/health"): {
        "responses": {
            "200": _json("the index answers", _ref("Health")),
            "503": _json("the index does not answer", _ref("Health")),
        }
    },
    ("GET", "/api/studies"): {
        "parameters": list(_STUDY_LIST_PARAMETERS),
        "responses": {
            "200": _json("matching studies", {"type": "array", "items": _ref("StudySummary")}),
            "400": _error("invalid filter, limit or offset"),
        },
    },
    ("GET", "/api/ai/models"): {
        "responses": {
            "200": _json("installed models", _ref("AiModels")),
            "400": _error("a manifest is invalid"),
        }
    },
    **{
        ("POST", path): {
            "requestBody": _body(_BY_REASON),
            "responses": {
                "200": _json("switch set", {"type": "object"}),
                "400": _error("body not a JSON object, or no such model"),
            },
        }
        for path in (
            "/api/ai/stop",
            "/api/ai/start",
            "/api/ai/models/{name}/stop",
            "/api/ai/models/{name}/start",
        )
    },
    ("GET", "/api/ai/jobs"): {
        "parameters": [
            _query("state", "comma-separated job states"),
            _query("model", "model name"),
            _query("study", "Study Instance UID"),
            *_PAGING,
        ],
        "responses": {
            "200": _json("jobs, newest first", {"type": "array", "items": _ref("AiJob")}),
            "400": _error("limit or offset not an integer"),
        },
    },
    ("POST", "/api/ai/jobs"): {
        "requestBody": _body(
            {
                "type": "object",
                "required": ["study"],
                "properties": {
                    "study": {"type": "string"},
                    "series": {"type": "string"},
                    "models": {"type": "array", "items": {"type": "string"}},
                    "model": {"type": "string"},
                    "priority": {"type": "integer"},
                    "by": {"type": "string"},
                },
            },
            required=True,
        ),
        "responses": {
            "201": _json("jobs created", {"type": "array", "items": _ref("AiJob")}),
            "400": _error("no study, AI stopped, or a named model does not match"),
            "404": _error("study or series not in the archive"),
        },
    },
    ("GET", "/api/ai/jobs/{uid}"): {
        "responses": {"200": _json("the job", _ref("AiJob")), "404": _error("no such job")}
    },
    ("POST", "/api/ai/jobs/{uid}/cancel"): {
        "requestBody": _body(_BY_REASON),
        "responses": {
            "200": _json("the job", _ref("AiJob")),
            "400": _error("body not a JSON object"),
            "404": _error("no such job"),
        },
    },
    ("GET", "/api/ai/runs"): {
        "parameters": [
            _query("model", "model name"),
            _query("study", "Study Instance UID"),
            _query("job", "job UID"),
            _query("since", "seconds since the epoch", {"type": "number"}),
            *_PAGING,
        ],
        "responses": {
            "200": _json("provenance records", {"type": "array", "items": _ref("AiRun")}),
            "400": _error("since, limit or offset not a number"),
        },
    },
    ("GET", "/api/ai/runs/{pk}"): {
        "responses": {"200": _json("the run", _ref("AiRun")), "404": _error("no such run")}
    },
    ("GET", "/api/ai/runs/{pk}/fhir"): {
        "responses": {
            "200": _json("FHIR R4 Bundle", {"type": "object"}, "application/fhir+json"),
            "404": _error("no such run, or not completed"),
        }
    },
    ("GET", "/api/ai/results"): {
        "parameters": [_query("study", "Study Instance UID")],
        "responses": {"200": _json("AI outputs", {"type": "array", "items": _ref("AiOutput")})},
    },
    ("POST", "/api/ai/results/{uid}/reject"): {
        "requestBody": _body({**_BY_REASON, "required": ["by"]}, required=True),
        "responses": {
            "200": _json("rejection recorded", {"type": "object"}),
            "400": _error("no 'by', or body not a JSON object"),
            "404": _error("not an AI output"),
        },
    },
}
"""Parameters, request body and responses of each REST operation, by (method, path)."""

_UNDESCRIBED_RESPONSES = {
    "2XX": {"description": "success", "content": {"application/json": {"schema": {}}}},
    "4XX": _error("refused: see the error text"),
}

_TEMPLATE_PARAMETER = re.compile(r"{(\w+)(?::(\w+))?}")


def _path_parameters(template: str) -> list[dict[str, Any]]:
    parameters = []
    for name, convertor in _TEMPLATE_PARAMETER.findall(template):
        schema: dict[str, Any] = (
            {"type": "integer", "minimum": 0} if convertor == "int" else {"type": "string"}
        )
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def _operation(route: Route, method: str, path: str, used_ids: set[str]) -> dict[str, Any]:
    doc = inspect.getdoc(route.endpoint) or ""
    summary, _, description = doc.partition("\n\n")
    spec = OPERATIONS.get((method, path), {})
    responses = dict(spec.get("responses") or _UNDESCRIBED_RESPONSES)
    responses.setdefault("400", _error("malformed request (e.g. a NUL in the URL)"))
    responses.setdefault("401", _error("authentication required"))
    responses.setdefault("403", _error("not allowed"))
    responses.setdefault(
        "429",
        {
            **_error("too many requests from this address"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    )
    if _TEMPLATE_PARAMETER.search(route.path):  # a value the router cannot place: 404
        responses.setdefault("404", _error("no such resource"))
    if "requestBody" in spec or (not spec and method in ("POST", "PUT", "PATCH")):
        responses.setdefault("413", _error("request body too large"))
    operation_id = f"{method.lower()}_{route.name}"
    if operation_id in used_ids:  # one endpoint function behind several routes
        operation_id = f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}"
    used_ids.add(operation_id)
    operation: dict[str, Any] = {
        "summary": summary.replace("\n", " ") or f"{method} {path}",
        "operationId": operation_id,
        "parameters": [*_path_parameters(route.path), *spec.get("parameters", ())],
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if "requestBody" in spec:
        operation["requestBody"] = spec["requestBody"]
    return operation


def openapi_document(routes: list[BaseRoute], prefix: str = "") -> dict[str, Any]:
    """OpenAPI 3.1 description of ``routes`` (mounted under ``prefix``)."""
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for route in routes:
        if not isinstance(route, Route):
            continue
        # OpenAPI path templates name parameters only: {pk:int} -> {pk}
        path = _TEMPLATE_PARAMETER.sub(r"{\1}", prefix + route.path)
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            paths.setdefault(path, {})[method.lower()] = _operation(route, method, path, used_ids)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OpenVNA REST API",
            "version": __version__,
            "description": "Archive status and administration. DICOMweb (PS3.18) is served "
            "under /dicom-web; see OPTIONS /dicom-web for what it supports.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


__all__ = ["ERROR", "OPERATIONS", "SCHEMAS", "openapi_document"]
