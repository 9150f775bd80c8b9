"""One HTTP/1.1 client connection to an origin: llhttp (httptools) on an asyncio protocol.

Requests are serialised here in one buffer (request line and headers), the body passed
through as it comes: as is under a Content-Length, in chunked framing when streamed without
one. Responses are parsed by llhttp; once a head says ``Content-Length`` (or the body runs to
the end of the connection) the body bytes bypass the parser and are handed on unchanged.

The request and response halves are independent, so one task may stream the request body
while another reads the response, as Go's Transport does. Header names and values travel as
``str`` holding latin-1 decoded bytes, so any byte sequence survives the trip.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence

import httptools
import msgspec

from adit.protocol.headers import wire_bytes
from adit.workers.errors import OriginProtocolError
from adit.workers.origins.dialer import READ_LIMIT, Early

__all__ = ["MAX_RESPONSE_HEAD", "OriginConnection", "OriginResponse", "serialise_request_head"]

# Go's Transport accepts response heads up to 1 MiB (MaxResponseHeaderBytes default).
MAX_RESPONSE_HEAD = 1 << 20
# Response bytes held for the tunnel before the origin socket stops being read.
_PAUSE_READING_AT = 2 * READ_LIMIT

_TCHARS = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# Header names joined by LF: one regex call checks them all (an LF inside a name is caught
# by counting line ends).
_NAMES = re.compile(f"{_TCHARS}(?:\n{_TCHARS})*")
_METHOD = re.compile(_TCHARS)
# Control bytes other than HTAB (CR and LF included: exactly one pair per line is allowed).
_CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")


def serialise_request_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The request line and header block, latin-1 (UTF-8 for text outside latin-1).

    Raises :class:`OriginProtocolError` for a method, target, name or value that would
    break the message framing (control characters, CR/LF, names that are not tokens).
    """
    if not _METHOD.fullmatch(method) or not _TARGET.fullmatch(target):
        raise OriginProtocolError(f"invalid request for the origin: {method} {target!r}")
    if headers and not _NAMES.fullmatch("\n".join([name for name, _ in headers])):
        raise OriginProtocolError("invalid request for the origin: illegal header name")
    text = "".join([f"{method} {target} HTTP/1.1\r\n", *[f"{n}: {v}\r\n" for n, v in headers]])
    data = wire_bytes(text)  # UTF-8 beyond latin-1: its sequences hold no byte below 0x80
    lines = len(headers) + 1
    controls = len(data) - len(data.translate(None, _CONTROLS))
    if controls != 2 * lines or data.count(b"\n") != lines or data.count(b"\r") != lines:
        raise OriginProtocolError("invalid request for the origin: illegal header value")
    return data + b"\r\n"


class OriginResponse(msgspec.Struct, frozen=True):
    """A final response head from the origin (or a ``101``).

    ``headers`` keep the origin's order, case and repeats, latin-1 decoded.
    """

    status: int
    headers: list[tuple[str, str]]


class _SkipBody(Exception):
    """Raised from llhttp's headers callback to stop at the end of a HEAD response's head."""


class _Response:
    """Parse state of one response; llhttp's callback target (its parser may serve the next)."""

    __slots__ = (
        "chunks",
        "complete",
        "extra",
        "head_done",
        "head_request",
        "head_size",
        "headers",
        "keep_alive",
        "parsed_whole",
        "parser",
        "raw",
        "remaining",
        "status",
        "trailing",
    )

    def __init__(self, head_request: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        # Go and h11 accept bare LF line ends from origins; llhttp only when told to.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self._start(head_request)

    def renew(self, head_request: bool) -> _Response:
        """The parse state for the next response on the connection.

        llhttp's parser is kept when it saw the whole previous message itself (a small
        response read in one piece): it then waits for the next one. Otherwise (a body passed
        through raw, a HEAD stopped early, an upgrade, an error) a fresh parser starts.
        """
        if not self.parsed_whole or self.extra or self.status == 101:
            return _Response(head_request)
        self._start(head_request)
        return self

    def release(self) -> None:
        """Drop the parser (and its reference back to this response): parsing is over."""
        del self.parser

    def _start(self, head_request: bool) -> None:
        self.parsed_whole = False  # llhttp itself reached the end of the message
        self.head_request = head_request
        self.headers: list[tuple[str, str]] = []
        self.status = 0
        self.head_done = False  # the final (or 101) head is parsed
        self.head_size = 0
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.extra = False  # bytes arrived after the end of the message
        self.raw = False  # body bytes bypass the parser
        self.remaining = -1  # body bytes still due when ``raw``; -1: until the connection ends
        self.trailing = b""

    # -- llhttp callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailers of a chunked body arrive here too, after the head: not forwarded (as Go).
        if not self.head_done:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.headers = []  # an interim response: the final one follows
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        if status == 101:
            return
        if self.head_request:
            self.complete = True
            raise _SkipBody
        if status in (204, 304):
            return
        length = -1
        coded = False
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == "content-length":
                length = int(value)  # llhttp has checked it is one decimal number
            elif len(name) == 17 and name.lower() == "transfer-encoding":
                last = value.rsplit(",", 1)[-1].strip().lower()
                coded = True if last == "chunked" else coded
        if not coded:
            self.raw = True  # llhttp still parses the body bytes already fed
            self.remaining = length
            if length == -1:
                self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        if self.remaining > 0:
            self.remaining -= len(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.parsed_whole = True

    # -- feeding -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data`` (or pass it through as body); raises :class:`OriginProtocolError`."""
        if self.complete:
            if self.status == 101:
                self.trailing += data  # the upgraded protocol's bytes, until the switch
            else:
                self.extra = True  # unsolicited bytes: the connection cannot be reused
            return
        if self.head_done:
            if self.raw:
                self._feed_raw(data)
                return
        else:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.trailing = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            # llhttp's callbacks may have completed the message meanwhile.
            complete = self.completed()
            if self.head_request and complete:
                # Stopped on purpose; anything after the blank line is not ours to read.
                self.extra = not data.endswith((b"\r\n\r\n", b"\n\n"))
                return
            if complete and self.status != 101:
                # Garbage after a complete response: the response stands, the connection not.
                self.extra = True
                return
            raise OriginProtocolError(f"malformed response from origin: {exc}") from exc
        if self.head_size > MAX_RESPONSE_HEAD and (
            # The bytes read so far exceed the limit; measure the head itself once complete.
            not self.head_done
            or sum(len(n) + len(v) + 4 for n, v in self.headers) > MAX_RESPONSE_HEAD
        ):
            raise OriginProtocolError(
                f"malformed response from origin: head larger than {MAX_RESPONSE_HEAD} bytes"
            )
        if self.raw and self.remaining == 0:
            self.complete = True

    def _feed_raw(self, data: bytes) -> None:
        self.parsed_whole = False  # the parser is left in the middle of this body
        if self.remaining < 0:
            self.chunks.append(data)
            return
        if len(data) < self.remaining:
            self.chunks.append(data)
            self.remaining -= len(data)
            return
        if len(data) > self.remaining:
            # More than the announced length: the connection cannot be trusted any more.
            self.extra = True
            data = data[: self.remaining]
        self.chunks.append(data)
        self.remaining = 0
        self.complete = True

    def completed(self) -> bool:
        """Whether the whole response has arrived."""
        return self.complete

    def feed_eof(self) -> None:
        """The origin closed its side; raises unless that ends the message."""
        if not self.head_done:
            raise OriginProtocolError("origin closed the connection in the middle of the response")
        if not self.complete:
            if not (self.raw and self.remaining < 0):
                raise OriginProtocolError(
                    "origin closed the connection before the response body was complete"
                )
            self.complete = True


class _Link(asyncio.Protocol):
    """The transport's callbacks, handed to the connection that owns it."""

    __slots__ = ("connection",)

    def __init__(self, connection: OriginConnection) -> None:
        self.connection = connection

    def data_received(self, data: bytes) -> None:
        self.connection._received(data)

    def eof_received(self) -> bool:
        self.connection._ended(None)
        return False  # HTTP/1.1 has nothing to send after the origin ended: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection._ended(exc)
        self.connection._lost = True
        self.connection._wake_writer()

    def pause_writing(self) -> None:
        self.connection._write_paused = True

    def resume_writing(self) -> None:
        self.connection._write_paused = False
        self.connection._wake_writer()


class OriginConnection:
    """An open connection to an origin, reusable for sequential requests.

    Built from the dialer's bare transport, it sets its own protocol on it: bytes from the
    socket go straight into llhttp (or, for a body of known length, straight to
    :meth:`body`), with no StreamReader, its buffer and its two copies per read.
    """

    def __init__(self, transport: asyncio.Transport, early: Early) -> None:
        self._transport = transport
        # Kept: Python 3.11's get_running_loop() makes a getpid() system call every time.
        self._loop = asyncio.get_running_loop()
        self.requests = 0  # requests started on this connection
        self.response_bytes_seen = False  # any byte of the current response arrived
        self._response = _Response(False)
        self._request_done = False
        self._body_left = 0  # bytes still due under a Content-Length
        self._chunked = False
        # The origin speaks only after a request: bytes before one (``early.data``) are
        # ignored, as they were when they sat unread in a StreamReader.
        self._eof = early.eof
        self._lost = early.lost
        self._error: OriginProtocolError | None = None
        self._interrupt: BaseException | None = None  # the request body failed
        self._waiter: asyncio.Future[None] | None = None
        #: Called instead of waking a waiter: the callback path's owner of the exchange.
        self.listener: Callable[[], None] | None = None
        self._buffered = 0  # response bytes received and not yet taken by body()
        self._read_paused = False
        self._write_paused = early.write_paused
        self._drain: asyncio.Future[None] | None = None
        self._transport.set_protocol(_Link(self))

    @property
    def reused(self) -> bool:
        """Whether the current request is not the first one on this connection."""
        return self.requests > 1

    @property
    def stale(self) -> bool:
        """The origin closed its side, sent bytes nobody asked for, or the transport is going."""
        return self._eof or self._response.extra or self._transport.is_closing()

    @property
    def reusable(self) -> bool:
        """Both halves of the exchange completed and neither side asked to close."""
        response = self._response
        return (
            self._request_done
            and response.complete
            and response.keep_alive
            and not response.extra
            and response.status != 101
        )

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after a 101 response (the start of the upgraded protocol)."""
        return self._response.trailing

    # -- the request ---------------------------------------------------------------------------

    async def send_request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        body: bytes = b"",
        content_length: int | None = None,
        chunked: bool = False,
        end: bool = True,
    ) -> None:
        """Write the request head, then ``body``, then (when ``end``) the end of the message.

        ``headers`` are sent as given and must carry the framing header the body needs:
        ``Content-Length`` (pass the same ``content_length``, which is enforced) or
        ``Transfer-Encoding: chunked`` (pass ``chunked``). With neither there is no body.
        """
        self.start_request(
            method,
            target,
            headers,
            body=body,
            content_length=content_length,
            chunked=chunked,
            end=end,
        )
        if self._write_paused or self._lost:
            await self._drained()  # (no coroutine frame for the usual request)

    def start_request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        body: bytes = b"",
        content_length: int | None = None,
        chunked: bool = False,
        end: bool = True,
    ) -> None:
        """:meth:`send_request` without the wait while the socket's buffer is full (the
        callback path's bodiless request: its head is all there is to write)."""
        head = serialise_request_head(method, target, headers)
        self.requests += 1
        self.response_bytes_seen = False
        self._response = self._response.renew(method == "HEAD")
        self._interrupt = None
        self._buffered = 0
        self._request_done = False
        self._chunked = chunked
        self._body_left = content_length if content_length is not None else 0
        if body:
            self._put(head, *self._frame(body), *self._ending(end))
        else:
            self._put(head, *self._ending(end))

    async def send_body(self, data: bytes) -> None:
        """Write a piece of the request body (framed as :meth:`send_request` announced)."""
        if data:
            self._put(*self._frame(data))
            if self._write_paused or self._lost:
                await self._drained()

    async def end_request(self) -> None:
        """Finish the request body."""
        await self._write(*self._ending(True))

    def _frame(self, data: bytes) -> tuple[bytes, ...]:
        if self._chunked:
            return (b"%x\r\n" % len(data), data, b"\r\n")
        if len(data) > self._body_left:
            raise OriginProtocolError("request body longer than its Content-Length")
        self._body_left -= len(data)
        return (data,)

    def _ending(self, end: bool) -> tuple[bytes, ...]:
        if not end:
            return ()
        if self._body_left:
            raise OriginProtocolError("request body shorter than its Content-Length")
        self._request_done = True
        return (b"0\r\n\r\n",) if self._chunked else ()

    async def _write(self, *parts: bytes) -> None:
        self._put(*parts)
        await self._drained()

    def _put(self, *parts: bytes) -> None:
        if self._lost or self._transport.is_closing():
            raise OriginProtocolError("write to origin failed: the connection is closed")
        try:
            if len(parts) == 1:
                self._transport.write(parts[0])
            elif parts:
                self._transport.writelines(parts)
        except OSError as exc:
            raise OriginProtocolError(f"write to origin failed: {exc}") from exc

    async def _drained(self) -> None:
        """Wait while the socket's buffer is above its high-water mark."""
        while self._write_paused and not self._lost:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self._lost:
            raise OriginProtocolError("write to origin failed: the connection is closed")

    def _wake_writer(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- the response --------------------------------------------------------------------------

    async def receive_response(self) -> OriginResponse:
        """The final response head (interim 1xx skipped), or a ``101``."""
        response = self._response
        while not response.head_done:
            if self._interrupt is not None:
                raise self._interrupt
            if self._error is not None:
                raise self._error
            if self._eof:
                if self.response_bytes_seen:
                    raise OriginProtocolError(
                        "origin closed the connection in the middle of the response head"
                    )
                raise OriginProtocolError("origin closed the connection before responding")
            await self._wait()
        return OriginResponse(response.status, response.headers)

    @property
    def failed(self) -> bool:
        """The response cannot complete: a parse or read error, or the origin ended its side
        before the whole response arrived (:meth:`receive_response` or :meth:`body` raises)."""
        return self._error is not None or (self._eof and not self._response.complete)

    @property
    def head_received(self) -> bool:
        """The final response head (or a 101) has arrived."""
        return self._response.head_done

    @property
    def complete_response(self) -> OriginResponse | None:
        """The response when it has wholly arrived (head and body) and is not a 101."""
        response = self._response
        if not response.complete or response.status == 101 or self._error is not None:
            return None
        return OriginResponse(response.status, response.headers)

    def interrupt(self, exc: BaseException) -> None:
        """Make :meth:`receive_response` raise ``exc`` unless the head is already in.

        For a request body sent by another task: when it fails, waiting for an answer to a
        request that will never be complete is pointless.
        """
        self._interrupt = exc
        self._wake()

    def whole_body(self, limit: int) -> bytes | None:
        """The whole body when the response is complete and at most ``limit`` bytes; else
        ``None`` (then read it with :meth:`body`)."""
        response = self._response
        if not response.complete:
            return None
        chunks = response.chunks
        if not chunks:
            return b""
        if len(chunks) == 1:
            whole = chunks[0]
        else:
            if sum(map(len, chunks)) > limit:
                return None
            whole = b"".join(chunks)
        if len(whole) > limit:
            return None
        response.chunks = []
        self._buffered = 0
        return whole

    async def body(self) -> AsyncIterator[bytes]:
        """The response body, chunk by chunk as it arrives; ends at the end of the message."""
        response = self._response
        while True:
            if response.chunks:
                chunks, response.chunks = response.chunks, []
                self._buffered = 0
                if self._read_paused:
                    self._read_paused = False
                    self._transport.resume_reading()
                for chunk in chunks:
                    yield chunk
                continue
            if response.complete:
                return
            if self._error is not None:
                raise self._error
            if self._eof:
                response.feed_eof()
                continue
            await self._wait()

    async def _wait(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self._transport.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self.listener is not None:
            self.listener()
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self.response_bytes_seen = True
        try:
            self._response.feed(data)
        except OriginProtocolError as exc:
            self._error = exc
        self._buffered += len(data)
        if self._buffered > _PAUSE_READING_AT and not self._read_paused:
            # The tunnel takes the body slower than the origin sends it: stop reading.
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def _ended(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None and not self._response.complete:
            self._error = OriginProtocolError(f"read from origin failed: {exc}")
        self._wake()

    # -- after a 101 ---------------------------------------------------------------------------

    def upgrade(self) -> tuple[asyncio.Transport, bool]:
        """The transport, for the upgraded protocol, and whether the origin already ended its
        side; bytes that came before are :attr:`trailing_data`.

        The caller sets its own protocol on the transport (see :func:`~.pipe.pipe`); reading
        resumes if the response had paused it.
        """
        if self._read_paused:
            self._read_paused = False
            self._transport.resume_reading()
        # llhttp's parser and the response refer to each other: a cycle that only the
        # collector would free, while a thousand WebSockets hold on. Freed now instead.
        self._response.release()
        return self._transport, self._eof

    def close(self) -> None:
        """Close the socket without waiting (safe to call twice)."""
        self._transport.close()
