"""The authenticated principal of an HTTP request and its study-level access.

:class:`~openvna.web.security.SecurityMiddleware` authenticates and authorises every
request before it reaches a route and leaves the principal in ``request.state``.
Handlers ask here for the principal's :class:`~openvna.security.authz.StudyAccess` and
hand it to the archive core, which filters in SQL; where a handler looks a study up by
a UID that the route table did not see (a workitem's study, an AI job's study), it
checks it here, answering exactly as the middleware does.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from openvna.archive.service import Archive
from openvna.security.authz import StudyAccess
from openvna.security.errors import AccessDenied, AuthenticationRequired
from openvna.security.permissions import Permission
from openvna.security.principal import Principal


def http_exception(denied: AccessDenied) -> HTTPException:
    """The refusal as Starlette's HTTPException (answered by the app's error handler
    with the same status and reason as the middleware's refusals)."""
    headers = {"WWW-Authenticate": 'Bearer realm="openvna"'} if denied.status == 401 else None
    return HTTPException(denied.status, denied.reason, headers=headers)


def request_principal(connection: HTTPConnection) -> Principal:
    """The principal the middleware authenticated (401 if there is none)."""
    principal = getattr(connection.state, "principal", None)
    if principal is None:
        raise http_exception(AuthenticationRequired())
    assert isinstance(principal, Principal)
    return principal


def study_access(connection: HTTPConnection, archive: Archive) -> StudyAccess | None:
    """The request principal's study restriction (None: sees every study)."""
    return archive.security.authorizer.study_access(request_principal(connection))


async def require_study(
    connection: HTTPConnection,
    archive: Archive,
    permission: Permission | None,
    study_uid: str,
    *,
    allow_new: bool = False,
) -> None:
    """404 unless the study is visible to the request's principal (no index query
    for unrestricted principals)."""
    principal = request_principal(connection)
    authorizer = archive.security.authorizer
    if authorizer.study_access(principal) is None and (
        permission is None or principal.can(permission)
    ):
        return
    try:
        await run_in_threadpool(
            authorizer.require_study, principal, permission, study_uid, allow_new=allow_new
        )
    except AccessDenied as denied:
        raise http_exception(denied) from denied


async def visible_study(connection: HTTPConnection, archive: Archive, study_uid: str) -> bool:
    """Whether the request's principal sees the study (True for unrestricted ones)."""
    principal = request_principal(connection)
    authorizer = archive.security.authorizer
    if authorizer.study_access(principal) is None:
        return True
    return bool(await run_in_threadpool(authorizer.can_see_study, principal, study_uid))
