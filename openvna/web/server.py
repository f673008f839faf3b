"""Runs the HTTP application under uvicorn in a background thread of ``openvna serve``.

With TLS configured it serves HTTPS only, with OpenVNA's own server context (TLS 1.2+,
AEAD suites: :mod:`openvna.security.tls`): uvicorn's ``ssl_*`` options build a context
without a minimum version, so ours is handed over whole through ``ssl_context_factory``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import uvicorn

from openvna.errors import OpenVNAError
from openvna.net import listening_socket

logger = logging.getLogger(__name__)


def http_listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP socket; raises :class:`OpenVNAError` naming the address when taken."""
    try:
        return listening_socket(host, port, blocking=True, backlog=1024)
    except OSError as error:
        raise OpenVNAError(f"cannot listen for HTTP on {host}:{port}: {error}") from error


class HttpServer:
    """uvicorn on a socket bound before start, so the chosen port is known at once."""

    def __init__(
        self,
        app: object,
        host: str,
        port: int,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._sock = sock
        """A socket bound before a fork and shared by every server process."""
        self._ssl_context = ssl_context
        """HTTPS with this context (from openvna.security.tls); None: plain HTTP."""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind, start serving in a thread and return the bound port."""
        sock = self._sock or http_listening_socket(self._host, self._port)
        port = int(sock.getsockname()[1])
        ssl_context = self._ssl_context
        config = uvicorn.Config(
            self._app,  # type: ignore[arg-type]
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=75,
            ssl_context_factory=(
                None if ssl_context is None else lambda _config, _default: ssl_context
            ),
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="openvna-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise OpenVNAError(f"the HTTP server did not start on {self._host}:{port}")
        scheme = "https" if ssl_context is not None else "http"
        logger.info("HTTP listening on %s:%d (%s)", self._host, port, scheme)
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
