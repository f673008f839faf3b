"""The audit trail's part in starting and stopping a server (main process only).

At start it records Application Activity "Application Start" (A.5.3.1, the
operating-system user as launcher) and starts the syslog forwarder when a repository is
configured; at stop it records "Application Stop" after every adapter has stopped (so
no record follows it), writes the queue and gives the forwarder a moment to send it.
Forked DIMSE processes do neither: one server, one start, one forwarder.
"""

from __future__ import annotations

import getpass
import logging

from openvna.archive.service import Archive
from openvna.security.audit import events
from openvna.security.audit.syslog import SyslogForwarder
from openvna.security.principal import Principal, PrincipalKind

logger = logging.getLogger(__name__)

_STOP_FLUSH_SECONDS = 10.0


def launcher() -> Principal:
    """The operating-system user running the server (Application Launcher, 110151)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return Principal(
        subject=f"os:{user}", kind=PrincipalKind.SYSTEM, roles=frozenset(), display_name=user
    )


class AuditLifecycle:
    """Application Start/Stop records and the forwarder of one running server."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.forwarder: SyslogForwarder | None = None
        self._stopped = False

    def start(self) -> AuditLifecycle:
        settings = self.archive.settings
        if not settings.security.audit.enabled:
            return self
        self.archive.security.audit.record(events.application_activity(True, launcher()))
        if settings.security.audit.syslog_host is not None:
            self.forwarder = SyslogForwarder(settings, self.archive.engine)
            self.forwarder.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if not self.archive.settings.security.audit.enabled:
            return
        audit = self.archive.security.audit
        audit.record(events.application_activity(False, launcher()))
        if self.forwarder is not None:
            audit.flush(_STOP_FLUSH_SECONDS)  # so that the forwarder sends the stop too
            self.forwarder.stop()


def start_audit(archive: Archive) -> AuditLifecycle:
    """Record the start and start forwarding; call ``stop()`` before closing the archive."""
    return AuditLifecycle(archive).start()
