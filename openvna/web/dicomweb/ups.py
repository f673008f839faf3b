"""UPS-RS, the Worklist Service (PS3.18 11), over :class:`~openvna.ups.service.WorkitemService`.

Thin by design: parse the request, call the service in a thread, format the answer.
Refusals are :class:`~openvna.ups.states.UpsError`s answered with their HTTP status, the
PS3.18 Warning header (``299 openvna: <text>``) and a small JSON body naming the DIMSE
status, so a client sees both the standard's words and the reason.

Event reports travel on the Notification Connection (PS3.18 8.10.4, 11.13): a WebSocket
at ``/dicom-web/ws/subscribers/{aetitle}``. HTTP may run in several processes (and nodes),
so the socket polls the shared event log rather than waiting on an in-process signal.

A principal restricted to some studies (:mod:`openvna.security.authz`) sees only the
workitems of studies it may see: a search skips the others before paging, a workitem of
a hidden study answers exactly as a missing one, and its event reports are not sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from openvna.archive.service import Archive
from openvna.errors import RequestTooLargeError, UnsupportedMediaTypeError
from openvna.index import access_repository
from openvna.security.authz import StudyAccess
from openvna.ups import events
from openvna.ups import workitem as wi
from openvna.ups.service import WorkitemService, check_ae_title
from openvna.ups.states import UpsError, no_such_workitem
from openvna.web.access import study_access
from openvna.web.dicomweb.context import DicomWebContext
from openvna.web.dicomweb.media import DICOM_JSON, negotiate, parse_accept
from openvna.web.errors import error_body

logger = logging.getLogger(__name__)

SERVICE = "openvna"
"""The ``<service>`` of PS3.18 Warning header fields."""
MAX_PAYLOAD = 4 * 1024 * 1024
"""Workitems carry no bulk data (PS3.18 11.1.3); anything bigger is not a workitem."""
POLL_INTERVAL = 0.2
SETTLE_SECONDS = 5.0
"""How long an event may take to become visible after its pk was assigned (a PostgreSQL
transaction that commits after a later one): the socket re-reads that window, so a late
commit is still delivered, and remembers what it sent, so nothing goes out twice."""
_JSON_TYPES = (DICOM_JSON, "application/json")


def warning(text: str) -> str:
    return f"299 {SERVICE}: {text}"


def _error_response(error: UpsError) -> Response:
    body = error_body(error.http_status, str(error))
    body["dicomStatus"] = f"{error.dicom_status:04X}"
    headers = {"Warning": warning(error.warning)} if error.warning else {}
    return JSONResponse(body, status_code=error.http_status, headers=headers)


def _query_uid(request: Request, name: str) -> str | None:
    """A UID given as ``?{uid}`` (PS3.18 URI template) or ``?name={uid}``."""
    value = request.query_params.get(name)
    if value:
        return value.strip()
    raw = request.url.query
    if raw and "=" not in raw and "&" not in raw:
        return raw.strip()
    return None


async def _json_payload(request: Request, *, required: bool) -> Any:
    """The request's DICOM JSON (None when empty and not required)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_PAYLOAD:
            raise RequestTooLargeError(f"a workitem payload is limited to {MAX_PAYLOAD} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        if required:
            raise UpsError(
                "the request needs a DICOM JSON payload", dicom_status=0xA900, http_status=400
            )
        return None
    if media_type not in _JSON_TYPES:
        raise UnsupportedMediaTypeError(
            f"send the workitem as {DICOM_JSON} (not {media_type or 'no Content-Type'})"
        )
    try:
        return json.loads(body)
    except ValueError as error:
        raise UpsError(
            f"the payload is not JSON: {error}", dicom_status=0xA900, http_status=400
        ) from error


def _dicom_json(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=status_code, media_type=DICOM_JSON, headers=headers)


def _deletion_lock(request: Request) -> bool:
    value = request.query_params.get("deletionlock", "false").strip().lower()
    if value not in ("true", "false"):
        raise UpsError("deletionlock must be true or false", dicom_status=0xA900, http_status=400)
    return value == "true"


class WorkitemVisibility:
    """Which workitems a restricted principal sees: those whose study it may see
    (a workitem naming no study concerns no study it was granted, so it is hidden).
    Answers are remembered per study for the life of one request or socket."""

    def __init__(self, archive: Archive, access: StudyAccess) -> None:
        self._archive = archive
        self._access = access
        self._studies: dict[str, bool] = {}

    def study_visible(self, study_uid: str) -> bool:
        if study_uid not in self._studies:
            self._studies[study_uid] = bool(study_uid) and access_repository.is_study_visible(
                self._archive.engine, self._access, study_uid
            )
        return self._studies[study_uid]

    def workitem_visible(self, dataset: dict[str, Any]) -> bool:
        return self.study_visible(wi.study_of(dataset))


def routes(context: DicomWebContext) -> list[BaseRoute]:
    """UPS-RS routes relative to the DICOMweb root (``/dicom-web``)."""
    service = WorkitemService(context.archive.engine)
    max_results = context.http.qido_max_results
    archive = context.archive

    def visibility(request: Request | WebSocket) -> WorkitemVisibility | None:
        access = study_access(request, archive)
        return None if access is None else WorkitemVisibility(archive, access)

    async def require_visible(request: Request, uid: str) -> None:
        """A workitem of a hidden study answers as one that does not exist (404)."""
        if uid in wi.SUBSCRIPTION_UIDS:
            return
        restriction = visibility(request)
        if restriction is None:
            return
        dataset = await run_in_threadpool(service.retrieve, uid)
        if not await run_in_threadpool(restriction.workitem_visible, dataset):
            raise no_such_workitem(uid)

    def workitem_url(request: Request, uid: str) -> str:
        return f"{context.base_url(request)}/workitems/{uid}"

    def channel_url(request: Request, aet: str) -> str:
        base = context.base_url(request)
        scheme, _, rest = base.partition("://")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/subscribers/{aet}"

    async def create(request: Request) -> Response:
        """Create Workitem (PS3.18 11.4): 201 with Location of the new workitem."""
        payload = await _json_payload(request, required=True)
        result = await run_in_threadpool(
            service.create, payload, workitem_uid=_query_uid(request, "workitem")
        )
        url = workitem_url(request, result.uid)
        headers = {"Location": url, "Content-Location": url}
        if result.warning:
            headers["Warning"] = warning(result.warning)
        return Response(status_code=201, headers=headers)

    async def search(request: Request) -> Response:
        """Search (PS3.18 11.9): 200 with matches, 204 when nothing matched (Table
        11.9.3-1)."""
        negotiate(parse_accept(request.headers.get("accept")), _JSON_TYPES)
        parameters = request.query_params.multi_items()
        restriction = visibility(request)
        result = await run_in_threadpool(
            lambda: service.search(
                parameters,
                max_results=max_results,
                visible=None if restriction is None else restriction.workitem_visible,
            )
        )
        if not result.workitems:
            return Response(status_code=204)
        headers = {}
        if result.more_available:
            headers["Warning"] = warning(
                "There are additional results that can be requested (use offset and limit)."
            )
        return _dicom_json(result.workitems, headers=headers)

    async def retrieve(request: Request) -> Response:
        """Retrieve Workitem (PS3.18 11.5), without its Transaction UID."""
        negotiate(parse_accept(request.headers.get("accept")), _JSON_TYPES)
        uid = request.path_params["workitem"]
        await require_visible(request, uid)
        dataset = await run_in_threadpool(service.retrieve, uid)
        return _dicom_json([dataset], headers={"Content-Location": workitem_url(request, uid)})

    async def update(request: Request) -> Response:
        """Update Workitem (PS3.18 11.6); the owner names its Transaction UID."""
        uid = request.path_params["workitem"]
        await require_visible(request, uid)
        payload = await _json_payload(request, required=True)
        transaction_uid = _query_uid(request, "transaction-uid")
        await run_in_threadpool(service.update, uid, payload, transaction_uid=transaction_uid)
        return Response(status_code=200, headers={"Content-Location": workitem_url(request, uid)})

    async def change_state(request: Request) -> Response:
        """Change Workitem State (PS3.18 11.7): claim, complete, cancel."""
        uid = request.path_params["workitem"]
        await require_visible(request, uid)
        payload = await _json_payload(request, required=True)
        outcome = await run_in_threadpool(service.change_state, uid, payload)
        headers = {"Warning": warning(outcome.warning)} if outcome.warning else {}
        return Response(status_code=200, headers=headers)

    async def cancel_request(request: Request) -> Response:
        """Request Cancellation (PS3.18 11.8): 202, the owner decides."""
        uid = request.path_params["workitem"]
        await require_visible(request, uid)
        payload = await _json_payload(request, required=False)
        outcome = await run_in_threadpool(service.request_cancellation, uid, payload)
        headers = {"Warning": warning(outcome.warning)} if outcome.warning else {}
        return Response(status_code=202, headers=headers)

    async def subscribe(request: Request) -> Response:
        """Subscribe (PS3.18 11.10): 201, Content-Location names the WebSocket."""
        uid = request.path_params["workitem"]
        aet = request.path_params["aetitle"]
        await require_visible(request, uid)
        await run_in_threadpool(
            service.subscribe,
            aet,
            uid,
            deletion_lock=_deletion_lock(request),
            filter_text=request.query_params.get("filter", ""),
        )
        return Response(status_code=201, headers={"Content-Location": channel_url(request, aet)})

    async def unsubscribe(request: Request) -> Response:
        """Unsubscribe (PS3.18 11.11)."""
        await require_visible(request, request.path_params["workitem"])
        await run_in_threadpool(
            service.unsubscribe, request.path_params["aetitle"], request.path_params["workitem"]
        )
        return Response(status_code=200)

    async def suspend(request: Request) -> Response:
        """Suspend Global Subscription (PS3.18 11.12)."""
        await run_in_threadpool(
            service.suspend, request.path_params["aetitle"], request.path_params["workitem"]
        )
        return Response(status_code=200)

    async def notification_channel(websocket: WebSocket) -> None:
        """Open Notification Connection (PS3.18 8.10.4): each event report for the
        workitems this AE subscribes to, from the moment the socket opens, as one DICOM
        JSON text message (PS3.18 11.13)."""
        aet = websocket.path_params["aetitle"]
        try:
            check_ae_title(aet)
        except UpsError:
            await websocket.close(code=1008)
            return
        restriction = visibility(websocket)
        workitem_studies: dict[str, bool] = {}

        def reportable(workitem_uid: str) -> bool:
            """Reports on workitems of hidden studies are not sent (checked once each)."""
            if restriction is None:
                return True
            if workitem_uid not in workitem_studies:
                try:
                    dataset = service.retrieve(workitem_uid)
                except UpsError:
                    workitem_studies[workitem_uid] = False
                else:
                    workitem_studies[workitem_uid] = restriction.workitem_visible(dataset)
            return workitem_studies[workitem_uid]

        # The log position is taken before the handshake completes: a client that
        # subscribes or acts as soon as it is connected must get every later report.
        settled = await run_in_threadpool(service.last_event_pk)
        await websocket.accept()
        sent: dict[int, float] = {}
        receiver = asyncio.create_task(_drain(websocket))
        try:
            while not receiver.done():
                batch = await run_in_threadpool(service.events_for, aet, settled)
                for event in batch:
                    if event.pk in sent:
                        continue
                    if restriction is not None and not await run_in_threadpool(
                        reportable, event.workitem_uid
                    ):
                        sent[event.pk] = event.created_at
                        continue
                    report = events.event_report(
                        event.workitem_uid, event.event_type_id, event.information, event.pk
                    )
                    await websocket.send_text(json.dumps(report, separators=(",", ":")))
                    sent[event.pk] = event.created_at
                settled = _advance(settled, sent)
                if len(batch) < 200:
                    await asyncio.wait({receiver}, timeout=POLL_INTERVAL)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the subscriber went away: nothing to deliver to
        finally:
            receiver.cancel()

    item = "/workitems/{workitem}"
    endpoints: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/workitems", create, "POST"),
        ("/workitems", search, "GET"),
        (item, retrieve, "GET"),
        (item, update, "POST"),
        (item + "/state", change_state, "PUT"),
        (item + "/cancelrequest", cancel_request, "POST"),
        (item + "/subscribers/{aetitle}", subscribe, "POST"),
        (item + "/subscribers/{aetitle}", unsubscribe, "DELETE"),
        (item + "/subscribers/{aetitle}/suspend", suspend, "POST"),
    ]
    return [
        *(
            Route(path, _answering_ups_errors(handler), methods=[method])
            for path, handler, method in endpoints
        ),
        WebSocketRoute("/ws/subscribers/{aetitle}", notification_channel),
    ]


def _advance(settled: int, sent: dict[int, float]) -> int:
    """Move the re-read floor past events older than :data:`SETTLE_SECONDS` and forget
    them; younger ones stay remembered so a re-read does not send them again."""
    cutoff = time.time() - SETTLE_SECONDS
    old = [pk for pk, created_at in sent.items() if created_at < cutoff]
    if old:
        settled = max(settled, max(old))
        for pk in [pk for pk in sent if pk <= settled]:
            del sent[pk]
    return settled


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, to notice when it closes."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


def _answering_ups_errors(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Answer a :class:`UpsError` with its status and PS3.18 Warning header here: the
    application's generic error handler knows nothing of Warning headers."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except UpsError as error:
            return _error_response(error)

    return endpoint
