"""HTTP/2 as the edge speaks it to visitors: sans-IO, bytes in, events out, bytes to send.

The ``h2`` library keeps the protocol's state (streams, HPACK, flow-control windows); this
module is the edge's policy on top of it, with no I/O (the listener, :mod:`adit.edge.h2_public`,
does that):

* what the edge advertises: at most :data:`MAX_CONCURRENT_STREAMS` streams at once, a
  :data:`STREAM_WINDOW` per stream and :data:`CONNECTION_WINDOW` for the connection (so a
  connection's unforwarded request bodies are bounded by it: a visitor's bytes are
  acknowledged only once the tunnel took them), header lists of at most
  :data:`~adit.edge.http1_request.MAX_HEADER_BYTES` (the HTTP/1.1 head limit), no
  server push, and extended CONNECT (RFC 8441, WebSocket over HTTP/2);
* the floods RFC 9113 leaves to implementations: h2 bounds a header block to 64
  CONTINUATION frames and its decoded size to the advertised list size (both a connection
  error), and refuses a stream beyond the advertised count and a window past 2^31-1 (a
  connection error); a visitor that resets streams faster than :data:`RESET_RATE` a second
  after a burst of :data:`RESET_BURST` (CVE-2023-44487, "rapid reset": each stream it opens
  costs the edge a tunnel stream and the origin a request, its reset costs the visitor
  nothing) gets GOAWAY ENHANCE_YOUR_CALM, and so does one that sends PING or SETTINGS frames
  past :data:`CONTROL_BURST`, then :data:`CONTROL_RATE` a second (each asks for an answer);
* requests as the HTTP/1.1 parser gives them (:class:`~adit.edge.http1_request.Request`), so
  routing, Access and the header policy see one shape: pseudo-headers become the method,
  target and host, cookie crumbs are joined (RFC 9113 §8.2.3);
* responses as HTTP/2 allows them: connection-specific headers are dropped (§8.2.2), names
  lower-cased, and a name or value HTTP/2 cannot carry is a :class:`ResponseError`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hyperframe.frame import GoAwayFrame

from adit.edge.http1 import ResponseError
from adit.edge.http1_request import MAX_HEADER_BYTES, Request
from adit.protocol.headers import HOP_BY_HOP
from adit.protocol.hpack_codec import (
    HpackDecoder,
    HpackError,
    HpackListTooLarge,
    PlainHpackEncoder,
)
from adit.protocol.rate_limit import TokenBucket

__all__ = [
    "CONNECTION_WINDOW",
    "CONTROL_BURST",
    "CONTROL_RATE",
    "MAX_CONCURRENT_STREAMS",
    "RESET_BURST",
    "RESET_RATE",
    "STREAM_WINDOW",
    "Closed",
    "RequestBody",
    "RequestEnded",
    "RequestHead",
    "StreamAborted",
    "VisitorH2",
    "WindowOpened",
]

#: Streams a visitor may have open at once (Cloudflare's edge advertises 256, nginx 128).
MAX_CONCURRENT_STREAMS = 128
#: Request body bytes a stream may have in flight before the tunnel took them.
STREAM_WINDOW = 256 * 1024
#: ...and all streams of a connection together (what one connection can make the edge hold).
CONNECTION_WINDOW = 1024 * 1024
#: Visitor resets a connection may make at once, then a second (Go's and nginx's fixes for
#: CVE-2023-44487 bound the same thing: work a visitor starts and cancels for free).
RESET_BURST = 200.0
RESET_RATE = 50.0
#: PING and SETTINGS frames a connection may send at once, then a second: each makes the edge
#: answer, and a browser sends a handful a minute.
CONTROL_BURST = 1000.0
CONTROL_RATE = 100.0
#: Bytes given to h2 at a time (a flood is stopped within one slice of its budget).
_SLICE = 16 * 1024

# RFC 9110 §5.6.2 tokens (lower-case: HTTP/2 field names are).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
# Besides the hop-by-hop set, HTTP/2 carries no "proxy-connection" (§8.2.2).
_CONNECTION_SPECIFIC = HOP_BY_HOP | {"proxy-connection", "keep-alive", "transfer-encoding"}


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A visitor's request head on ``stream_id``; ``ended``: it has no body; ``protocol``:
    an extended CONNECT's ``:protocol`` (RFC 8441), else empty."""

    stream_id: int
    request: Request
    ended: bool
    protocol: bytes = b""


@dataclass(frozen=True, slots=True)
class RequestBody:
    """Request body bytes; ``flow`` is what to acknowledge once they are forwarded."""

    stream_id: int
    data: bytes
    flow: int


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """The visitor's side of ``stream_id`` ended (the body is whole)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAborted:
    """The visitor reset ``stream_id`` (or sent something on it that made us)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The visitor can take more response bytes (a window grew): senders may go on."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over (the visitor's GOAWAY, or ours for ``reason``)."""

    reason: str


Event = RequestHead | RequestBody | RequestEnded | StreamAborted | WindowOpened | Closed


class VisitorH2:
    """The server side of one visitor's HTTP/2 connection."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            # :meth:`respond` checks and lower-cases response headers itself, once.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config=config)
        # Response heads through the tunnel's encoder, not hpack's: its dynamic-table search
        # and pure-Python Huffman coder were a fifth of the edge's CPU per HTTP/2 request.
        # (h2 types the attribute as hpack's Encoder; it calls only what this one has.)
        self._h2.encoder = cast(Any, _ResponseEncoder())
        # Request heads through the tunnel's decoder too: hpack's was the largest single cost
        # of taking a request (a Python object and a log call per field).
        self._h2.decoder = cast(Any, _RequestDecoder(self._h2.decoder.max_header_list_size))
        self._resets = TokenBucket(RESET_RATE, RESET_BURST)
        self._control = TokenBucket(CONTROL_RATE, CONTROL_BURST)
        self.closed = False
        #: A graceful GOAWAY went out: streams open finish, new ones are refused.
        self.draining = False
        self._goaway = b""
        #: The visitor acknowledged our SETTINGS, so it knows extended CONNECT is on.
        self._settings_acked = False

    def start(self) -> None:
        """The server preface: our SETTINGS and the connection window."""
        h2c = self._h2
        h2c.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_BYTES,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                # WebSocket over HTTP/2 (RFC 8441): extended CONNECT with ``:protocol``.
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        h2c.initiate_connection()
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    def data_to_send(self) -> bytes:
        """What to write to the socket now."""
        data = self._h2.data_to_send()
        if self._goaway:
            data, self._goaway = data + self._goaway, b""
        return data

    def drain(self) -> None:
        """GOAWAY (NO_ERROR) that lets the streams already open finish. Not h2's
        ``close_connection``: that ends its connection state, after which the visitor's
        WINDOW_UPDATEs for those very streams would be protocol errors."""
        if self.closed or self.draining:
            return
        self.draining = True
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._h2.highest_inbound_stream_id
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        self._goaway = frame.serialize()

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Bytes from the visitor; ``now`` is the loop's clock (for the budgets).

        Fed to h2 a slice at a time, so that a flood is stopped within one slice of its
        budget running out, however much of it one read brought."""
        events: list[Event] = []
        view = memoryview(data)
        for start in range(0, len(view), _SLICE):
            if self.closed:
                break
            self._receive(view[start : start + _SLICE], now, events)
        return events

    def _receive(self, data: memoryview, now: float, events: list[Event]) -> None:
        try:
            raw = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY with the error's code.
            self.closed = True
            events.append(Closed(f"HTTP/2 protocol error: {exc}"))
            return
        for event in raw:
            if isinstance(event, h2.events.RequestReceived):
                if self.draining:
                    # After our GOAWAY: not processed, the visitor may retry it elsewhere.
                    assert event.stream_id is not None
                    self.reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                head = self._head(event)
                if head.protocol and not self._settings_acked:
                    # Extended CONNECT before the visitor had our SETTINGS_ENABLE_CONNECT_
                    # PROTOCOL (RFC 8441 §3; RFC 9113 §6.5.3: it acknowledges them on
                    # receipt, before anything else): a malformed request.
                    self.reset(head.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                    continue
                events.append(head)
            elif isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None and event.data is not None
                events.append(
                    RequestBody(event.stream_id, event.data, event.flow_controlled_length or 0)
                )
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id is not None
                events.append(RequestEnded(event.stream_id))
            elif isinstance(event, h2.events.TrailersReceived):
                # Request trailers go nowhere (the head was forwarded at its start), as on
                # HTTP/1.1; the stream's end follows as its own event.
                continue
            elif isinstance(event, h2.events.StreamReset):
                assert event.stream_id is not None
                events.append(StreamAborted(event.stream_id))
                if event.remote_reset and not self._resets.take(now):
                    self._calm(events, "too many stream resets (rapid reset)")
                    return
            elif isinstance(event, h2.events.PingReceived | h2.events.RemoteSettingsChanged):
                # Each asks for an answer (CVE-2019-9512 ping flood, -9515 settings flood).
                if not self._control.take(now):
                    self._calm(events, "too many PING or SETTINGS frames")
                    return
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    events.append(WindowOpened())
            elif isinstance(event, h2.events.WindowUpdated | h2.events.SettingsAcknowledged):
                if isinstance(event, h2.events.SettingsAcknowledged):
                    self._settings_acked = True
                events.append(WindowOpened())
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
                events.append(Closed(f"the visitor ended the connection ({event.error_code})"))

    def _calm(self, events: list[Event], reason: str) -> None:
        self.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        events.append(Closed(reason))

    def _head(self, event: h2.events.RequestReceived) -> RequestHead:
        assert event.stream_id is not None and event.headers is not None
        request = Request()
        request.http_version = "2"
        authority = b""
        protocol = b""
        cookies: list[bytes] = []
        headers = request.headers
        for name, value in _pairs(event.headers):
            if name[:1] == b":":
                if name == b":method":
                    request.method = value
                elif name == b":path":
                    request.target = value
                elif name == b":authority":
                    authority = value
                elif name == b":protocol":
                    protocol = value
            elif name == b"cookie":
                cookies.append(value)
            elif name == b"host":
                request.host = value
            else:
                headers.append((name, value))
        if cookies:
            headers.append((b"cookie", b"; ".join(cookies)))
        if authority:
            # :authority wins over Host (RFC 9113 §8.3.1); the forwarded head has no Host.
            request.host = authority
        request.keep_alive = True
        request.has_body = event.stream_ended is None
        return RequestHead(event.stream_id, request, not request.has_body, protocol)

    # -- answering -----------------------------------------------------------------------------

    def respond(
        self,
        stream_id: int,
        status: int,
        headers: list[tuple[str, str]],
        *,
        end_stream: bool,
    ) -> None:
        """A response head; raises :class:`ResponseError` (nothing sent) for one HTTP/2
        cannot carry."""
        if not 200 <= status <= 599:
            raise ResponseError(f"status {status} is not a final status")
        out: list[tuple[bytes, bytes]] = [(b":status", str(status).encode("ascii"))]
        for name, value in headers:
            lowered = name.lower()
            if lowered in _CONNECTION_SPECIFIC:
                continue
            raw_name = lowered.encode("latin-1")
            raw_value = value.encode("latin-1")
            if not _TOKEN.fullmatch(raw_name):
                raise ResponseError(f"response header name {name!r} is not a token")
            if _BAD_VALUE.search(raw_value):
                raise ResponseError(f"response header {name!r} has a bad value")
            out.append((raw_name, raw_value))
        self._h2.send_headers(stream_id, out, end_stream=end_stream)

    def window(self, stream_id: int) -> int:
        """Response bytes the visitor takes now on ``stream_id`` (0 for a gone stream)."""
        try:
            window = self._h2.local_flow_control_window(stream_id)
        except (h2.exceptions.StreamClosedError, KeyError):
            return 0
        return min(window, self._h2.max_outbound_frame_size)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Response body bytes; at most :meth:`window` of them (``end_stream``: the last)."""
        self._h2.send_data(stream_id, data, end_stream=end_stream)

    def end_stream(self, stream_id: int) -> None:
        """The response is complete."""
        self._h2.end_stream(stream_id)

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        """Abort a stream (whatever its state)."""
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, code)

    def acknowledge(self, stream_id: int, flow: int) -> None:
        """``flow`` bytes of a request body were forwarded: the visitor may send more."""
        if flow and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(flow, stream_id)

    def close(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """GOAWAY: no new streams; those open may finish (the listener decides)."""
        if not self.closed:
            self.closed = True
            self._h2.close_connection(code)

    def stream_open(self, stream_id: int) -> bool:
        """Whether ``stream_id`` can still carry a response."""
        stream: Any = self._h2.streams.get(stream_id)
        return stream is not None and stream.open


class _ResponseEncoder:
    """What h2 asks of its HPACK encoder, answered by :class:`PlainHpackEncoder`: static-table
    references and raw literals, no dynamic table (a size update to 0 opens the first block,
    and again after the visitor changes SETTINGS_HEADER_TABLE_SIZE, so its decoder never
    expects one of ours). The same fields decode; a response head takes some more bytes."""

    def __init__(self) -> None:
        self._plain = PlainHpackEncoder()
        self._table_size = 4096

    @property
    def header_table_size(self) -> int:
        """The visitor's SETTINGS_HEADER_TABLE_SIZE (h2 sets it)."""
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_size = value
        self._plain = PlainHpackEncoder()  # its first block says "table size 0" again

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """One header block for ``headers`` (lower-case byte pairs, as :meth:`respond`
        builds them)."""
        return self._plain.encode(headers)


class _RequestDecoder:
    """What h2 asks of its HPACK decoder, answered by :class:`HpackDecoder` (the same
    bounds: the table size we advertise, the header list size h2 sets from our settings),
    its errors raised as hpack's, which h2 turns into connection errors (PROTOCOL_ERROR;
    an oversized list is a DenialOfServiceError, ENHANCE_YOUR_CALM). No
    ``max_allowed_table_size`` setter: h2 sets one only when our HEADER_TABLE_SIZE setting
    changes, and :meth:`VisitorH2.start` leaves it at the default the decoder starts with."""

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = HpackDecoder(max_header_list_size=max_header_list_size)

    @property
    def max_header_list_size(self) -> int:
        """Our MAX_HEADER_LIST_SIZE once the visitor acknowledged it (h2 sets it)."""
        return self._decoder.max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._decoder.max_header_list_size = value

    def decode(self, data: Any, raw: bool = False) -> list[tuple[bytes, bytes]]:
        """One complete header block's fields (always raw bytes: h2 asks for them so)."""
        if type(data) is not bytes:
            data = bytes(data)
        try:
            return self._decoder.decode(data)
        except HpackListTooLarge as exc:
            raise OversizedHeaderListError(str(exc)) from exc
        except HpackError as exc:
            raise HPACKDecodingError(str(exc)) from exc


def _pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(bytes(name), bytes(value)) for name, value in headers]
