"""The embedded task executor: a thread pool in the archive process.

At scale the same task functions run on Celery workers (issue: scale-out); task code
receives plain arguments and never knows which executor ran it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class InProcessExecutor:
    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openvna-task")

    def submit(self, function: Callable[..., Any], /, *args: Any) -> Future[Any]:
        return self._pool.submit(function, *args)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
