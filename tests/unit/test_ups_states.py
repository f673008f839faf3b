"""The UPS state machine against PS3.4 Table CC.1.1-2, row by row."""

from __future__ import annotations

import pytest

from openvna.ups.states import (
    WARN_ALREADY_CANCELED,
    WARN_ALREADY_COMPLETED,
    WARN_NOT_CLAIMED,
    WARN_TRANSACTION_UID_INCORRECT,
    WARN_TRANSACTION_UID_MISSING,
    CancelAction,
    State,
    UpsError,
    change_state,
    check_update,
    parse_state,
    request_cancel,
)

OWNER = "1.2.3.4"
OTHER = "1.2.3.5"


def refused(
    current: State,
    requested: State,
    transaction_uid: str | None = OWNER,
    problems: tuple[str, ...] = (),
) -> UpsError:
    with pytest.raises(UpsError) as raised:
        change_state(
            current,
            requested,
            transaction_uid=transaction_uid,
            owner_transaction_uid=OWNER if current is State.IN_PROGRESS else None,
            final_state_problems=problems,
        )
    return raised.value


def test_claim_a_scheduled_ups() -> None:
    outcome = change_state(
        State.SCHEDULED, State.IN_PROGRESS, transaction_uid=OWNER, owner_transaction_uid=None
    )
    assert outcome.new_state is State.IN_PROGRESS and outcome.changed


@pytest.mark.parametrize("requested", [State.COMPLETED, State.CANCELED])
def test_owner_ends_an_in_progress_ups(requested: State) -> None:
    outcome = change_state(
        State.IN_PROGRESS, requested, transaction_uid=OWNER, owner_transaction_uid=OWNER
    )
    assert outcome.new_state is requested and outcome.changed and outcome.warning == ""


@pytest.mark.parametrize(
    ("current", "requested", "status", "http"),
    [
        (State.IN_PROGRESS, State.IN_PROGRESS, 0xC302, 409),
        (State.COMPLETED, State.IN_PROGRESS, 0xC300, 409),
        (State.CANCELED, State.IN_PROGRESS, 0xC300, 409),
        (State.SCHEDULED, State.COMPLETED, 0xC310, 409),
        (State.SCHEDULED, State.CANCELED, 0xC310, 409),
        (State.COMPLETED, State.CANCELED, 0xC300, 409),
        (State.CANCELED, State.COMPLETED, 0xC300, 409),
        (State.SCHEDULED, State.SCHEDULED, 0xC303, 400),
        (State.IN_PROGRESS, State.SCHEDULED, 0xC303, 400),
    ],
)
def test_refused_transitions(current: State, requested: State, status: int, http: int) -> None:
    error = refused(current, requested)
    assert (error.dicom_status, error.http_status) == (status, http)
    assert error.warning


def test_transaction_uid_missing_or_wrong() -> None:
    missing = refused(State.IN_PROGRESS, State.COMPLETED, transaction_uid=None)
    assert (missing.dicom_status, missing.http_status) == (0xC301, 400)
    assert missing.warning == WARN_TRANSACTION_UID_MISSING
    wrong = refused(State.IN_PROGRESS, State.CANCELED, transaction_uid=OTHER)
    assert (wrong.dicom_status, wrong.http_status) == (0xC301, 400)
    assert wrong.warning == WARN_TRANSACTION_UID_INCORRECT


def test_completion_needs_final_state_requirements() -> None:
    error = refused(State.IN_PROGRESS, State.COMPLETED, problems=("no end time",))
    assert error.dicom_status == 0xC304 and "no end time" in str(error)
    # Canceling has no such requirement: the SCP fills the cancellation date time.
    change_state(
        State.IN_PROGRESS,
        State.CANCELED,
        transaction_uid=OWNER,
        owner_transaction_uid=OWNER,
        final_state_problems=("no end time",),
    )


@pytest.mark.parametrize(
    ("state", "status", "warning"),
    [
        (State.CANCELED, 0xB304, WARN_ALREADY_CANCELED),
        (State.COMPLETED, 0xB306, WARN_ALREADY_COMPLETED),
    ],
)
def test_already_in_the_requested_final_state_is_a_warning(
    state: State, status: int, warning: str
) -> None:
    outcome = change_state(state, state, transaction_uid=OTHER, owner_transaction_uid=None)
    assert not outcome.changed
    assert (outcome.dicom_status, outcome.warning) == (status, warning)


def test_update_rules() -> None:
    check_update(State.SCHEDULED, transaction_uid=None, owner_transaction_uid=None)
    check_update(State.IN_PROGRESS, transaction_uid=OWNER, owner_transaction_uid=OWNER)
    with pytest.raises(UpsError) as wrong:
        check_update(State.IN_PROGRESS, transaction_uid=OTHER, owner_transaction_uid=OWNER)
    assert (wrong.value.dicom_status, wrong.value.http_status) == (0xC301, 400)
    assert wrong.value.warning == WARN_NOT_CLAIMED
    for final in (State.COMPLETED, State.CANCELED):
        with pytest.raises(UpsError) as ended:
            check_update(final, transaction_uid=OWNER, owner_transaction_uid=None)
        assert (ended.value.dicom_status, ended.value.http_status) == (0xC300, 400)
    with pytest.raises(UpsError) as unclaimed:
        check_update(State.SCHEDULED, transaction_uid=OWNER, owner_transaction_uid=None)
    assert unclaimed.value.dicom_status == 0xC310


def test_request_cancel_by_state() -> None:
    assert request_cancel(State.SCHEDULED) is CancelAction.CANCEL_NOW
    assert request_cancel(State.IN_PROGRESS) is CancelAction.NOTIFY_PERFORMER
    assert request_cancel(State.CANCELED) is CancelAction.ALREADY_CANCELED
    with pytest.raises(UpsError) as completed:
        request_cancel(State.COMPLETED)
    assert (completed.value.dicom_status, completed.value.http_status) == (0xC311, 409)


def test_state_spellings() -> None:
    assert parse_state("in progress") is State.IN_PROGRESS
    assert parse_state("CANCELLED") is State.CANCELED  # PS3.18 11.7.1.4 spells it so
    with pytest.raises(UpsError) as unknown:
        parse_state("DONE")
    assert unknown.value.http_status == 400
