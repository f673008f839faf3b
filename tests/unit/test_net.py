"""The shared listening socket: accepted HTTP connections must not wait on Nagle."""

from __future__ import annotations

import asyncio
import socket

from openvna.net import listening_socket


def test_accepted_connections_have_tcp_nodelay() -> None:
    """asyncio enables TCP_NODELAY only when the listening socket says IPPROTO_TCP;
    without it every kept-alive HTTP response stalls ~40 ms on delayed ACKs."""
    sock = listening_socket("127.0.0.1", 0, blocking=True)
    assert sock.proto == socket.IPPROTO_TCP
    port = sock.getsockname()[1]
    seen: list[int] = []

    async def scenario() -> None:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server_side = writer.get_extra_info("socket")
            seen.append(server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(scenario())
    assert seen and seen[0] != 0
