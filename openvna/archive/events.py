"""Events the archive core emits, and the bus that delivers them.

Subscribers (AI, worklist, routing, audit) never run on the ingest thread: the bus hands
each delivery to the task executor, so a slow subscriber cannot delay an acknowledgement
(ARCHITECTURE.md property 7).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceStored:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    storage_key: str
    calling_aet: str
    outcome: str


@dataclass(frozen=True)
class StudyStable:
    study_instance_uid: str


class Executor(Protocol):
    def submit(self, function: Callable[..., Any], /, *args: Any) -> Any: ...


EventT = TypeVar("EventT")


class EventBus:
    """Publish/subscribe by event type; deliveries run on the executor."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._subscribers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, event_type: type[EventT], handler: Callable[[EventT], None]) -> None:
        with self._lock:
            self._subscribers[event_type].append(handler)

    def publish(self, event: object) -> None:
        with self._lock:
            handlers = list(self._subscribers.get(type(event), ()))
        for handler in handlers:
            self._executor.submit(_deliver, handler, event)


def _deliver(handler: Callable[[Any], None], event: object) -> None:
    try:
        handler(event)
    except Exception:
        logger.exception("event subscriber %r failed on %r", handler, event)
