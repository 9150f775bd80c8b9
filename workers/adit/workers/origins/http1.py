"""One HTTP/1.1 client connection to an origin: h11 (sans-IO) driven by asyncio streams.

h11 keeps the request and response halves separately, so one task may stream the request
body while another reads the response, as Go's Transport does. Header names and values
travel as ``str`` holding latin-1 decoded bytes, so any byte sequence survives the trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h11

from adit.workers.errors import OriginProtocolError
from adit.workers.origins.dialer import READ_LIMIT

__all__ = ["MAX_RESPONSE_HEAD", "OriginConnection", "decode_headers", "encode_headers"]

# Go's Transport accepts response heads up to 1 MiB (MaxResponseHeaderBytes default).
MAX_RESPONSE_HEAD = 1 << 20


def encode_headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    """``str`` pairs to the bytes h11 sends; non-latin-1 text falls back to UTF-8."""
    return [(_encode(name), _encode(value)) for name, value in headers]


def decode_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Bytes pairs (original case, repeats kept) to ``str`` pairs, losslessly."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


def _encode(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


class OriginConnection:
    """An open connection to an origin, reusable for sequential requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._h11 = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.requests = 0  # requests started on this connection
        self.response_bytes_seen = False  # any byte of the current response arrived

    @property
    def reused(self) -> bool:
        """Whether the current request is not the first one on this connection."""
        return self.requests > 1

    @property
    def stale(self) -> bool:
        """The origin closed its side (or the transport is going away) while idle."""
        return self.reader.at_eof() or self.writer.is_closing()

    @property
    def reusable(self) -> bool:
        """Both halves of the exchange completed and neither side asked to close."""
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after a 101 response (the start of the upgraded protocol)."""
        return bytes(self._h11.trailing_data[0])

    def start_next_cycle(self) -> None:
        """Reset h11 for the next request; only valid when :attr:`reusable`."""
        self._h11.start_next_cycle()

    async def send(self, event: h11.Event) -> None:
        """Serialise ``event`` and write it, waiting for the socket to drain."""
        try:
            data = self._h11.send(event)
        except h11.LocalProtocolError as exc:
            raise OriginProtocolError(f"invalid request for the origin: {exc}") from exc
        if isinstance(event, h11.Request):
            self.requests += 1
            self.response_bytes_seen = False
        if data:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except OSError as exc:
                raise OriginProtocolError(f"write to origin failed: {exc}") from exc

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next event from the origin; reads from the socket as needed."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise OriginProtocolError(f"malformed response from origin: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    data = await self.reader.read(READ_LIMIT)
                except OSError as exc:
                    raise OriginProtocolError(f"read from origin failed: {exc}") from exc
                if data:
                    self.response_bytes_seen = True
                self._h11.receive_data(data)
                continue
            if event is h11.PAUSED:
                return h11.PAUSED
            assert isinstance(event, h11.Event)
            return event

    async def receive_response(self) -> h11.Response | h11.InformationalResponse:
        """The next response head (1xx included); the caller skips what it does not need."""
        event = await self.next_event()
        if isinstance(event, h11.Response | h11.InformationalResponse):
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise OriginProtocolError("origin closed the connection before responding")
        raise OriginProtocolError(f"unexpected event from origin: {event!r}")

    async def body(self) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk as it arrives; ends at the end of the message."""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise OriginProtocolError(f"unexpected event in response body: {event!r}")

    def close(self) -> None:
        """Close the socket without waiting (safe to call twice)."""
        self.writer.close()
