"""Runs the HTTP application under uvicorn in a background thread of ``openvna serve``."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from openvna.errors import OpenVNAError
from openvna.net import listening_socket


def http_listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP socket; raises :class:`OpenVNAError` naming the address when taken."""
    try:
        return listening_socket(host, port, blocking=True, backlog=1024)
    except OSError as error:
        raise OpenVNAError(f"cannot listen for HTTP on {host}:{port}: {error}") from error


class HttpServer:
    """uvicorn on a socket bound before start, so the chosen port is known at once."""

    def __init__(
        self, app: object, host: str, port: int, sock: socket.socket | None = None
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._sock = sock
        """A socket bound before a fork and shared by every server process."""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind, start serving in a thread and return the bound port."""
        sock = self._sock or http_listening_socket(self._host, self._port)
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app,  # type: ignore[arg-type]
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=75,
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
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
