"""Audit records of HTTP requests (REST, DICOMweb, WADO-URI), classified by route.

Called by :class:`openvna.web.security.SecurityMiddleware` after every response and for
every refused request. What each route records (PS3.15 A.5.3):

=====================================================  ===================================
request                                                record
=====================================================  ===================================
QIDO-RS ``GET /dicom-web/{studies,series,instances}``  Query 110112 (path and query
(also under a study or series), ``GET /api/studies``,  string, UTF-8, base64)
``GET /dicom-web/workitems``, ``GET /api/ai/{jobs,
runs,results}...``
WADO-RS study/series/instance, frames, bulk data,      DICOM Instances Transferred 110104,
rendered, thumbnail; WADO-URI ``GET /wado``            action R, archive to requestor
WADO-RS ``.../metadata``                               DICOM Instances Accessed 110103, R
STOW-RS ``POST /dicom-web/studies[/{study}]``          DICOM Instances Transferred 110104,
                                                       action C, requestor to archive
UPS ``/dicom-web/workitems/{uid}...``                  Procedure Record 110111 (C R U)
``GET /api/audit/...``                                 Audit Log Used 110101
refused (401/403/404/429 from authorisation)           Security Alert 110113
health, system, OpenAPI, viewer, capabilities          nothing
=====================================================  ===================================

Why *Transferred* for retrieval and *Accessed* for metadata: A.5.3.7 records "the
completion of transferring DICOM SOP Instances between two Application Entities", which
a WADO-RS retrieval is (the instances, or their frames, leave the archive for the
requestor), while metadata requests read attributes without any instance leaving
(A.5.3.6, "instances ... accessed"). STOW-RS is the C-STORE of the web, so it is recorded
the same way (Transferred, create); Data Import (110107) is kept for data entering from
media or another organisation (A.5.3.5), not for network stores.

Handlers may put the studies they touched in ``request.state.audit_studies``; otherwise
the Study Instance UID in the path (or WADO-URI's ``studyUID``) names the study and the
audit writer adds its patient from the index.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from urllib.parse import urlencode

from openvna.security.audit import (
    REQUESTOR,
    AuditEvent,
    AuditTrail,
    Outcome,
    StudyRef,
    events,
)
from openvna.security.errors import AccessDenied
from openvna.security.principal import Principal

logger = logging.getLogger(__name__)

AUDIT_STUDIES = "audit_studies"
"""Key of the studies a handler touched in ``scope["state"]`` (a list of StudyRef)."""

_DICOMWEB = "/dicom-web"
_QIDO = re.compile(
    r"^/dicom-web/(studies|series|instances|studies/[^/]+/(series|instances)"
    r"|studies/[^/]+/series/[^/]+/instances)/?$"
)
_METADATA = re.compile(r"^/dicom-web/studies/([^/]+)(/series/[^/]+(/instances/[^/]+)?)?/metadata$")
_RETRIEVE = re.compile(r"^/dicom-web/studies/([^/]+)(/.*)?$")
_STOW = re.compile(r"^/dicom-web/studies(/([^/]+))?/?$")
_WORKITEM = re.compile(r"^/dicom-web/workitems/([^/]+)(/.*)?$")
_AI_PHI = ("/api/ai/jobs", "/api/ai/runs", "/api/ai/results")
"""AI API reads that return studies and patients (models and switches do not)."""
_UPS_SUBSCRIPTION = re.compile(r"^/dicom-web/workitems/[^/]+/subscribers/")


def study_refs(instances: Iterable[tuple[str, str]]) -> list[StudyRef]:
    """StudyRefs with SOP class counts from (Study Instance UID, SOP Class UID) pairs."""
    counts: dict[str, Counter[str]] = {}
    for study_uid, sop_class_uid in instances:
        if study_uid:
            counts.setdefault(study_uid, Counter())[sop_class_uid] += 1
    return [
        StudyRef(study_uid, sop_classes=tuple(sorted(classes.items())))
        for study_uid, classes in counts.items()
    ]


def outcome_of(status: int) -> int:
    """EventOutcomeIndicator of an HTTP status: 0 success, 4 refused or invalid request,
    8 the server failed (or no response was sent)."""
    if 100 <= status < 400:
        return Outcome.SUCCESS
    if 400 <= status < 500:
        return Outcome.MINOR_FAILURE
    return Outcome.SERIOUS_FAILURE


def classify(
    principal: Principal | None,
    method: str,
    path: str,
    query: Mapping[str, str],
    status: int,
    address: str,
    state: Mapping[str, object],
) -> AuditEvent | None:
    """The audit event of one answered request, or None when it touched no PHI."""
    outcome = outcome_of(status)
    success = outcome == Outcome.SUCCESS
    failure = "" if success else f"HTTP {status}"
    target = _target(path, query)
    handled = _studies(state)
    if method == "GET" and (_QIDO.match(path) or path in ("/api/studies", "/dicom-web/workitems")):
        return _query(principal, address, target, path, outcome, failure)
    if method == "GET" and path.startswith(_AI_PHI):
        return _query(principal, address, target, path, outcome, failure)
    if method == "GET" and path.startswith("/api/audit"):
        return events.audit_log_used(principal, address, failure, resource=target, success=success)
    if path.startswith("/dicom-web/workitems"):
        return _workitem(principal, method, path, target, address, handled, success, failure)
    if method == "POST" and (match := _STOW.match(path)):
        studies = handled or _path_studies(match.group(2))
        return _described(
            events.instances_transferred(
                principal,
                address,
                studies,
                action="C",
                source=REQUESTOR,
                destination="",
                success=success,
                description=failure,
            ),
            outcome,
            target,
        )
    if method != "GET":
        return None
    if match := _METADATA.match(path):
        studies = handled or _path_studies(match.group(1))
        return _described(
            events.instances_accessed(
                principal, address, studies, action="R", success=success, description=failure
            ),
            outcome,
            target,
        )
    if match := _RETRIEVE.match(path):
        studies = handled or _path_studies(match.group(1))
        return _retrieved(principal, address, studies, outcome, failure, target)
    if path == "/wado":
        studies = handled or _path_studies(query.get("studyUID", ""))
        return _retrieved(principal, address, studies, outcome, failure, target)
    return None


def record_request(
    audit: AuditTrail,
    principal: Principal | None,
    method: str,
    path: str,
    query: Mapping[str, str],
    status: int,
    address: str,
    state: Mapping[str, object],
) -> None:
    """Record what the request did to PHI (query, access, import...), if anything.

    ``state`` is the request's ``scope["state"]``: handlers may leave the studies they
    touched under ``audit_studies`` (a list of StudyRef).
    """
    try:
        event = classify(principal, method, path, query, status, address, state)
        if event is not None:
            audit.record(event)
    except Exception:  # auditing must never turn an answered request into an error
        logger.exception("audit record of %s %s failed", method, path)


def record_refusal(
    audit: AuditTrail,
    principal: Principal | None,
    method: str,
    path: str,
    address: str,
    denied: AccessDenied,
) -> None:
    """Record a refused request as a security alert (Use of Restricted Function)."""
    try:
        audit.record(
            events.security_alert(
                principal,
                address,
                events.UNAUTHORIZED_ACCESS,
                description=f"{method} {path} refused ({denied.status}): {denied.reason}",
                resource=path,
            )
        )
    except Exception:
        logger.exception("audit record of the refusal of %s %s failed", method, path)


# -- helpers ---------------------------------------------------------------------------------


def _target(path: str, query: Mapping[str, str]) -> str:
    return f"{path}?{urlencode(query)}" if query else path


def _studies(state: Mapping[str, object]) -> list[StudyRef]:
    value = state.get(AUDIT_STUDIES)
    if isinstance(value, list | tuple):
        return [study for study in value if isinstance(study, StudyRef)]
    return []


def _path_studies(study_uid: str | None) -> list[StudyRef]:
    return [StudyRef(study_uid)] if study_uid else []


def _described(event: AuditEvent, outcome: int, target: str) -> AuditEvent:
    """Keep the HTTP outcome's severity (4xx minor, 5xx serious) and the request URI."""
    return replace(event, outcome=outcome, resource=target)


def _query(
    principal: Principal | None,
    address: str,
    target: str,
    path: str,
    outcome: int,
    failure: str,
) -> AuditEvent:
    sop_class = UPS_PULL if path.startswith("/dicom-web/workitems") else ""
    return events.query(
        principal,
        address,
        query_text=target,
        sop_class=sop_class,
        description=failure,
        outcome=outcome,
    )


UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
"""UPS Pull SOP Class: the model a workitem search (UPS-RS SearchForUPS) queries."""


def _retrieved(
    principal: Principal | None,
    address: str,
    studies: list[StudyRef],
    outcome: int,
    failure: str,
    target: str,
) -> AuditEvent:
    event = events.instances_transferred(
        principal,
        address,
        studies,
        action="R",
        source="",
        destination=REQUESTOR,
        description=failure,
    )
    return _described(event, outcome, target)


def _workitem(
    principal: Principal | None,
    method: str,
    path: str,
    target: str,
    address: str,
    studies: list[StudyRef],
    success: bool,
    failure: str,
) -> AuditEvent | None:
    if method == "GET" and path.rstrip("/") == "/dicom-web/workitems":
        return None  # a search: recorded as a query
    if _UPS_SUBSCRIPTION.match(path) or "/ws/" in path:
        return None  # subscriptions name no patient data
    if path.rstrip("/") == "/dicom-web/workitems":
        if method != "POST":
            return None
        action = "C"  # CreateRS: POST /workitems[?{workitem}]
    elif _WORKITEM.match(path):
        action = {"GET": "R", "DELETE": "D"}.get(method, "U")
    else:
        return None
    return events.procedure_record(
        principal,
        address,
        action=action,
        resource=target,
        studies=studies,
        success=success,
        description=failure,
    )
