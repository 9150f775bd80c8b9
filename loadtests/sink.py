"""Upload sink and WebSocket echo origin for the benchmark (run as its own process).

nginx serves the static files; it cannot both read a whole request body and then answer
without buffering it to disk, so uploads go here: the body is counted and dropped, then
``204`` is sent. Content-Length and chunked bodies are both understood. ``/ws`` on the
second port is a WebSocket echo for the idle-connections scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import uvloop
from websockets.asyncio.server import ServerConnection, serve

_RESPONSE = b"HTTP/1.1 204 No Content\r\nServer: bench-sink\r\n\r\n"
_MAX_HEAD = 64 * 1024


class _SinkProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 server that discards request bodies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.remaining = -1  # body bytes still expected; -1: reading a head
        self.chunked = False
        self.chunk_buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.remaining < 0 and not self.chunked:
                view = self._read_head(view)
            elif self.chunked:
                self.chunk_buffer += view
                view = memoryview(b"")
                self._read_chunks()
            else:
                take = min(self.remaining, len(view))
                self.remaining -= take
                view = view[take:]
                if self.remaining == 0:
                    self._done()

    def _read_head(self, view: memoryview) -> memoryview:
        self.head += view
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > _MAX_HEAD and self.transport is not None:
                self.transport.close()
            return memoryview(b"")
        rest = memoryview(bytes(self.head[end + 4 :]))
        lines = bytes(self.head[:end]).split(b"\r\n")[1:]
        self.head.clear()
        length = 0
        for line in lines:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value.strip())
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
        if self.chunked:
            return rest
        self.remaining = length
        if length == 0:
            self._done()
        return rest

    def _read_chunks(self) -> None:
        buffer = self.chunk_buffer
        while True:
            if self.remaining > 0:
                take = min(self.remaining, len(buffer))
                del buffer[:take]
                self.remaining -= take
                if self.remaining > 0:
                    return
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                return
            line = bytes(buffer[:line_end])
            del buffer[: line_end + 2]
            if not line:
                continue  # the CRLF after a chunk's data
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                # Last chunk: trailers are not expected from curl; drop the final CRLF.
                with contextlib.suppress(ValueError):
                    del buffer[: buffer.index(b"\r\n") + 2]
                self.chunked = False
                self.remaining = 0
                self._done()
                return
            self.remaining = size

    def _done(self) -> None:
        self.remaining = -1
        if self.transport is not None:
            self.transport.write(_RESPONSE)


async def _echo(connection: ServerConnection) -> None:
    with contextlib.suppress(Exception):
        async for message in connection:
            await connection.send(message)


async def _main(port: int, ws_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await loop.create_server(_SinkProtocol, "127.0.0.1", port, backlog=1024)
    async with serve(_echo, "127.0.0.1", ws_port, backlog=2048, ping_interval=None):
        print("ready", flush=True)
        await stop
    server.close()


def main() -> None:
    """``python sink.py --port P --ws-port Q``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(_main(args.port, args.ws_port))


if __name__ == "__main__":
    main()
