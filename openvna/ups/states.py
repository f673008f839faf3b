"""The UPS state machine (PS3.4 CC.1.1, Table CC.1.1-2) and the errors it answers.

A workitem is born SCHEDULED (N-CREATE only), becomes IN PROGRESS when a performer claims
it with a Transaction UID of its own making, and ends COMPLETED or CANCELED when the
owner presents that Transaction UID again. Final states never change. The rules are
pure functions of (current state, request) so the unit tests can walk the whole table
and every adapter (UPS-RS today, DIMSE UPS one day) answers the same statuses.

Each refusal is a :class:`UpsError` carrying the DIMSE status of PS3.4 CC.2 and the HTTP
status and Warning text of PS3.18 11.6.3 / 11.7.3 / 11.8.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from openvna.errors import OpenVNAError


class State(StrEnum):
    """Procedure Step State (0074,1000), PS3.4 Table CC.1.1-1."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"

    @property
    def final(self) -> bool:
        return self in (State.CANCELED, State.COMPLETED)


class UpsStatus(IntEnum):
    """DIMSE statuses of the UPS SOP Classes (PS3.4 CC.2.1.4 to CC.2.4.4)."""

    SUCCESS = 0x0000
    DUPLICATE_SOP_INSTANCE = 0x0111
    CREATED_WITH_MODIFICATIONS = 0xB300
    DELETION_LOCK_NOT_GRANTED = 0xB301
    ALREADY_CANCELED = 0xB304
    ALREADY_COMPLETED_WARNING = 0xB306
    MAY_NO_LONGER_BE_UPDATED = 0xC300
    TRANSACTION_UID_NOT_CORRECT = 0xC301
    ALREADY_IN_PROGRESS = 0xC302
    ONLY_SCHEDULED_VIA_CREATE = 0xC303
    FINAL_STATE_REQUIREMENTS_NOT_MET = 0xC304
    NO_SUCH_UPS = 0xC307
    NOT_SCHEDULED_AT_CREATE = 0xC309
    NOT_YET_IN_PROGRESS = 0xC310
    ALREADY_COMPLETED = 0xC311
    PERFORMER_CANNOT_BE_CONTACTED = 0xC312
    INVALID = 0xA900


# PS3.18 warning texts (11.4.3.2, 11.6.3.2, 11.7.3.2, 11.8.3.2, 11.10.3.2), verbatim.
WARN_CREATED_WITH_MODIFICATIONS = "The Workitem was created with modifications."
WARN_UPDATED_WITH_MODIFICATIONS = "The Workitem was updated with modifications."
WARN_NOT_CLAIMED = "The target URI did not reference a claimed Workitem."
WARN_INCONSISTENT_WORKITEM = (
    "The submitted request is inconsistent with the current state of the Workitem."
)
WARN_TRANSACTION_UID_MISSING = "The Transaction UID is missing."
WARN_TRANSACTION_UID_INCORRECT = "The Transaction UID is incorrect."
WARN_INCONSISTENT_UPS = "The submitted request is inconsistent with the state of the UPS Instance."
WARN_ALREADY_CANCELED = "The UPS is already in the requested state of CANCELED."
WARN_ALREADY_COMPLETED = "The UPS is already in the requested state of COMPLETED."
WARN_DELETION_LOCK_NOT_GRANTED = "Deletion Lock not granted."
WARN_FILTERED_NOT_SUPPORTED = "Filtered Worklist Subscriptions are not supported."


class UpsError(OpenVNAError):
    """A refused UPS request: DIMSE status, HTTP status and the PS3.18 Warning text."""

    def __init__(
        self, message: str, *, dicom_status: int, http_status: int, warning: str = ""
    ) -> None:
        super().__init__(message)
        self.dicom_status = dicom_status
        self.http_status = http_status
        self.warning = warning


def no_such_workitem(uid: str) -> UpsError:
    return UpsError(
        f"workitem {uid} does not exist",
        dicom_status=UpsStatus.NO_SUCH_UPS,
        http_status=404,
    )


def invalid_request(message: str) -> UpsError:
    """A payload or parameter that breaks the UPS IOD rules (HTTP 400)."""
    return UpsError(message, dicom_status=UpsStatus.INVALID, http_status=400)


@dataclass(frozen=True)
class Outcome:
    """A successful request; ``changed`` is false when the UPS already was as asked."""

    new_state: State
    changed: bool
    dicom_status: int = UpsStatus.SUCCESS
    warning: str = ""


def parse_state(text: str) -> State:
    """The requested Procedure Step State; PS3.18 11.7.1.4 spells one "CANCELLED", which
    some clients copy, so both spellings are taken."""
    value = text.strip().upper()
    if value == "CANCELLED":
        value = "CANCELED"
    try:
        return State(value)
    except ValueError as error:
        raise invalid_request(f"{text!r} is not a Procedure Step State") from error


def _conflict(message: str, status: UpsStatus, warning: str = WARN_INCONSISTENT_UPS) -> UpsError:
    return UpsError(message, dicom_status=status, http_status=409, warning=warning)


def change_state(
    current: State,
    requested: State,
    *,
    transaction_uid: str | None,
    owner_transaction_uid: str | None,
    final_state_problems: tuple[str, ...] = (),
) -> Outcome:
    """Apply Change UPS State (N-ACTION 1, PS3.4 CC.2.1.3, Table CC.1.1-2).

    ``final_state_problems`` lists what the workitem lacks for COMPLETED (PS3.4 CC.2.5.1.3,
    checked by the caller on the stored data set); a non-empty list refuses with 0xC304.

    Raises
    ------
    UpsError
        0xC303 (to SCHEDULED), 0xC301 (Transaction UID missing or wrong: HTTP 400),
        0xC302 (already IN PROGRESS), 0xC310 (not yet IN PROGRESS), 0xC300 (final state),
        0xC304 (final state requirements not met): HTTP 409.
    """
    if requested is State.SCHEDULED:
        raise UpsError(
            "a UPS may only become SCHEDULED via N-CREATE",
            dicom_status=UpsStatus.ONLY_SCHEDULED_VIA_CREATE,
            http_status=400,
            warning=WARN_INCONSISTENT_UPS,
        )
    if not transaction_uid:
        raise UpsError(
            "the Transaction UID is missing",
            dicom_status=UpsStatus.TRANSACTION_UID_NOT_CORRECT,
            http_status=400,
            warning=WARN_TRANSACTION_UID_MISSING,
        )
    if current is requested and current.final:
        status, warning = (
            (UpsStatus.ALREADY_CANCELED, WARN_ALREADY_CANCELED)
            if current is State.CANCELED
            else (UpsStatus.ALREADY_COMPLETED_WARNING, WARN_ALREADY_COMPLETED)
        )
        return Outcome(current, changed=False, dicom_status=status, warning=warning)
    if current.final:
        raise _conflict(
            f"the UPS is {current} and may no longer be updated",
            UpsStatus.MAY_NO_LONGER_BE_UPDATED,
        )
    if requested is State.IN_PROGRESS:
        if current is State.IN_PROGRESS:
            raise _conflict("the UPS is already IN PROGRESS", UpsStatus.ALREADY_IN_PROGRESS)
        return Outcome(State.IN_PROGRESS, changed=True)
    # requested COMPLETED or CANCELED
    if current is State.SCHEDULED:
        raise _conflict(
            "the UPS is not yet IN PROGRESS (to cancel a SCHEDULED UPS, request cancellation)",
            UpsStatus.NOT_YET_IN_PROGRESS,
        )
    if transaction_uid != owner_transaction_uid:
        raise UpsError(
            "the Transaction UID is incorrect",
            dicom_status=UpsStatus.TRANSACTION_UID_NOT_CORRECT,
            http_status=400,
            warning=WARN_TRANSACTION_UID_INCORRECT,
        )
    if requested is State.COMPLETED and final_state_problems:
        raise _conflict(
            "the UPS has not met final state requirements for COMPLETED: "
            + "; ".join(final_state_problems),
            UpsStatus.FINAL_STATE_REQUIREMENTS_NOT_MET,
        )
    return Outcome(requested, changed=True)


def check_update(
    current: State, *, transaction_uid: str | None, owner_transaction_uid: str | None
) -> None:
    """May N-SET (Update Workitem, PS3.18 11.6) change a UPS in ``current``?

    SCHEDULED: only without a Transaction UID (nobody owns it yet). IN PROGRESS: only with
    the owner's. Final states: never (PS3.18 11.6.2: HTTP 400).

    Raises
    ------
    UpsError
        0xC300 (final state, 400), 0xC301 (Transaction UID missing or wrong, 400),
        0xC310 (a Transaction UID for a UPS nobody claimed, 409).
    """
    if current.final:
        raise UpsError(
            f"the UPS is {current} and may no longer be updated",
            dicom_status=UpsStatus.MAY_NO_LONGER_BE_UPDATED,
            http_status=400,
            warning=WARN_INCONSISTENT_WORKITEM,
        )
    if current is State.SCHEDULED:
        if transaction_uid:
            raise UpsError(
                "the UPS is SCHEDULED: nobody owns it, so no Transaction UID applies",
                dicom_status=UpsStatus.NOT_YET_IN_PROGRESS,
                http_status=409,
                warning=WARN_INCONSISTENT_WORKITEM,
            )
        return
    if transaction_uid != owner_transaction_uid:
        raise UpsError(
            "the Transaction UID is " + ("incorrect" if transaction_uid else "missing"),
            dicom_status=UpsStatus.TRANSACTION_UID_NOT_CORRECT,
            http_status=400,
            warning=WARN_NOT_CLAIMED,
        )


class CancelAction(StrEnum):
    """What Request UPS Cancel (N-ACTION 2, PS3.4 CC.2.1.3.2) does in each state."""

    CANCEL_NOW = "cancel now"
    """SCHEDULED: nobody performs it, the SCP cancels it (reports IN PROGRESS, CANCELED)."""
    NOTIFY_PERFORMER = "notify performer"
    """IN PROGRESS: the owner gets a UPS Cancel Requested event and decides."""
    ALREADY_CANCELED = "already canceled"


def request_cancel(current: State) -> CancelAction:
    """Raises :class:`UpsError` 0xC311 (HTTP 409) for a COMPLETED UPS."""
    if current is State.SCHEDULED:
        return CancelAction.CANCEL_NOW
    if current is State.IN_PROGRESS:
        return CancelAction.NOTIFY_PERFORMER
    if current is State.CANCELED:
        return CancelAction.ALREADY_CANCELED
    raise UpsError(
        "the UPS is already COMPLETED",
        dicom_status=UpsStatus.ALREADY_COMPLETED,
        http_status=409,
        warning=WARN_INCONSISTENT_UPS,
    )


def performer_unreachable() -> UpsError:
    """0xC312: nobody could receive the Cancel Requested event (PS3.4 CC.2.1.3.2)."""
    return UpsError(
        "the performer cannot be contacted: no subscriber would receive the cancel request",
        dicom_status=UpsStatus.PERFORMER_CANNOT_BE_CONTACTED,
        http_status=409,
        warning=WARN_INCONSISTENT_UPS,
    )
