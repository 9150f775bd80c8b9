"""What the fuzzing of the HTTP/2 decoder found, shown with a real edge and a hostile connector.

A connector is a tenant too: its answers are decoded by the edge's tunnel connection, which
carries every stream of that connector. An answer the edge cannot use must fail its own
stream (the visitor gets a 502) and leave the connection serving the next request.
"""

from __future__ import annotations

import asyncio

import pytest

from adit.protocol.hpack_codec import PlainHpackEncoder
from adit.protocol.http2 import ConnectorTunnelConnection, RequestReceived
from adit.protocol.http2_frames import Flag, FrameType, frame
from adversary import HostileConnector, exchange, status_of
from harness import Edge, Processes, create_tunnel, login

HOST = "hostile.example.test"


def _head(*fields: tuple[bytes, bytes]) -> bytes:
    return PlainHpackEncoder().encode(list(fields))


# Each: the header block a hostile connector answers the first request with.
ANSWERS = {
    # Decoded as status 0: the visitor got "HTTP/1.1 0" as its status line.
    "no-status": _head((b"cf-cloudflared-response-meta", b'{"src":"origin"}')),
    # int() took it: the visitor got "HTTP/1.1 2000".
    "status-2_000": _head(
        (b":status", b"2_000"), (b"cf-cloudflared-response-meta", b'{"src":"origin"}')
    ),
    # json.loads raised RecursionError out of the edge's receive path: the whole connection
    # (every stream of this connector) went down with it.
    "deep-meta": _head((b":status", b"200"), (b"cf-cloudflared-response-meta", b"[" * 5000)),
}


@pytest.mark.process
@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_a_broken_answer_fails_its_stream_not_the_connection(
    processes: Processes, edge: Edge, name: str
) -> None:
    account = login(edge, processes.tmp / "home")
    tunnel = create_tunnel(account, "hostile", HOST)
    block = ANSWERS[name]

    def answer(conn: ConnectorTunnelConnection, request: RequestReceived) -> bytes:
        if request.path == "/first":
            flags = Flag.END_HEADERS | Flag.END_STREAM
            return frame(FrameType.HEADERS, flags, request.stream_id, block)
        conn.send_response(
            request.stream_id, 200, [("Content-Length", "2")], end_stream=True, body=b"ok"
        )
        return b""

    async def visit() -> None:
        connector = HostileConnector.for_tunnel(edge, tunnel, answer=answer)
        await connector.open()
        loop = asyncio.get_running_loop()
        try:
            request = f"GET /first HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            reply = await loop.run_in_executor(None, exchange, edge.http, request.encode())
            assert status_of(reply) == 502
            request = f"GET /second HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            reply = await loop.run_in_executor(None, exchange, edge.http, request.encode())
            assert status_of(reply) == 200, reply[:200]
            assert not connector.closed.is_set()
            assert [r.path for r in connector.requests] == ["/first", "/second"]
        finally:
            await connector.close()

    asyncio.run(visit())
