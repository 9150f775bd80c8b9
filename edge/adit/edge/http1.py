"""HTTP/1.1 plumbing on asyncio streams with h11: what the public and API listeners share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import h11

__all__ = [
    "MAX_HEADER_BYTES",
    "H11Connection",
    "HeadersTooLarge",
    "reason_phrase",
    "serve_connection",
]

log = logging.getLogger("adit.edge.http")

#: Request line plus headers; beyond this the edge answers 431 and closes.
MAX_HEADER_BYTES = 64 * 1024
READ_SIZE = 256 * 1024


#: Cloudflare's own codes that HTTP has no phrase for.
_EXTRA_REASONS = {530: b"Origin Unreachable"}


def reason_phrase(status: int) -> bytes:
    """The reason phrase for a status line (empty when unknown, as HTTP allows)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return _EXTRA_REASONS.get(status, b"")


class HeadersTooLarge(Exception):
    """The request's head exceeds :data:`MAX_HEADER_BYTES`."""


class H11Connection:
    """One server-side HTTP/1.1 connection: h11 state plus the stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._held: list[bytes] = []

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """The next h11 event, reading from the socket as needed.

        Raises :class:`HeadersTooLarge` or ``h11.RemoteProtocolError`` on bad input.
        """
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                if "exceeds" in str(exc) or "too long" in str(exc).lower():
                    raise HeadersTooLarge(str(exc)) from exc
                raise
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_SIZE)
            self.h11.receive_data(data)
            if not data and self.h11.their_state is h11.IDLE:
                return h11.ConnectionClosed()

    async def send(self, event: h11.Event, *, flush: bool = True) -> None:
        """Serialise and write an event, honouring the socket's back-pressure.

        With ``flush=False`` the bytes are held and go out with the next flushing send: a
        small response then costs one write instead of three (head, body, end). Bodies are
        passed through as they are, never joined into a new buffer.
        """
        parts = self.h11.send_with_data_passthrough(event)
        if parts:
            self._held.extend(parts)
        if flush and self._held:
            held, self._held = self._held, []
            if len(held) == 1:
                self.writer.write(held[0])
            else:
                self.writer.writelines(held)
            await self.writer.drain()

    async def respond_simple(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """A complete small response."""
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *extra,
        ]
        await self.send(
            h11.Response(status_code=status, headers=headers, reason=reason_phrase(status)),
            flush=False,
        )
        await self.send(h11.Data(data=body), flush=False)
        await self.send(h11.EndOfMessage())

    def can_continue(self) -> bool:
        """Whether the connection may serve another request (keep-alive)."""
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def start_next_cycle(self) -> None:
        """Reset for the next request on this connection."""
        self.h11.start_next_cycle()

    async def close(self) -> None:
        """Close the socket, ignoring a peer that is already gone."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: Callable[[H11Connection, h11.Request], Awaitable[bool]],
    on_bad_request: Callable[[H11Connection, Exception], Awaitable[None]],
) -> None:
    """Serve requests on one connection until it closes; ``handle`` returns keep-alive."""
    conn = H11Connection(reader, writer)
    try:
        while True:
            try:
                event = await conn.next_event()
            except (h11.RemoteProtocolError, HeadersTooLarge) as exc:
                if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await on_bad_request(conn, exc)
                break
            if not isinstance(event, h11.Request):
                break
            if not await handle(conn, event):
                break
            # A body-less request still owes h11 its EndOfMessage (no bytes needed): without
            # it the request never reaches DONE and keep-alive would end after one request.
            while conn.h11.their_state is h11.SEND_BODY:
                pending = await conn.next_event()
                if isinstance(pending, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            if not conn.can_continue():
                break
            conn.start_next_cycle()
    except (ConnectionError, OSError, asyncio.IncompleteReadError, h11.LocalProtocolError):
        pass
    except Exception:
        # A bug in one request's handling must cost that connection, never the listener.
        log.exception("request handling failed")
    finally:
        await conn.close()
