"""HTTP/2 to an origin (``http2Origin: true``), over TLS with ALPN ``h2``.

cloudflared's ``http2Origin`` makes Go's Transport offer ``h2``; when the origin picks it, the
request goes over HTTP/2, else HTTP/1.1 is used as usual. Here one :class:`H2OriginConnection`
carries one request at a time and is pooled for reuse between requests, like an HTTP/1.1
connection; ``h2`` (sans-IO) does the framing and a reader task feeds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from adit.workers.errors import OriginProtocolError
from adit.workers.origins.dialer import READ_LIMIT

__all__ = ["H2OriginConnection", "h2_request_headers"]

# RFC 9113 §8.2.2: connection-specific fields must not appear in HTTP/2.
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}
)


def h2_request_headers(
    method: str, target: str, authority: str, headers: tuple[tuple[str, str], ...]
) -> list[tuple[str, str]]:
    """Pseudo-headers first, then the fields allowed in HTTP/2, names lower-cased."""
    out = [
        (":method", method),
        (":scheme", "https"),
        (":authority", authority),
        (":path", target),
    ]
    for name, value in headers:
        lowered = name.lower()
        if lowered in _CONNECTION_SPECIFIC:
            continue
        if lowered == "te" and value.strip().lower() != "trailers":
            continue
        out.append((lowered, value))
    return out


class H2OriginConnection:
    """A client HTTP/2 connection to an origin, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._h2.initiate_connection()
        self._events: asyncio.Queue[h2.events.Event | BaseException] = asyncio.Queue()
        self._window = asyncio.Event()
        self._closed = False
        self._stream_id: int | None = None
        self._pending_end = False  # the response head also ended the stream
        self._reader_task = asyncio.create_task(self._read_loop())
        self.requests = 0

    @property
    def stale(self) -> bool:
        """The origin went away or said GOAWAY."""
        return self._closed or self.writer.is_closing()

    async def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except OSError as exc:
                raise OriginProtocolError(f"write to origin failed: {exc}") from exc

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(READ_LIMIT):
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    raise OriginProtocolError(f"origin broke HTTP/2: {exc}") from exc
                for event in events:
                    if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                        self._window.set()
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self._closed = True
                    self._events.put_nowait(event)
                await self._flush()
            raise OriginProtocolError("origin closed the HTTP/2 connection")
        except (OriginProtocolError, OSError) as exc:
            self._closed = True
            self._events.put_nowait(exc)
            self._window.set()

    async def _next_event(self) -> h2.events.Event:
        item = await self._events.get()
        if isinstance(item, BaseException):
            self._events.put_nowait(item)  # every later waiter fails too
            raise item if isinstance(item, OriginProtocolError) else OriginProtocolError(str(item))
        return item

    async def send_request(self, headers: list[tuple[str, str]], *, end_stream: bool) -> None:
        """Open the request stream."""
        if self._closed:
            raise OriginProtocolError("HTTP/2 connection to the origin is closed")
        stream_id = self._h2.get_next_available_stream_id()
        self._stream_id = stream_id
        self.requests += 1
        self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        await self._flush()

    async def send_body(self, chunks: AsyncIterator[bytes]) -> None:
        """Send the request body within the origin's flow-control windows, then END_STREAM."""
        stream_id = self._require_stream()
        async for chunk in chunks:
            view = memoryview(chunk)
            while view:
                window = min(
                    self._h2.local_flow_control_window(stream_id),
                    self._h2.max_outbound_frame_size,
                )
                if window <= 0:
                    self._window.clear()
                    await self._window.wait()
                    if self._closed:
                        raise OriginProtocolError("HTTP/2 connection to the origin closed")
                    continue
                self._h2.send_data(stream_id, bytes(view[:window]))
                view = view[window:]
                await self._flush()
        self._h2.end_stream(stream_id)
        await self._flush()

    def _require_stream(self) -> int:
        if self._stream_id is None:
            raise OriginProtocolError("no request in flight")
        return self._stream_id

    async def receive_response(self) -> tuple[int, list[tuple[str, str]]]:
        """The final response status and headers (1xx skipped)."""
        stream_id = self._require_stream()
        while True:
            event = await self._next_event()
            if getattr(event, "stream_id", stream_id) != stream_id:
                continue
            if isinstance(event, h2.events.StreamReset):
                raise OriginProtocolError(f"origin reset the stream ({event.error_code!r})")
            if isinstance(event, h2.events.ResponseReceived):
                status = 0
                headers: list[tuple[str, str]] = []
                for raw_name, raw_value in event.headers or []:
                    name = _text(raw_name)
                    value = _text(raw_value)
                    if name == ":status":
                        status = int(value)
                    elif not name.startswith(":"):
                        headers.append((name, value))
                if status >= 200:
                    self._pending_end = bool(event.stream_ended)
                    return status, headers

    async def body(self) -> AsyncIterator[bytes]:
        """The response body as it arrives; returns at END_STREAM."""
        stream_id = self._require_stream()
        if self._pending_end:
            self._stream_id = None
            return
        while True:
            event = await self._next_event()
            if getattr(event, "stream_id", stream_id) != stream_id:
                continue
            if isinstance(event, h2.events.DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                await self._flush()
                if event.data:
                    yield bytes(event.data)
                if event.stream_ended:
                    break
            elif isinstance(event, h2.events.StreamEnded):
                break
            elif isinstance(event, h2.events.StreamReset):
                raise OriginProtocolError(f"origin reset the stream ({event.error_code!r})")
        self._stream_id = None

    @property
    def reusable(self) -> bool:
        """No request in flight and the connection is healthy."""
        return self._stream_id is None and not self.stale

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        self._closed = True
        self._reader_task.cancel()
        with contextlib.suppress(Exception):
            self._h2.close_connection()
            self.writer.write(self._h2.data_to_send())
        self.writer.close()


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
