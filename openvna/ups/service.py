"""WorkitemService: the one place that changes UPS workitems (PS3.4 Annex CC).

UPS-RS handlers and the AI orchestrator both come here, so the state machine, the event
log and the AI job behind a workitem never disagree: a state change, its event reports
and the linked ``ai_jobs`` row change in one transaction.

Two kinds of performer exist. An external AI engine claims a workitem with a Transaction
UID of its own (PS3.18 11.7) and the archive mirrors it on the job (``running`` with
worker ``ups:<transaction uid>``, then ``completed``/``cancelled``). The archive's own
worker performs through :meth:`WorkitemService.set_job_state`, holding an internal
Transaction UID nobody else knows, so a client that tries to claim that workitem gets the
standard 0xC302 "already IN PROGRESS".
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from openvna.index import ups_repository as repo
from openvna.index.ups_repository import EventRow, WorkitemRow
from openvna.ups import events
from openvna.ups import workitem as wi
from openvna.ups.search import KeyMatch, matches_filter, parse_filter, parse_search
from openvna.ups.states import (
    WARN_ALREADY_CANCELED,
    WARN_CREATED_WITH_MODIFICATIONS,
    WARN_INCONSISTENT_UPS,
    CancelAction,
    Outcome,
    State,
    UpsError,
    UpsStatus,
    change_state,
    check_update,
    invalid_request,
    no_such_workitem,
    parse_state,
    performer_unreachable,
    request_cancel,
)

logger = logging.getLogger(__name__)

Json = dict[str, Any]

AI_WORKITEM_CODE = ("110001", "DCM", "Image Processing")
"""Scheduled Workitem Code of AI jobs (PS3.16 CID 9231 Workitem Definition)."""
ARCHIVE_STATION = ("OPENVNA", wi.LOCAL_SCHEME, "OpenVNA AI worker")
AI_WORKLIST_LABEL = "AI"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


@dataclass(frozen=True)
class CreateResult:
    uid: str
    warning: str = ""


@dataclass(frozen=True)
class SearchResult:
    workitems: list[Json]
    more_available: bool
    """More matches exist than the server's maximum allowed in one response."""


def check_uid(uid: str, what: str = "workitem UID") -> str:
    if len(uid) > 64 or not _UID.match(uid):
        raise invalid_request(f"{what} {uid!r} is not a valid UID")
    return uid


def check_ae_title(aet: str) -> str:
    """An AE title (PS3.5 Table 6.2-1 AE: 16 characters, no backslash or controls)."""
    if not _AE_TITLE.match(aet) or not aet.strip():
        raise invalid_request(f"{aet!r} is not a valid AE title")
    return aet


def _now() -> float:
    return time.time()


class WorkitemService:
    """Create, find, update, claim and end workitems; subscriptions; the event log."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- Create, Retrieve, Search (PS3.18 11.4, 11.5, 11.9) --------------------------------
    def create(self, payload: Any, *, workitem_uid: str | None = None) -> CreateResult:
        """N-CREATE: a new SCHEDULED workitem; the UID comes from the request target,
        else the payload's SOP Instance UID, else is generated.

        Raises :class:`UpsError`: 400 for an invalid data set, 409 (0x0111) for a UID
        that is already a workitem.
        """
        dataset = wi.parse_dataset(payload, "workitem")
        uid = check_uid(
            workitem_uid or wi.text(dataset, wi.SOP_INSTANCE_UID) or str(generate_uid(prefix=None))
        )
        prepared = wi.prepare_for_create(dataset, uid)
        try:
            with self.engine.begin() as connection:
                self._insert(connection, uid, prepared.dataset, job_pk=None)
        except (repo.DuplicateWorkitemError, IntegrityError) as error:
            with self.engine.connect() as connection:
                exists = repo.workitem(connection, uid) is not None
            if not exists:
                raise
            raise UpsError(
                f"workitem {uid} already exists",
                dicom_status=UpsStatus.DUPLICATE_SOP_INSTANCE,
                http_status=409,
            ) from error
        return CreateResult(uid, WARN_CREATED_WITH_MODIFICATIONS if prepared.modified else "")

    def retrieve(self, uid: str) -> Json:
        """N-GET: the workitem without its Transaction UID (PS3.18 11.5.2)."""
        with self.engine.connect() as connection:
            row = repo.workitem(connection, uid)
        if row is None:
            raise no_such_workitem(uid)
        return wi.public_view(row.dataset)

    def search(
        self,
        parameters: Iterable[tuple[str, str]],
        *,
        max_results: int,
        visible: Callable[[Json], bool] | None = None,
    ) -> SearchResult:
        """C-FIND on the worklist (PS3.18 11.9): whole workitems in worklist order.

        ``visible`` hides workitems from a restricted principal before paging, so that
        offset, limit and "more results" count only what it may see."""
        query = parse_search(parameters, max_results)
        found: list[Json] = []
        skipped = 0
        more = False
        with self.engine.connect() as connection:
            for row in repo.candidates(connection, query.columns):
                if not query.matches(row.dataset):
                    continue
                if visible is not None and not visible(row.dataset):
                    continue
                if skipped < query.offset:
                    skipped += 1
                    continue
                if len(found) >= query.limit:
                    more = query.requested_limit is None or query.requested_limit > query.limit
                    break
                found.append(wi.public_view(row.dataset))
        return SearchResult(found, more)

    # -- Update, Change State, Request Cancellation (PS3.18 11.6, 11.7, 11.8) --------------
    def update(self, uid: str, payload: Any, *, transaction_uid: str | None) -> None:
        """N-SET. Progress changes become Progress Reports (and the linked job's
        progress), Input Readiness changes State Reports, new performers UPS Assigned."""
        changes = wi.parse_dataset(payload, "update")
        with self.engine.begin() as connection:
            row = self._locked(connection, uid)
            check_update(
                State(row.state),
                transaction_uid=transaction_uid or None,
                owner_transaction_uid=row.transaction_uid,
            )
            dataset, changed = wi.apply_update(row.dataset, changes)
            if not changed:
                return
            now = _now()
            self._save(connection, row, dataset, row.transaction_uid, now)
            if wi.PROGRESS_INFORMATION in changed:
                self._event(
                    connection,
                    uid,
                    events.EventType.PROGRESS_REPORT,
                    events.progress_report(dataset),
                    now,
                )
                progress = _progress_percent(dataset)
                if row.job_pk is not None and progress is not None:
                    repo.update_job(connection, row.job_pk, only_in=("running",), progress=progress)
            if wi.INPUT_READINESS in changed:
                self._event(
                    connection,
                    uid,
                    events.EventType.STATE_REPORT,
                    events.state_report(dataset),
                    now,
                )
            if changed & {wi.SCHEDULED_STATION_NAME, wi.SCHEDULED_HUMAN_PERFORMERS}:
                self._event(
                    connection, uid, events.EventType.ASSIGNED, events.assigned(dataset), now
                )

    def change_state(self, uid: str, payload: Any) -> Outcome:
        """N-ACTION Change UPS State with a payload of Transaction UID and Procedure Step
        State (PS3.18 11.7.1.4). A claim of an AI job's workitem also claims the job;
        completing or canceling it ends the job."""
        request = wi.parse_dataset(payload, "state change")
        requested = parse_state(wi.text(request, wi.STATE))
        transaction_uid = wi.text(request, wi.TRANSACTION_UID) or None
        if transaction_uid is not None:
            check_uid(transaction_uid, "Transaction UID")
        refusal: UpsError | None = None
        with self.engine.begin() as connection:
            row = self._locked(connection, uid)
            current = State(row.state)
            problems = (
                wi.completion_problems(row.dataset)
                if requested is State.COMPLETED and current is State.IN_PROGRESS
                else ()
            )
            outcome = change_state(
                current,
                requested,
                transaction_uid=transaction_uid,
                owner_transaction_uid=row.transaction_uid,
                final_state_problems=problems,
            )
            if not outcome.changed:
                return outcome
            assert transaction_uid is not None
            now = _now()
            if requested is State.IN_PROGRESS:
                if row.job_pk is not None and not repo.claim_job(
                    connection, row.job_pk, worker=f"ups:{transaction_uid}", now=now
                ):
                    refusal = self._job_not_claimable(connection, row, now)
                else:
                    dataset = copy.deepcopy(row.dataset)
                    wi.set_state(dataset, State.IN_PROGRESS)
                    self._save(connection, row, dataset, transaction_uid, now)
                    self._event(
                        connection,
                        uid,
                        events.EventType.STATE_REPORT,
                        events.state_report(dataset),
                        now,
                    )
            else:
                dataset = copy.deepcopy(row.dataset)
                reason = ""
                if requested is State.CANCELED:
                    reason = _cancellation_reason(dataset) or "canceled by its performer"
                    wi.record_cancellation(dataset, reason=_cancellation_reason(dataset))
                wi.set_state(dataset, requested)
                self._save(connection, row, dataset, None, now)
                self._event(
                    connection,
                    uid,
                    events.EventType.STATE_REPORT,
                    events.state_report(dataset),
                    now,
                )
                if row.job_pk is not None:
                    if requested is State.COMPLETED:
                        repo.update_job(
                            connection,
                            row.job_pk,
                            state="completed",
                            finished_at=now,
                            progress=100,
                            error="",
                        )
                    else:
                        repo.update_job(
                            connection, row.job_pk, state="cancelled", finished_at=now, error=reason
                        )
        if refusal is not None:
            raise refusal
        return outcome

    def request_cancellation(
        self, uid: str, payload: Any = None, *, requesting_ae: str = ""
    ) -> Outcome:
        """N-ACTION Request UPS Cancel (PS3.4 CC.2.1.3.2, PS3.18 11.8).

        SCHEDULED: canceled at once (State Reports IN PROGRESS then CANCELED, as the
        state diagram has no direct edge). IN PROGRESS: a Cancel Requested event for the
        performer; when the archive itself performs the AI job, the job is marked
        cancelled so its worker stops it and ends the workitem. CANCELED: a warning.
        COMPLETED: 0xC311.
        """
        info = wi.parse_dataset(payload, "cancel request") if payload else {}
        requester = wi.text(info, wi.REQUESTING_AE) or requesting_ae or "UPS-RS client"
        reason = wi.text(info, wi.REASON_FOR_CANCELLATION)
        reason_codes = wi.items(info, wi.DISCONTINUATION_REASON_CODE)
        contact_uri = wi.text(info, wi.CONTACT_URI)
        contact_name = wi.text(info, wi.CONTACT_DISPLAY_NAME)
        job_error = f"cancellation requested by {requester}" + (f": {reason}" if reason else "")
        with self.engine.begin() as connection:
            row = self._locked(connection, uid)
            action = request_cancel(State(row.state))
            if action is CancelAction.ALREADY_CANCELED:
                return Outcome(
                    State.CANCELED,
                    changed=False,
                    dicom_status=UpsStatus.ALREADY_CANCELED,
                    warning=WARN_ALREADY_CANCELED,
                )
            now = _now()
            if action is CancelAction.CANCEL_NOW:
                if row.job_pk is None or repo.update_job(
                    connection,
                    row.job_pk,
                    only_in=("scheduled",),
                    state="cancelled",
                    finished_at=now,
                    error=job_error,
                ):
                    dataset = copy.deepcopy(row.dataset)
                    wi.record_cancellation(
                        dataset,
                        reason=reason,
                        reason_codes=reason_codes,
                        contact_uri=contact_uri,
                        contact_name=contact_name,
                    )
                    self._end_unclaimed(connection, row, dataset, State.CANCELED, now)
                    return Outcome(State.CANCELED, changed=True)
                link = repo.job_link(connection, row.job_pk)
                if link is None or link.state != "running":
                    raise UpsError(
                        f"the AI job of workitem {uid} has already ended ({link and link.state})",
                        dicom_status=UpsStatus.MAY_NO_LONGER_BE_UPDATED,
                        http_status=409,
                        warning=WARN_INCONSISTENT_UPS,
                    )
                # The archive's worker took the job a moment ago: it is IN PROGRESS.
                row = self._start_by_archive(connection, row, now)
            link = repo.job_link(connection, row.job_pk) if row.job_pk is not None else None
            if link is not None and not link.worker.startswith("ups:"):
                repo.update_job(
                    connection,
                    link.pk,
                    only_in=("scheduled", "running"),
                    state="cancelled",
                    error=job_error,
                )
            elif not [s for s in repo.subscriptions(connection, workitem_uids=[uid])]:
                raise performer_unreachable()
            self._event(
                connection,
                uid,
                events.EventType.CANCEL_REQUESTED,
                events.cancel_requested(
                    requesting_ae=requester,
                    reason=reason,
                    reason_codes=reason_codes,
                    contact_uri=contact_uri,
                    contact_name=contact_name,
                ),
                now,
            )
            return Outcome(State.IN_PROGRESS, changed=False)

    # -- subscriptions (PS3.18 11.10 to 11.12, PS3.4 CC.2.3) ------------------------------
    def subscribe(
        self, aet: str, uid: str, *, deletion_lock: bool = False, filter_text: str = ""
    ) -> None:
        """Subscribe ``aet`` to a workitem, the worklist, or a filtered worklist; each
        workitem it becomes subscribed to gets an initial State Report for it alone.
        Deletion locks are always granted (workitems are never deleted)."""
        check_ae_title(aet)
        now = _now()
        with self.engine.begin() as connection:
            if uid in wi.SUBSCRIPTION_UIDS:
                keys: tuple[KeyMatch, ...] = ()
                if uid == wi.FILTERED_GLOBAL_SUBSCRIPTION_UID:
                    keys = parse_filter(filter_text)
                elif filter_text:
                    raise invalid_request(
                        "filter applies to the Filtered Worklist "
                        f"({wi.FILTERED_GLOBAL_SUBSCRIPTION_UID}) only"
                    )
                repo.upsert_subscription(
                    connection,
                    subscriber_aet=aet,
                    workitem_uid=uid,
                    deletion_lock=deletion_lock,
                    filter_text=filter_text,
                    now=now,
                )
                active = [State.SCHEDULED.value, State.IN_PROGRESS.value]
                for row in list(repo.candidates(connection, {}, states=active)):
                    if keys and not matches_filter(row.dataset, keys):
                        continue
                    repo.subscribe_if_absent(
                        connection,
                        subscriber_aet=aet,
                        workitem_uid=row.uid,
                        deletion_lock=deletion_lock,
                        now=now,
                    )
                    self._event(
                        connection,
                        row.uid,
                        events.EventType.STATE_REPORT,
                        events.state_report(row.dataset),
                        now,
                        subscriber_aet=aet,
                    )
                return
            found = repo.workitem(connection, uid)
            if found is None:
                raise no_such_workitem(uid)
            if filter_text:
                raise invalid_request("filter applies to the Filtered Worklist only")
            repo.upsert_subscription(
                connection,
                subscriber_aet=aet,
                workitem_uid=uid,
                deletion_lock=deletion_lock,
                filter_text="",
                now=now,
            )
            self._event(
                connection,
                uid,
                events.EventType.STATE_REPORT,
                events.state_report(found.dataset),
                now,
                subscriber_aet=aet,
            )

    def unsubscribe(self, aet: str, uid: str) -> None:
        """Unsubscribe; from the worklist it also ends every workitem subscription of
        ``aet`` (PS3.4 CC.2.3.2). 404 when there was no such subscription."""
        check_ae_title(aet)
        with self.engine.begin() as connection:
            removed = repo.delete_subscription(connection, aet, uid)
            if not removed:
                raise UpsError(
                    f"{aet} has no subscription to {uid}",
                    dicom_status=UpsStatus.NO_SUCH_UPS,
                    http_status=404,
                )
            if uid in wi.SUBSCRIPTION_UIDS:
                repo.delete_all_subscriptions(connection, aet)

    def suspend(self, aet: str, uid: str) -> None:
        """Suspend Global Subscription: no new workitems for ``aet``; existing ones stay."""
        check_ae_title(aet)
        if uid not in wi.SUBSCRIPTION_UIDS:
            raise invalid_request("only a Worklist Subscription can be suspended")
        with self.engine.begin() as connection:
            if not repo.suspend_subscription(connection, aet, uid):
                raise UpsError(
                    f"{aet} has no subscription to {uid}",
                    dicom_status=UpsStatus.NO_SUCH_UPS,
                    http_status=404,
                )

    def events_for(self, aet: str, after_pk: int, limit: int = 200) -> list[EventRow]:
        """Event reports for ``aet`` logged after ``after_pk`` (Notification Connection)."""
        with self.engine.connect() as connection:
            return repo.events_for(connection, aet, after_pk, limit)

    def last_event_pk(self) -> int:
        with self.engine.connect() as connection:
            return repo.last_event_pk(connection)

    def event_log(self, uid: str) -> list[EventRow]:
        with self.engine.connect() as connection:
            return repo.events_of(connection, uid)

    # -- the AI orchestrator's side -------------------------------------------------------
    def create_for_job(
        self,
        connection: Connection,
        *,
        job_pk: int,
        job_uid: str,
        model_name: str,
        model_version: str,
        study_instance_uid: str,
        series_instance_uid: str,
        patient_id: str,
        patient_name: str,
        inputs: Sequence[tuple[str, str]],
        priority: str = "MEDIUM",
        retrieve_url: str | None = None,
    ) -> None:
        """The workitem of a new AI job, in the caller's transaction (IHE AIW-I): the
        model as Scheduled Station Name Code and processing parameters, the series'
        instances as Input Information (with their WADO-RS URL when given)."""
        if priority not in wi.PRIORITIES:
            raise invalid_request(f"priority {priority!r} is not one of {wi.PRIORITIES}")
        dataset: Json = {}
        wi.put(dataset, wi.PROCEDURE_STEP_LABEL, "LO", f"AI {model_name} {model_version}"[:64])
        wi.put(dataset, wi.WORKLIST_LABEL, "LO", AI_WORKLIST_LABEL)
        wi.put(dataset, wi.PRIORITY, "CS", priority)
        wi.put(dataset, wi.START_DATETIME, "DT", wi.now_datetime())
        wi.put(dataset, wi.INPUT_READINESS, "CS", "READY")
        wi.put(dataset, wi.STATE, "CS", State.SCHEDULED.value)
        if patient_name:
            wi.put(dataset, wi.PATIENT_NAME, "PN", {"Alphabetic": patient_name})
        if patient_id:
            wi.put(dataset, wi.PATIENT_ID, "LO", patient_id)
        wi.put(dataset, wi.STUDY_UID, "UI", study_instance_uid)
        wi.put(dataset, wi.SCHEDULED_WORKITEM_CODE, "SQ", wi.code(*AI_WORKITEM_CODE))
        wi.put(
            dataset,
            wi.SCHEDULED_STATION_NAME,
            "SQ",
            wi.code(model_name, wi.LOCAL_SCHEME, f"AI model {model_name} {model_version}"),
        )
        wi.put(
            dataset,
            wi.SCHEDULED_PROCESSING_PARAMETERS,
            "SQ",
            wi.text_parameter(wi.code("model-name", wi.LOCAL_SCHEME, "AI model name"), model_name),
            wi.text_parameter(
                wi.code("model-version", wi.LOCAL_SCHEME, "AI model version"), model_version
            ),
        )
        wi.put(
            dataset,
            wi.INPUT_INFORMATION,
            "SQ",
            wi.instance_references(
                inputs, study_instance_uid, series_instance_uid, retrieve_url or ""
            ),
        )
        prepared = wi.prepare_for_create(dataset, check_uid(job_uid))
        self._insert(connection, job_uid, prepared.dataset, job_pk=job_pk)

    def set_job_state(
        self,
        connection: Connection,
        *,
        job_uid: str,
        state: str,
        reason: str = "",
        outputs: Sequence[tuple[str, str, str, str]] = (),
    ) -> None:
        """The archive as performer of its own AI job, in the caller's transaction.

        IN PROGRESS claims with an internal Transaction UID; COMPLETED records the
        performed procedure and the result instances (``outputs``: SOP Class, SOP
        Instance, Study, Series UIDs) as Output Information; CANCELED records ``reason``.
        From SCHEDULED, an end state passes through IN PROGRESS (both reported).
        Repeating the current state does nothing; ``ai_jobs`` is the caller's to update.

        Raises :class:`UpsError`: 404 without a workitem, 409 (0xC300) when the
        workitem already ended in the other final state (e.g. a client canceled it).
        """
        requested = parse_state(state)
        if requested is State.SCHEDULED:
            raise invalid_request("a UPS may only become SCHEDULED via N-CREATE")
        row = self._locked(connection, job_uid)
        current = State(row.state)
        if current is requested:
            return
        if current.final:
            raise UpsError(
                f"workitem {job_uid} is {current} and may no longer become {requested}",
                dicom_status=UpsStatus.MAY_NO_LONGER_BE_UPDATED,
                http_status=409,
                warning=WARN_INCONSISTENT_UPS,
            )
        now = _now()
        if requested is State.CANCELED and current is State.SCHEDULED:
            dataset = copy.deepcopy(row.dataset)
            wi.record_cancellation(dataset, reason=reason)
            self._end_unclaimed(connection, row, dataset, State.CANCELED, now)
            return
        if current is State.SCHEDULED:
            row = self._start_by_archive(connection, row, now)
        if requested is State.IN_PROGRESS:
            return
        dataset = copy.deepcopy(row.dataset)
        if requested is State.COMPLETED:
            _record_performed(dataset, outputs)
        else:
            wi.record_cancellation(dataset, reason=reason)
        wi.set_state(dataset, requested)
        self._save(connection, row, dataset, None, now)
        self._event(
            connection, job_uid, events.EventType.STATE_REPORT, events.state_report(dataset), now
        )

    # -- internals ------------------------------------------------------------------------
    def _locked(self, connection: Connection, uid: str) -> WorkitemRow:
        row = repo.lock_workitem(connection, uid)
        if row is None:
            raise no_such_workitem(uid)
        return row

    def _insert(
        self, connection: Connection, uid: str, dataset: Json, *, job_pk: int | None
    ) -> None:
        """Store a new workitem, subscribe the worklist subscribers it concerns (PS3.4
        CC.2.3.2: not suspended, filter matching) and report it SCHEDULED."""
        now = _now()
        repo.insert_workitem(
            connection,
            uid=uid,
            dataset=dataset,
            columns=wi.index_columns(dataset),
            job_pk=job_pk,
            now=now,
        )
        for subscription in repo.subscriptions(connection, workitem_uids=wi.SUBSCRIPTION_UIDS):
            if subscription.suspended:
                continue
            if subscription.workitem_uid == wi.FILTERED_GLOBAL_SUBSCRIPTION_UID and not (
                matches_filter(dataset, parse_filter(subscription.filter_text))
            ):
                continue
            repo.subscribe_if_absent(
                connection,
                subscriber_aet=subscription.subscriber_aet,
                workitem_uid=uid,
                deletion_lock=subscription.deletion_lock,
                now=now,
            )
        self._event(
            connection, uid, events.EventType.STATE_REPORT, events.state_report(dataset), now
        )

    def _save(
        self,
        connection: Connection,
        row: WorkitemRow,
        dataset: Json,
        transaction_uid: str | None,
        now: float,
    ) -> None:
        repo.save_workitem(
            connection,
            row.pk,
            dataset=dataset,
            columns=wi.index_columns(dataset),
            transaction_uid=transaction_uid,
            now=now,
        )

    def _event(
        self,
        connection: Connection,
        uid: str,
        event_type: events.EventType,
        information: Json,
        now: float,
        *,
        subscriber_aet: str | None = None,
    ) -> None:
        repo.insert_event(
            connection,
            workitem_uid=uid,
            event_type_id=int(event_type),
            information=information,
            now=now,
            subscriber_aet=subscriber_aet,
        )

    def _start_by_archive(
        self, connection: Connection, row: WorkitemRow, now: float
    ) -> WorkitemRow:
        """SCHEDULED -> IN PROGRESS with the archive as performer: an internal Transaction
        UID and the start of the performed procedure."""
        dataset = copy.deepcopy(row.dataset)
        performed: Json = {}
        wi.put(performed, wi.PERFORMED_START, "DT", wi.now_datetime())
        wi.put(performed, wi.PERFORMED_STATION_NAME, "SQ", wi.code(*ARCHIVE_STATION))
        wi.put(dataset, wi.PERFORMED_PROCEDURE, "SQ", performed)
        wi.set_state(dataset, State.IN_PROGRESS)
        transaction_uid = str(generate_uid(prefix=None))
        self._save(connection, row, dataset, transaction_uid, now)
        self._event(
            connection, row.uid, events.EventType.STATE_REPORT, events.state_report(dataset), now
        )
        return WorkitemRow(
            row.pk,
            row.uid,
            State.IN_PROGRESS.value,
            transaction_uid,
            dataset,
            row.job_pk,
            row.created_at,
            now,
        )

    def _end_unclaimed(
        self, connection: Connection, row: WorkitemRow, dataset: Json, state: State, now: float
    ) -> None:
        """End a SCHEDULED workitem: report IN PROGRESS then ``state`` (the UPS state
        diagram has no SCHEDULED -> CANCELED edge; PS3.4 CC.2.1.3.2)."""
        wi.set_state(dataset, state)
        self._save(connection, row, dataset, None, now)
        self._event(
            connection,
            row.uid,
            events.EventType.STATE_REPORT,
            events.state_report_as(dataset, State.IN_PROGRESS.value),
            now,
        )
        self._event(
            connection, row.uid, events.EventType.STATE_REPORT, events.state_report(dataset), now
        )

    def _job_not_claimable(self, connection: Connection, row: WorkitemRow, now: float) -> UpsError:
        """A client tried to claim an AI job's workitem but the job is no longer
        scheduled. If the archive runs it, record that (the workitem becomes IN PROGRESS
        with the archive's Transaction UID) and answer 0xC302; if it ended, 0xC300."""
        link = repo.job_link(connection, row.job_pk) if row.job_pk is not None else None
        if link is not None and link.state == "running":
            self._start_by_archive(connection, row, now)
            return UpsError(
                "the UPS is already IN PROGRESS (the archive performs this AI job)",
                dicom_status=UpsStatus.ALREADY_IN_PROGRESS,
                http_status=409,
                warning=WARN_INCONSISTENT_UPS,
            )
        return UpsError(
            f"the AI job of this workitem has ended ({link.state if link else 'deleted'})",
            dicom_status=UpsStatus.MAY_NO_LONGER_BE_UPDATED,
            http_status=409,
            warning=WARN_INCONSISTENT_UPS,
        )


def _progress_percent(dataset: Json) -> int | None:
    for item in wi.items(dataset, wi.PROGRESS_INFORMATION)[:1]:
        value = wi.text(item, wi.PROGRESS)
        try:
            return max(0, min(100, round(float(value))))
        except ValueError:
            return None
    return None


def _cancellation_reason(dataset: Json) -> str:
    for item in wi.items(dataset, wi.PROGRESS_INFORMATION)[:1]:
        return wi.text(item, wi.REASON_FOR_CANCELLATION)
    return ""


def _record_performed(dataset: Json, outputs: Sequence[tuple[str, str, str, str]]) -> None:
    """Complete the performed procedure item (PS3.4 CC.2.5.1.3 final state requirements):
    end time, station, performed workitem code and the result instances by series."""
    performed = wi.items(dataset, wi.PERFORMED_PROCEDURE)
    item = performed[0] if performed else {}
    if not wi.text(item, wi.PERFORMED_START):
        wi.put(item, wi.PERFORMED_START, "DT", wi.now_datetime())
    wi.put(item, wi.PERFORMED_END, "DT", wi.now_datetime())
    if not any(wi.has_code(code) for code in wi.items(item, wi.PERFORMED_STATION_NAME)):
        wi.put(item, wi.PERFORMED_STATION_NAME, "SQ", wi.code(*ARCHIVE_STATION))
    scheduled = [c for c in wi.items(dataset, wi.SCHEDULED_WORKITEM_CODE) if wi.has_code(c)]
    wi.put(item, wi.PERFORMED_WORKITEM_CODE, "SQ", *(scheduled or [wi.code(*AI_WORKITEM_CODE)]))
    by_series: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for sop_class_uid, sop_instance_uid, study_uid, series_uid in outputs:
        by_series.setdefault((study_uid, series_uid), []).append((sop_class_uid, sop_instance_uid))
    wi.put(
        item,
        wi.OUTPUT_INFORMATION,
        "SQ",
        *(
            wi.instance_references(refs, study, series)
            for (study, series), refs in by_series.items()
        ),
    )
    wi.put(dataset, wi.PERFORMED_PROCEDURE, "SQ", item, *performed[1:])
