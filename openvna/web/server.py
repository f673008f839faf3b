"""Runs the HTTP application under uvicorn in a background thread of ``openvna serve``."""

from __future__ import annotations

import threading
import time

import uvicorn

from openvna.errors import OpenVNAError
from openvna.net import listening_socket


class HttpServer:
    """uvicorn on a socket bound before start, so the chosen port is known at once."""

    def __init__(self, app: object, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind, start serving in a thread and return the bound port."""
        try:
            sock = listening_socket(self._host, self._port, blocking=True)
        except OSError as error:
            raise OpenVNAError(
                f"cannot listen for HTTP on {self._host}:{self._port}: {error}"
            ) from error
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app,  # type: ignore[arg-type]
            log_level="warning",
            access_log=False,
            lifespan="off",
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
