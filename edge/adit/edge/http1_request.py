"""HTTP/1.1 requests as the edge reads them: sans-IO, bytes in, events out.

llhttp (through httptools) parses, in its strict mode: requests with both Content-Length and
Transfer-Encoding, duplicate Content-Lengths, a Transfer-Encoding other than ``chunked`` or a
bad chunk size are rejected (no lenient flag is set). What llhttp lets through and HTTP does
not allow on the way to an origin (see the class) is refused here; ``tests/fuzz`` holds the
parser to h11's reading of every request, split across reads at every byte.
"""

from __future__ import annotations

from collections import deque

import httptools

__all__ = [
    "MAX_HEADER_BYTES",
    "BadRequest",
    "HeadersTooLarge",
    "Request",
    "RequestParser",
    "RequestTimeout",
]

#: Request line plus headers; beyond this the edge answers 431 and closes.
MAX_HEADER_BYTES = 64 * 1024


class BadRequest(Exception):
    """The request is malformed (the edge answers 400 and closes)."""


class HeadersTooLarge(BadRequest):
    """The request's head exceeds :data:`MAX_HEADER_BYTES`."""


class RequestTimeout(BadRequest):
    """The client was too slow sending its request (the edge answers 408 and closes)."""


# The lengths of the request header names the parser notes: Host, Expect, Content-Length,
# Transfer-Encoding.
_NOTED_LENGTHS = frozenset({4, 6, 14, 17})
_NOT_TRAILERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
_OWS = b" \t"
_VERSIONS = frozenset({"1.1", "1.0"})


class Request:
    """One request's head as the parser saw it; header names and values are raw bytes."""

    __slots__ = (
        "expect_continue",
        "has_body",
        "headers",
        "host",
        "http_version",
        "keep_alive",
        "method",
        "target",
        "upgrade",
    )

    def __init__(self) -> None:
        self.method = b"GET"
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        #: The Host header's value (``b""`` without one).
        self.host = b""
        self.http_version = "1.1"
        self.keep_alive = False
        self.expect_continue = False
        self.has_body = False
        #: llhttp stopped after this head (Connection: upgrade or CONNECT); what follows is
        #: raw bytes if the handler switches protocols.
        self.upgrade = False


class RequestParser:
    """Sans-IO request parser: bytes in, :attr:`events` out.

    Events, in order: a :class:`Request` when its head is complete, ``bytes`` body chunks,
    then ``b""`` when that request's message ended. After an upgrade request the parser stops
    and :attr:`after_upgrade` holds the bytes that followed the head.
    """

    def __init__(self) -> None:
        self.events: deque[Request | bytes] = deque()
        self.after_upgrade: bytes | None = None
        self.in_message = False
        self._parser = httptools.HttpRequestParser(self)
        self._request = Request()
        self._url: list[bytes] = []
        self._in_head = False
        self._head_size = 0
        self._head_counted_by_callbacks = True
        self._messages = 0
        self._has_host = False
        self._tail = b""
        # Bytes read inside a body without a body byte or the message's end coming of them:
        # chunk framing and trailers. httptools buffers a trailer line whole, copying it on
        # every read, so the trailer section is bounded like a head.
        self._stalled = 0
        self._progress = False

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises :class:`BadRequest` or :class:`HeadersTooLarge`."""
        # llhttp has no head limit. A head that ends in the read it began in is measured by
        # its callbacks; one that spans reads is measured here, by where it ends.
        spanning = self._in_head
        if spanning:
            self._head_size += self._head_part(data)
            if self._head_size > MAX_HEADER_BYTES:
                raise HeadersTooLarge("request head too large")
            self._head_counted_by_callbacks = False
        message = self._messages
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, BadRequest):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise BadRequest(str(exc)) from exc
        if not self._in_head:
            if self.in_message and not self._progress:
                self._stalled += len(data)
                if self._stalled > MAX_HEADER_BYTES:
                    raise HeadersTooLarge("request trailers too large")
            return
        # Where the next read's bytes may complete this head's end.
        self._tail = data[-3:]
        if not spanning or message != self._messages:
            # A head began in this read and is still open: it is at most what follows the
            # last head end here (more only after a pipelined body, which is rare).
            end = data.rfind(b"\r\n\r\n")
            begun = len(data) - (end + 4 if end >= 0 else 0)
            self._head_size = max(self._head_size, begun)
            if self._head_size > MAX_HEADER_BYTES:
                raise HeadersTooLarge("request head too large")

    def _head_part(self, data: bytes) -> int:
        """How much of ``data`` belongs to the open head (its end may straddle reads)."""
        joint = (self._tail + data[:3]).find(b"\r\n\r\n")
        if joint >= 0:
            return joint + 4 - len(self._tail)
        end = data.find(b"\r\n\r\n")
        return end + 4 if end >= 0 else len(data)

    def resume(self) -> None:
        """Parse on after an upgrade request the handler did not switch protocols for."""
        pending, self.after_upgrade = self.after_upgrade, None
        self._parser = httptools.HttpRequestParser(self)
        if pending:
            self.feed(pending)

    def _upgraded(self, rest: bytes) -> None:
        self._request.upgrade = True
        self.after_upgrade = rest
        self.in_message = False

    # -- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """llhttp: a request starts."""
        self._request = Request()
        self._url = []
        self._in_head = True
        self._head_size = 0
        self._head_counted_by_callbacks = True
        self._messages += 1
        self._has_host = False
        self._stalled = 0
        self.in_message = True

    def on_url(self, url: bytes) -> None:
        """llhttp: (part of) the request target."""
        self._url.append(url)
        if self._head_counted_by_callbacks:
            self._head_size += len(url) + 16

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp: one complete header (or trailer) line."""
        if value and value[-1] in _OWS:
            # RFC 9112 §5: OWS is not part of the value; llhttp strips only the leading OWS.
            value = value.rstrip(_OWS)
        if not self._in_head:
            self._on_trailer(name)
            return
        request = self._request
        request.headers.append((name, value))
        if self._head_counted_by_callbacks:
            self._head_size += len(name) + len(value) + 4
            if self._head_size > MAX_HEADER_BYTES:
                raise HeadersTooLarge("request head too large")
        if len(name) not in _NOTED_LENGTHS:
            return  # most headers: not one the edge looks at (no lower-casing them)
        lowered = name.lower()
        if lowered == b"host":
            if self._has_host:
                raise BadRequest("more than one Host header")
            self._has_host = True
            request.host = value
        elif lowered == b"content-length":
            request.has_body = bool(value.lstrip(b"0"))  # llhttp took only digits
        elif lowered == b"transfer-encoding":
            # llhttp takes any list ending in chunked ("gzip, chunked"): the edge decodes no
            # other coding, so it would forward a body it has not understood (RFC 9112 §6.1).
            if value.lower() != b"chunked":
                raise BadRequest("a Transfer-Encoding other than chunked")
            request.has_body = True
        elif lowered == b"expect":
            request.expect_continue = value.lower() == b"100-continue"

    def _on_trailer(self, name: bytes) -> None:
        # Trailers go nowhere: the request's head was forwarded at its end. Fields that frame
        # or route a message may not be trailers (RFC 9110 §6.5.1).
        if len(name) in _NOTED_LENGTHS and name.lower() in _NOT_TRAILERS:
            raise BadRequest(f"a {name.decode('latin-1')} trailer")

    def on_headers_complete(self) -> None:
        """llhttp: the head is complete."""
        self._in_head = False
        self._progress = True
        self._stalled = 0
        request = self._request
        parser = self._parser
        request.method = parser.get_method()
        request.target = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        if request.http_version not in _VERSIONS:
            # llhttp also takes HTTP/0.9 (a bare "GET /") and 2.0 in HTTP/1 framing.
            raise BadRequest(f"HTTP/{request.http_version} is not spoken here")
        if request.http_version == "1.1" and not self._has_host:
            raise BadRequest("HTTP/1.1 request without Host")
        if request.has_body and parser.should_upgrade():
            # llhttp stops before such a body; parsing it as the next request would let a
            # body smuggle requests past a proxy in front of us. Refused before the request
            # is passed on, so it is not served either.
            raise BadRequest("an upgrade request with a body")
        self.events.append(request)

    def on_body(self, body: bytes) -> None:
        """llhttp: a piece of the body (chunk framing already removed)."""
        self._progress = True
        self._stalled = 0
        if body:  # an empty piece (a read of nothing) would read as the message's end
            self.events.append(body)

    def on_message_complete(self) -> None:
        """llhttp: the request ended."""
        self._progress = True
        self.in_message = False
        self.events.append(b"")
