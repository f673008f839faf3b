"""UPS event reports (PS3.4 CC.2.4, N-EVENT-REPORT) as DICOM JSON (PS3.18 11.13).

The event log (``ups_events``) stores the Event Information of each report; the Notification
Connection adds the message header when it sends it (PS3.18 11.13 example: Affected SOP
Class UID, Message ID, Affected SOP Instance UID, Event Type ID), so the same stored row
can go to every subscriber.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from openvna.ups import workitem as wi

Json = dict[str, Any]

UPS_EVENT_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.4"
"""The UPS Event SOP Class: Affected SOP Class UID of every event report."""


class EventType(IntEnum):
    """Event Type ID (0000,1002), PS3.4 Table CC.2.4-1."""

    STATE_REPORT = 1
    CANCEL_REQUESTED = 2
    PROGRESS_REPORT = 3
    SCP_STATUS_CHANGE = 4
    ASSIGNED = 5


def state_report(dataset: Json) -> Json:
    """UPS State Report: the state, input readiness and, for CANCELED, why (CC.2.4.3)."""
    info: Json = {}
    wi.put(info, wi.STATE, "CS", wi.text(dataset, wi.STATE))
    wi.put(info, wi.INPUT_READINESS, "CS", wi.text(dataset, wi.INPUT_READINESS) or "READY")
    if wi.text(dataset, wi.STATE) == "CANCELED":
        for item in wi.items(dataset, wi.PROGRESS_INFORMATION)[:1]:
            for tag in (wi.REASON_FOR_CANCELLATION, wi.DISCONTINUATION_REASON_CODE):
                if tag in item:
                    info[tag] = item[tag]
    return info


def state_report_as(dataset: Json, state: str) -> Json:
    """A State Report for an intermediate state the UPS passes through in one request
    (SCHEDULED -> IN PROGRESS -> CANCELED when the SCP cancels an unclaimed UPS)."""
    info = state_report(dataset)
    wi.put(info, wi.STATE, "CS", state)
    return info


def cancel_requested(
    *,
    requesting_ae: str,
    reason: str = "",
    reason_codes: list[Json] | None = None,
    contact_uri: str = "",
    contact_name: str = "",
) -> Json:
    """UPS Cancel Requested (CC.2.4.3): who asks, why, and how to reach them."""
    info: Json = {}
    wi.put(info, wi.REQUESTING_AE, "AE", requesting_ae[:16])
    if reason:
        wi.put(info, wi.REASON_FOR_CANCELLATION, "LT", reason)
    if reason_codes:
        wi.put(info, wi.DISCONTINUATION_REASON_CODE, "SQ", *reason_codes)
    if contact_uri:
        wi.put(info, wi.CONTACT_URI, "UR", contact_uri)
    if contact_name:
        wi.put(info, wi.CONTACT_DISPLAY_NAME, "LO", contact_name)
    return info


def progress_report(dataset: Json) -> Json:
    """UPS Progress Report: the Procedure Step Progress Information Sequence."""
    info: Json = {}
    wi.put(info, wi.PROGRESS_INFORMATION, "SQ", *wi.items(dataset, wi.PROGRESS_INFORMATION))
    return info


def assigned(dataset: Json) -> Json:
    """UPS Assigned: the station and human performers now scheduled (CC.2.4.3)."""
    info: Json = {}
    for tag in (wi.SCHEDULED_STATION_NAME, wi.SCHEDULED_HUMAN_PERFORMERS):
        if tag in dataset:
            info[tag] = dataset[tag]
    return info


def event_report(workitem_uid: str, event_type: int, information: Json, message_id: int) -> Json:
    """The message as sent on the Notification Connection (PS3.18 11.13)."""
    report: Json = {
        "00000002": {"vr": "UI", "Value": [UPS_EVENT_SOP_CLASS]},
        "00000110": {"vr": "US", "Value": [message_id % 65536]},
        "00001000": {"vr": "UI", "Value": [workitem_uid]},
        "00001002": {"vr": "US", "Value": [int(event_type)]},
    }
    report.update(information)
    return report
