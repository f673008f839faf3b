"""Keeping each AI job's UPS workitem in step with the job.

The workitem is reported in its own transaction, after the job's: a workitem that an
outside client already ended (it cancelled the item while the archive finished it)
must never roll back the job's own record. A refused report is logged, not raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Engine

from openvna.errors import OpenVNAError
from openvna.ups.service import WorkitemService

logger = logging.getLogger(__name__)


def report_workitem(
    engine: Engine,
    *,
    job_uid: str,
    state: str,
    reason: str = "",
    outputs: Sequence[tuple[str, str, str, str]] = (),
) -> bool:
    """Move the job's workitem to ``state``; False (logged) when UPS refuses."""
    try:
        with engine.begin() as connection:
            WorkitemService(engine).set_job_state(
                connection, job_uid=job_uid, state=state, reason=reason, outputs=outputs
            )
    except OpenVNAError as error:
        logger.warning("AI job %s: workitem not moved to %s: %s", job_uid, state, error)
        return False
    return True
