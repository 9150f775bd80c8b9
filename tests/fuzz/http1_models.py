"""Two readings of the same request bytes: the edge's (:class:`RequestParser`, llhttp) and h11's.

Each reading is a :class:`Reading`: the messages it completed, the one in progress when the
bytes ran out, and how it ended (needs more bytes, refused, or switched protocols). The fuzz
tests compare the two readings, with every deliberate difference written down here as an entry
of :data:`REFUSALS` (the edge refuses what h11 accepts) or :data:`LENIENCIES` (the two things
llhttp accepts that h11 refuses, and why they are harmless and cannot be refused inside
``RequestParser``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from adit.edge.http1_request import BadRequest, Request, RequestParser

__all__ = [
    "LENIENCIES",
    "REFUSALS",
    "End",
    "Message",
    "Reading",
    "Refusal",
    "edge_reading",
    "h11_reading",
]

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Message:
    """One request as a parser saw it (header names as sent, values without OWS)."""

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    body: bytes = b""

    def with_body(self, more: bytes) -> Message:
        return Message(self.method, self.target, self.version, self.headers, self.body + more)


class End(enum.Enum):
    """How a reading stopped."""

    MORE = "needs more bytes"
    REFUSED = "refused the bytes"
    SWITCHED = "stopped after an upgrade request"


@dataclass
class Reading:
    """What one parser made of the input."""

    messages: list[Message] = field(default_factory=list)
    partial: Message | None = None  # a head is complete, its body is not
    end: End = End.MORE
    after_switch: bytes = b""  # the bytes following an upgrade request's head
    raw: list[bytes] = field(default_factory=list)  # h11 only: each message's bytes
    rest: bytes = b""  # h11 only: the bytes after the last complete message

    def progress(self) -> tuple[int, bool, int]:
        """How far the reading got: complete messages, the next one's head, its body."""
        partial = self.partial
        return (len(self.messages), partial is not None, len(partial.body) if partial else 0)


def _normalised(headers: Headers) -> Headers:
    # h11 lower-cases the Transfer-Encoding value it checks; compare codings case-blind.
    return tuple(
        (name, value.lower() if name.lower() == b"transfer-encoding" else value)
        for name, value in headers
    )


# -- the edge's reading ------------------------------------------------------------------------


def edge_reading(pieces: list[bytes]) -> Reading:
    """Feed ``pieces`` to a :class:`RequestParser` as successive reads."""
    parser = RequestParser()
    reading = Reading()
    for piece in pieces:
        if parser.after_upgrade is not None:
            parser.after_upgrade += piece
            continue
        try:
            parser.feed(piece)
        except BadRequest:
            reading.end = End.REFUSED
        _take(parser, reading)
        if reading.end is End.REFUSED:
            return reading
    if parser.after_upgrade is not None:
        reading.end = End.SWITCHED
        reading.after_switch = parser.after_upgrade
    return reading


def _take(parser: RequestParser, reading: Reading) -> None:
    while parser.events:
        event = parser.events.popleft()
        if isinstance(event, Request):
            headers = tuple(event.headers)
            version = event.http_version.encode()
            reading.partial = Message(event.method, event.target, version, _normalised(headers))
        elif event:
            assert reading.partial is not None
            reading.partial = reading.partial.with_body(event)
        else:
            assert reading.partial is not None
            reading.messages.append(reading.partial)
            reading.partial = None


# -- h11's reading -------------------------------------------------------------------------------

_LEADING_EMPTY_LINES = re.compile(rb"[\r\n]+")
_REQUEST_LINE_SPACES = re.compile(rb"([^ \r\n]+) +([^ \r\n]+) +(HTTP/)")


def h11_reading(data: bytes) -> Reading:
    """h11's reading, one fresh ``h11.Connection`` per request, with the two leniencies
    applied to the bytes before each request line (see :data:`LENIENCIES`)."""
    reading = Reading()
    rest = data
    while rest:
        rest = _lenient(rest)
        reading.rest = rest
        if not rest:
            break
        consumed, done = _one_request(rest, reading)
        if not done:
            return reading
        reading.raw.append(rest[:consumed])
        message = reading.messages[-1]
        if reading.end is End.SWITCHED:
            return reading
        if not _keeps_alive(message):
            if _lenient(rest[consumed:]):
                reading.end = End.REFUSED  # h11: "Got data when expecting EOF"
            return reading
        rest = rest[consumed:]
        reading.rest = rest
    return reading


def _lenient(data: bytes) -> bytes:
    """The bytes as h11 would see them if it had llhttp's two leniencies."""
    start = _LEADING_EMPTY_LINES.match(data)
    if start:
        data = data[start.end() :]
    line_end = data.find(b"\n")
    line = data if line_end < 0 else data[:line_end]
    return _REQUEST_LINE_SPACES.sub(rb"\1 \2 \3", line, count=1) + (
        b"" if line_end < 0 else data[line_end:]
    )


def _keeps_alive(message: Message) -> bool:
    """llhttp's rule (RFC 9112 §9.3), which h11 shares but for HTTP/1.0 keep-alive."""
    tokens = b",".join(v for n, v in message.headers if n.lower() == b"connection").lower()
    options = {token.strip() for token in tokens.split(b",")}
    if message.version == b"1.0":
        return b"keep-alive" in options
    return b"close" not in options


def _switches(message: Message) -> bool:
    """Whether a server may switch protocols after this request (RFC 9110 §7.8, §9.3.6).

    h11 proposes a switch on any ``Upgrade`` header and lets the server decline; a switch
    needs ``upgrade`` among the Connection options too, and only then does llhttp stop.
    """
    if message.method == b"CONNECT":
        return True
    options = b",".join(_header(message, b"connection")).lower().split(b",")
    return bool(_header(message, b"upgrade")) and b"upgrade" in {o.strip() for o in options}


def _one_request(data: bytes, reading: Reading) -> tuple[int, bool]:
    """Parse the request at the start of ``data``; (bytes it took, whether it completed)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    current: Message | None = None
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                reading.partial = current
                return 0, False
            if isinstance(event, h11.Request):
                headers = tuple((bytes(n), bytes(v)) for n, v in event.headers.raw_items())
                current = Message(
                    bytes(event.method), bytes(event.target), bytes(event.http_version), headers
                )
                reading.partial = current
            elif isinstance(event, h11.Data):
                assert current is not None
                current = current.with_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                reading.messages.append(current)
                reading.partial = None
                left = conn.trailing_data[0]
                if _switches(current):
                    reading.end = End.SWITCHED
                    reading.after_switch = bytes(left)
                return len(data) - len(left), True
            else:
                raise AssertionError(f"unexpected h11 event {event!r}")
    except h11.RemoteProtocolError:
        reading.end = End.REFUSED
        return 0, False


# -- the documented differences --------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A deliberate difference: the edge refuses a request h11 would accept.

    ``applies`` is given the refused request's bytes (as far as h11 read them) and h11's
    reading of it, or ``None`` when h11 did not complete it.
    """

    name: str
    why: str
    applies: Callable[[bytes, Message | None], bool]


def _header(message: Message | None, name: bytes) -> list[bytes]:
    if message is None:
        return []
    return [v for n, v in message.headers if n.lower() == name]


def _head(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 4]


def _field_lines(raw: bytes) -> bytes:
    """The head and, for a chunked body, the trailer section: where field lines are."""
    last_chunk = raw.rfind(b"\n0\r\n")
    return _head(raw) + (raw[last_chunk:] if last_chunk >= 0 else b"")


_LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_CHUNK_LINE_WHITESPACE = re.compile(rb"\n[0-9A-Fa-f]+[ \t]")
_OBS_FOLD = re.compile(rb"\n[ \t]")
_BARE_LF = re.compile(rb"(?<!\r)\n")

REFUSALS: list[Refusal] = [
    Refusal(
        "content-length with transfer-encoding",
        "RFC 9112 §6.1 lets a server refuse it; it is the CL.TE/TE.CL smuggling pair, so "
        "llhttp's strict mode does (h11 ignores Content-Length).",
        lambda raw, m: (
            b"content-length" in _field_lines(raw).lower()
            and b"transfer-encoding" in _field_lines(raw).lower()
        ),
    ),
    Refusal(
        "repeated content-length",
        "`Content-Length: 5` twice, or `5, 5`: RFC 9110 §8.6 lets a recipient either merge "
        "identical values (h11) or refuse (llhttp). Refusing leaves no room for a proxy in "
        "front of us to have read them otherwise.",
        lambda raw, m: (
            _head(raw).lower().count(b"content-length") > 1
            or bool(re.search(rb"(?i)content-length:[^\n]*,", _head(raw)))
        ),
    ),
    Refusal(
        "obsolete line folding",
        "RFC 9112 §5.2: a server may refuse obs-fold with 400 (h11 unfolds it).",
        lambda raw, m: bool(_OBS_FOLD.search(_field_lines(raw))),
    ),
    Refusal(
        "a bare LF ending a line",
        "RFC 9112 §2.2: a recipient MAY take LF alone as a line end (h11 does); llhttp "
        "requires CRLF, so a CR cannot be read one way here and another way in front.",
        lambda raw, m: bool(_BARE_LF.search(raw)),
    ),
    Refusal(
        "whitespace after a chunk size",
        "`5 \\r\\n`: h11 takes whitespace before the line end; llhttp refuses it (a chunk "
        "size is hex digits, extensions start with `;`).",
        lambda raw, m: bool(_CHUNK_LINE_WHITESPACE.search(raw)),
    ),
    Refusal(
        "a chunk size beyond 64 bits",
        "llhttp refuses a chunk size that overflows 64 bits; h11 takes up to 20 hex digits "
        "and would wait for exabytes.",
        lambda raw, m: any(
            int(size, 16) >= 2**64 for size in re.findall(rb"\n([0-9A-Fa-f]{17,})", raw)
        ),
    ),
    Refusal(
        "a content-length beyond 64 bits",
        "llhttp refuses a Content-Length that overflows 64 bits (a body no client sends); h11 "
        "takes any number of digits and would wait for that many bytes.",
        lambda raw, m: any(
            int(value) >= 2**64
            for value in re.findall(rb"(?im)^content-length:[ \t]*([0-9]{20,})", _head(raw))
        ),
    ),
    Refusal(
        "a method llhttp does not know",
        "llhttp parses the registered methods only (case-sensitive); h11 takes any token.",
        lambda raw, m: (
            (m.method if m is not None else raw.split(b" ", 1)[0]) not in _LLHTTP_METHODS
        ),
    ),
    Refusal(
        "a target in no request-target form",
        "llhttp requires origin-form, absolute-form, authority-form (CONNECT) or `*`; h11 "
        "takes any visible characters (`GET a HTTP/1.1`).",
        lambda raw, m: m is not None and not m.target.startswith((b"/", b"*")),
    ),
    Refusal(
        "an HTTP version other than 1.0 and 1.1",
        "h11 takes any digit.digit; the edge speaks HTTP/1.0 and 1.1 on this listener "
        "(RFC 9112 §2.5; 0.9 has no headers, 2.0 is not spoken in HTTP/1.1 framing).",
        lambda raw, m: m is not None and m.version not in (b"1.0", b"1.1"),
    ),
    Refusal(
        "DEL in a header value",
        "RFC 9110 §5.5: field values are VCHAR, SP, HTAB and obs-text; DEL is none of them "
        "(h11 lets it through, llhttp refuses it).",
        lambda raw, m: b"\x7f" in _head(raw),
    ),
    Refusal(
        "an upgrade request with a body",
        "The edge refuses it (RequestParser): the body would otherwise be parsed as the next "
        "request once the upgrade is declined, letting it smuggle one.",
        lambda raw, m: (
            m is not None
            and (
                m.method == b"CONNECT"
                or (
                    bool(_header(m, b"upgrade"))
                    and b"upgrade" in b",".join(_header(m, b"connection")).lower()
                )
            )
            and bool(m.body or _header(m, b"transfer-encoding") or _header(m, b"content-length"))
        ),
    ),
    Refusal(
        "framing or routing fields in trailers",
        "RFC 9110 §6.5.1: trailers may not carry Content-Length, Transfer-Encoding or Host; "
        "the edge refuses them, h11 accepts valid ones.",
        lambda raw, m: bool(
            re.search(rb"(?i)\r\n0\r\n(.*\r\n)*(host|content-length|transfer-encoding):", raw)
        ),
    ),
]

LENIENCIES = {
    "empty lines before a request line": (
        "RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request-line; "
        "llhttp skips CR and LF bytes there, h11 refuses them. They lie between messages, so "
        "no message ends anywhere else because of them."
    ),
    "several spaces between request-line parts": (
        "RFC 9112 §3: recipients MAY split the request-line on whitespace runs; llhttp takes "
        "runs of SP, h11 only single SP. Method, target and version come out the same and "
        "where the message ends does not change."
    ),
    "why these two cannot be refused in RequestParser": (
        "llhttp reports neither, and httptools exposes no byte offsets (only for an upgrade), "
        "so the parser cannot tell where in a read a pipelined request line began. Refusing "
        "them only where a request starts a read would make the result depend on how the "
        "bytes were split, which the split tests forbid."
    ),
}
