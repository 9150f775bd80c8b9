"""The access client's one writer towards the edge: WebSocket messages no larger than the
unmodified cloudflared carries intact.

cloudflared (``websocket.Conn.Read``) reads a whole client message (gobwas'
``wsutil.ReadClientBinary``, continuation frames put together) and copies it into the
caller's buffer, dropping the rest; its caller is the stream pipe's ``io.CopyBuffer`` with
``cfio``'s 16 KiB buffer. So of each message only the first 16 KiB reach the origin, and
fragmenting a larger message into frames does not help: the limit is per message. Every
access path (public tcp/ssh, private tcp/udp) writes through :class:`FrameSender`, which
cuts a byte stream into messages of at most :data:`MAX_MESSAGE` and refuses a message that
must stay whole (a datagram) past it.
"""

from __future__ import annotations

import asyncio

from adit.protocol.websocket import WebSocketConnection

__all__ = ["MAX_MESSAGE", "FrameSender", "MessageTooLarge"]

#: The most of one message cloudflared's ``websocket.Conn`` hands to the origin
#: (``cfio.defaultBufferSize``).
MAX_MESSAGE = 16 * 1024


class MessageTooLarge(ValueError):
    """A message that must stay whole is larger than :data:`MAX_MESSAGE`."""


class FrameSender:
    """Writes WebSocket bytes to the edge one caller at a time: a pong (from the reading
    task) and a data frame (from the writing task) must not interleave inside a frame while
    a write waits for the socket."""

    def __init__(self, writer: asyncio.StreamWriter, ws: WebSocketConnection) -> None:
        self._writer = writer
        self._ws = ws
        self._lock = asyncio.Lock()

    async def send(self, data: bytes) -> None:
        """Bytes the connection already framed (control frames, answers it owes)."""
        if data:
            async with self._lock:
                self._writer.write(data)
                await self._writer.drain()

    async def send_stream(self, data: bytes) -> None:
        """Bytes of a stream, as messages of at most :data:`MAX_MESSAGE` (none for b"")."""
        view = memoryview(data)
        frames = b"".join(
            self._ws.send_data(bytes(view[offset : offset + MAX_MESSAGE]))
            for offset in range(0, len(data), MAX_MESSAGE)
        )
        await self.send(frames)

    async def send_message(self, data: bytes) -> None:
        """One message that must arrive whole (a datagram, or the empty end-of-stream one);
        :class:`MessageTooLarge` past :data:`MAX_MESSAGE`."""
        if len(data) > MAX_MESSAGE:
            raise MessageTooLarge(
                f"a message of {len(data)} bytes is larger than the {MAX_MESSAGE} bytes "
                "cloudflared carries intact"
            )
        await self.send(self._ws.send_data(data))

    async def send_close(self, code: int, reason: str = "") -> None:
        """Our Close (nothing when one was sent already)."""
        await self.send(self._ws.send_close(code, reason))

    async def flush(self) -> None:
        """What the connection owes the peer (pongs, the Close reply)."""
        await self.send(self._ws.data_to_send())
