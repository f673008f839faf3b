"""Listening sockets shared by the DIMSE and HTTP adapters."""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int, *, blocking: bool, backlog: int = 128) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` has a colon) and listening.

    Bound before the server starts, so the chosen port (``port`` 0: any free one) is known
    at once and a port already in use is reported before anything else starts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket's protocol says TCP; with 0, uvicorn's separate header and body
    # writes wait ~40 ms for the client's delayed ACK on every kept-alive response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(blocking)
    return sock
