"""Forward the audit chain to an audit record repository over syslog (RFC 5424/5425).

Each record travels as one RFC 5424 message whose MSG is the DICOM audit message
(UTF-8 with its BOM), MSGID ``IHE+RFC-3881`` as IHE ATNA asks, facility authpriv
(severity notice, warning for failed events), and the chain's seq as the RFC 5424
``meta`` ``sequenceId`` so that the repository can tell a resent message. Messages are
framed by octet counting (RFC 5425 4.3) on a TLS connection (TLS 1.2 or newer, the
repository's certificate checked against ``security.audit.syslog_ca`` and its host
name; the archive's own certificate is presented when one is configured); plain TCP
only with ``syslog_tls = false``.

Store and forward: the chain is the queue. The forwarder sends the records after the
last forwarded seq (``archive_state`` ``audit.forwarded``) and moves that mark only
once the connection is seen alive after the send; when the repository is down it
retries with backoff and, once back, catches up from the mark. Delivery is therefore
at least once: a record may arrive twice around a reconnection, never not at all
(except if a repository silently drops a connection and the data it had received).
One forwarder runs per archive, in the main process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, update
from sqlalchemy import select as sql_select

from openvna.config import Settings
from openvna.index.schema import archive_state
from openvna.security.audit import Outcome
from openvna.security.audit.store import AuditRecord, records_after

logger = logging.getLogger(__name__)

FORWARDED_STATE = "audit.forwarded"
"""``archive_state`` row: seq of the last record the repository has."""
MSGID = "IHE+RFC-3881"
_AUTHPRIV = 10
_NOTICE = 5
_WARNING = 4
_BOM = b"\xef\xbb\xbf"
_BATCH = 200
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
_SEQUENCE_MAX = 2147483647  # RFC 5424 7.3.1: sequenceId is 1 to 2^31-1, then wraps
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _field(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, "-" when empty."""
    cleaned = _NOT_PRINTUSASCII.sub("_", text)[:limit]
    return cleaned or "-"


def syslog_message(record: AuditRecord, *, hostname: str, app_name: str, procid: str) -> bytes:
    """The RFC 5424 message of one audit record."""
    severity = _NOTICE if record.outcome == Outcome.SUCCESS else _WARNING
    timestamp = datetime.fromtimestamp(record.recorded_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sequence = (record.seq - 1) % _SEQUENCE_MAX + 1
    header = (
        f"<{_AUTHPRIV * 8 + severity}>1 {timestamp} {_field(hostname, 255)} "
        f"{_field(app_name, 48)} {_field(procid, 128)} {MSGID} "
        f'[meta sequenceId="{sequence}"] '
    )
    return header.encode("ascii") + _BOM + record.message.encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3 framing: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode("ascii") + b" " + message


def client_context(settings: Settings) -> ssl.SSLContext:
    """TLS client context for the repository (BCP 195: TLS 1.2 and newer)."""
    audit = settings.security.audit
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(audit.syslog_ca) if audit.syslog_ca else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    tls = settings.security.tls
    if tls.certificate is not None and tls.private_key is not None:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context


def read_forwarded(engine: Engine) -> int:
    with engine.connect() as connection:
        value = connection.execute(
            sql_select(archive_state.c.value).where(archive_state.c.name == FORWARDED_STATE)
        ).scalar_one_or_none()
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def write_forwarded(engine: Engine, seq: int) -> None:
    with engine.begin() as connection:
        changed = connection.execute(
            update(archive_state)
            .where(archive_state.c.name == FORWARDED_STATE)
            .values(value=str(seq))
        ).rowcount
        if not changed:
            connection.execute(archive_state.insert().values(name=FORWARDED_STATE, value=str(seq)))


class SyslogForwarder:
    """Background thread sending the chain to ``security.audit.syslog_host``."""

    def __init__(self, settings: Settings, engine: Engine, *, poll: float | None = None) -> None:
        audit = settings.security.audit
        if audit.syslog_host is None:
            raise ValueError("security.audit.syslog_host is not set")
        self.host = audit.syslog_host
        self.port = audit.syslog_port
        self.engine = engine
        self.poll = poll if poll is not None else max(0.2, audit.flush_interval)
        self._context = client_context(settings) if audit.syslog_tls else None
        self._hostname = socket.gethostname()
        self._app_name = audit.source_id
        self._procid = str(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openvna-audit-syslog", daemon=True)
        self._socket: socket.socket | None = None
        self._sent_through: int | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop the thread, then send what is left for up to ``drain_seconds``."""
        self._stop.set()
        self._thread.join(timeout=15)
        deadline = time.monotonic() + drain_seconds
        try:
            sent_through = self._sent_through
            while time.monotonic() < deadline:
                sent_through, more = self._step(sent_through)
                if not more:
                    break
            if sent_through is not None:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                self._step(sent_through)  # confirms the last send if still connected
        except (OSError, ssl.SSLError) as error:
            logger.warning("audit records left for the next start: %s", error)
        except Exception:
            logger.exception("audit forwarding at stop failed")
        finally:
            self._disconnect()

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                self._sent_through, more = self._step(self._sent_through)
                backoff = _BACKOFF_FIRST
                if not more:
                    self._stop.wait(self.poll)
            except (OSError, ssl.SSLError) as error:
                logger.warning(
                    "audit repository %s:%d unavailable (%s); retrying in %.1fs",
                    self.host,
                    self.port,
                    error,
                    backoff,
                )
                self._disconnect()
                self._sent_through = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except Exception:  # the index failed: keep trying, never die silently
                logger.exception("audit forwarding failed; retrying in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _step(self, sent_through: int | None) -> tuple[int | None, bool]:
        """Confirm the last send if the connection survived it, then send the next
        batch. Returns (seq sent but unconfirmed, whether a full batch went out)."""
        if self._socket is not None and self._dropped(self._socket):
            logger.warning("audit repository %s closed the connection", self.host)
            self._disconnect()
            sent_through = None  # resend from the mark
        if self._socket is None:
            self._socket = self._connect()
            logger.info("forwarding audit records to %s:%d", self.host, self.port)
        if sent_through is not None:
            write_forwarded(self.engine, sent_through)
            sent_through = None
        records = records_after(self.engine, read_forwarded(self.engine), _BATCH)
        if not records:
            return None, False
        self._socket.sendall(b"".join(octet_counted(self._message(r)) for r in records))
        return records[-1].seq, len(records) == _BATCH

    def _message(self, record: AuditRecord) -> bytes:
        return syslog_message(
            record, hostname=self._hostname, app_name=self._app_name, procid=self._procid
        )

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is None:
            return raw
        try:
            return self._context.wrap_socket(raw, server_hostname=self.host)
        except Exception:
            raw.close()
            raise

    @staticmethod
    def _dropped(connection: socket.socket) -> bool:
        """A repository never writes to us: readable means closed (FIN or TLS alert)."""
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable)

    def _disconnect(self) -> None:
        connection, self._socket = self._socket, None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()
