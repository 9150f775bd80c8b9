"""cloudflared's HTTP/2 tunnel transport, both roles, sans-IO (PROTOCOL.md §4).

The connector dials the edge, but on that TLS connection the *edge* is the HTTP/2 client: it
opens one stream per eyeball request (and one control stream). :class:`EdgeTunnelConnection`
is that client; :class:`ConnectorTunnelConnection` is the connector's server side.

Both wrap ``h2`` and add what every adapter would otherwise re-implement: an outbound buffer
per stream that is flushed as flow-control windows open, so an adapter only ever calls
``send_data`` and waits while :meth:`pending` is above its high-water mark (the
:class:`SendBufferDrained` event says when to look again). Inbound data is only credited back
to the peer when the consumer calls :meth:`acknowledge`, which is what gives back-pressure end
to end: a slow eyeball slows the origin, and no body is ever held whole in memory.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack

from adit.protocol.errors import HeaderDecodeError, Http2TunnelError
from adit.protocol.headers import (
    PROXY_CONNECTION_UPGRADE,
    PROXY_SRC,
    REQUEST_HEADERS,
    RESPONSE_HEADERS,
    RESPONSE_META,
    RequestType,
    ResponseMeta,
    classify_request,
    decode_serialized_headers,
    encode_serialized_headers,
    strip_hop_by_hop,
    wire_bytes,
)

__all__ = [
    "ConnectionTerminated",
    "ConnectorTunnelConnection",
    "DataReceived",
    "EdgeTunnelConnection",
    "Event",
    "PingAcknowledged",
    "RequestReceived",
    "ResponseReceived",
    "SendBufferDrained",
    "StreamEnded",
    "StreamReset",
    "TunnelHttp2Connection",
    "TunnelSettings",
]

#: cloudflared's connector advertises 250; adit's connector serves more at once.
CONNECTOR_MAX_CONCURRENT_STREAMS = 1000


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """Flow-control and framing sizes; large windows keep a high-latency tunnel busy."""

    stream_window: int = 4 * 1024 * 1024
    connection_window: int = 32 * 1024 * 1024
    max_frame_size: int = 1024 * 1024
    max_header_list_size: int = 1024 * 1024
    max_concurrent_streams: int = CONNECTOR_MAX_CONCURRENT_STREAMS


def _text_pairs(
    headers: Iterable[tuple[bytes | str, bytes | str]],
) -> Iterator[tuple[str, str]]:
    # Without header_encoding h2 yields bytes: latin-1 keeps every byte as one char.
    for name, value in headers:
        yield (
            name if isinstance(name, str) else name.decode("latin-1"),
            value if isinstance(value, str) else value.decode("latin-1"),
        )


def _wire_pairs(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(wire_bytes(name), wire_bytes(value)) for name, value in headers]


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Connector side: the edge opened a stream.

    ``headers`` are the eyeball's headers in order (original names when the edge serialised
    them, else HTTP/2's lower-case), without pseudo-headers and tunnel-internal headers.
    """

    stream_id: int
    request_type: RequestType
    method: str
    path: str
    authority: str
    headers: tuple[tuple[str, str], ...]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Edge side: the connector answered a stream.

    ``headers`` are decoded from ``cf-cloudflared-response-headers`` (the real HTTP/2 headers
    of a tunnel response are artefacts and are ignored); ``meta`` says who answered.
    """

    stream_id: int
    status: int
    headers: tuple[tuple[str, str], ...]
    meta: ResponseMeta
    end_stream: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Body bytes; pass ``flow_controlled_length`` to :meth:`acknowledge` once consumed."""

    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer ended its side of the stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream was reset (by the peer, or locally because of a stream error)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class SendBufferDrained:
    """Outbound data of this stream was flushed; writers waiting on :meth:`pending` may go on."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer answered our PING."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """GOAWAY received: no new streams; streams above ``last_stream_id`` were not processed."""

    error_code: int
    last_stream_id: int


Event = (
    RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | SendBufferDrained
    | PingAcknowledged
    | ConnectionTerminated
)


# --- shared core ----------------------------------------------------------------------------


class _PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding.

    hpack's Huffman coder is pure Python, one loop turn per character; the serialised header
    blocks of a tunnel are long and new on every request, so coding them was the largest
    single cost of opening a stream. A tunnel's bytes are cheap; its CPU is not.
    """

    def encode(
        self,
        headers: Iterable[
            hpack.HeaderTuple
            | tuple[bytes | str, bytes | str]
            | tuple[bytes | str, bytes | str, bool | None]
        ]
        | dict[bytes | str, bytes | str],
        huffman: bool = True,
    ) -> bytes:
        return super().encode(headers, huffman=False)


def _unindexed(name: str, value: str) -> tuple[str, str]:
    # Serialised header blocks differ on every request (they carry the ray id): kept out of
    # the dynamic table they no longer evict the entries that do repeat (":method GET", ...).
    return hpack.NeverIndexedHeaderTuple(name, value)  # type: ignore[return-value]


@dataclass(slots=True)
class _Outbound:
    chunks: deque[bytes]
    size: int = 0
    end: bool = False


class TunnelHttp2Connection:
    """What both roles share: h2 set-up, buffered sending, event translation."""

    def __init__(self, *, client_side: bool, settings: TunnelSettings) -> None:
        self._settings = settings
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            # h2's per-character checks of every inbound header were a fifth of a request's
            # cost, and protect nothing here: what a tunnel carries sits base64-coded in the
            # serialised blocks (decoded by us), and h11 validates every header it writes.
            validate_inbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.encoder = _PlainEncoder()
        self._h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self._h2.max_inbound_frame_size = settings.max_frame_size
        self._outbound: dict[int, _Outbound] = {}
        self._pending_events: list[Event] = []

    def initiate(self) -> None:
        """Queue the connection preface, our SETTINGS and a large connection window."""
        self._h2.initiate_connection()
        extra = self._settings.connection_window - 65535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    # -- sending -------------------------------------------------------------------------

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue body bytes; they go out as the peer's windows allow."""
        out = self._outbound.get(stream_id)
        if out is None:
            out = self._outbound[stream_id] = _Outbound(deque())
        if out.end:
            raise Http2TunnelError(f"stream {stream_id}: data after end of stream")
        if data:
            out.chunks.append(data)
            out.size += len(data)
        out.end = end_stream
        self._flush(stream_id, out)

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream once the queued data is sent."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Reset a stream, dropping whatever is still queued for it."""
        self._outbound.pop(stream_id, None)
        # Already closed on both sides: nothing left to reset.
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, error_code)

    def pending(self, stream_id: int) -> int:
        """Bytes queued for a stream and not yet handed to the transport."""
        out = self._outbound.get(stream_id)
        return out.size if out is not None else 0

    def acknowledge(self, stream_id: int, flow_controlled_length: int) -> None:
        """Credit consumed inbound bytes back to the peer (WINDOW_UPDATE when worthwhile)."""
        if flow_controlled_length <= 0:
            return
        try:
            self._h2.acknowledge_received_data(flow_controlled_length, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # The stream is gone; the connection window still needs the credit.
            self._h2.increment_flow_control_window(flow_controlled_length)

    def ping(self, payload: bytes) -> None:
        """Send a PING (8 bytes) for liveness."""
        self._h2.ping(payload)

    def close(self, error_code: int = 0, last_stream_id: int | None = None) -> None:
        """Send GOAWAY."""
        self._h2.close_connection(error_code=error_code, last_stream_id=last_stream_id)

    def data_to_send(self) -> bytes:
        """Bytes for the transport."""
        return self._h2.data_to_send()

    @property
    def open_streams(self) -> int:
        """Streams currently open in either direction."""
        return int(self._h2.open_inbound_streams + self._h2.open_outbound_streams)

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed transport bytes; returns the resulting events (``b""`` is not EOF here)."""
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise Http2TunnelError(f"HTTP/2 protocol error: {exc}") from exc
        events = self._pending_events
        self._pending_events = []
        for event in h2_events:
            self._translate(event, events)
        return events

    def _translate(self, event: h2.events.Event, events: list[Event]) -> None:
        if isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            # h2 reports END_STREAM on a DATA frame as a separate StreamEnded event too.
            events.append(
                DataReceived(event.stream_id, event.data, event.flow_controlled_length or 0)
            )
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            events.append(StreamEnded(event.stream_id))
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            self._outbound.pop(event.stream_id, None)
            events.append(StreamReset(event.stream_id, int(event.error_code or 0)))
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                out = self._outbound.get(event.stream_id)
                if out is not None:
                    self._flush(event.stream_id, out, events)
            else:
                self._flush_all(events)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._flush_all(events)
        elif isinstance(event, h2.events.PingAckReceived):
            events.append(PingAcknowledged(event.ping_data or b""))
        elif isinstance(event, h2.events.ConnectionTerminated):
            events.append(
                ConnectionTerminated(int(event.error_code or 0), int(event.last_stream_id or 0))
            )
        else:
            self._translate_headers(event, events)

    def _translate_headers(self, event: h2.events.Event, events: list[Event]) -> None:
        """Role-specific: requests (connector) or responses (edge)."""

    # -- flushing ----------------------------------------------------------------------------

    def _flush_all(self, events: list[Event] | None = None) -> None:
        for stream_id, out in list(self._outbound.items()):
            self._flush(stream_id, out, events)

    def _flush(self, stream_id: int, out: _Outbound, events: list[Event] | None = None) -> None:
        had = out.size
        h2conn = self._h2
        try:
            while out.chunks:
                window = min(
                    h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size
                )
                if window <= 0:
                    break
                head = out.chunks[0]
                if len(head) <= window:
                    out.chunks.popleft()
                    chunk = head
                else:
                    chunk, out.chunks[0] = head[:window], head[window:]
                out.size -= len(chunk)
                h2conn.send_data(stream_id, chunk)
            if out.end and not out.chunks:
                h2conn.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # The peer reset or closed the stream meanwhile; its data has nowhere to go.
            out.chunks.clear()
            out.size = 0
            out.end = True
        if out.end and not out.chunks:
            del self._outbound[stream_id]
        if had and out.size < had:
            drained = SendBufferDrained(stream_id)
            (events if events is not None else self._pending_events).append(drained)


# --- the connector's side -------------------------------------------------------------------


class ConnectorTunnelConnection(TunnelHttp2Connection):
    """The connector: HTTP/2 *server* on the TLS connection it dialled to the edge."""

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        super().__init__(client_side=False, settings=settings or TunnelSettings())

    def _translate_headers(self, event: h2.events.Event, events: list[Event]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            events.append(self._request(event))

    def _request(self, event: h2.events.RequestReceived) -> RequestReceived:
        assert event.stream_id is not None and event.headers is not None
        method = path = authority = ""
        regular: list[tuple[str, str]] = []
        serialized: str | None = None
        for name, value in _text_pairs(event.headers):
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
            elif name == REQUEST_HEADERS:
                serialized = value
            elif not name.startswith(":"):
                regular.append((name, value))
        request_type = classify_request(regular)
        if serialized is not None:
            try:
                headers = decode_serialized_headers(serialized)
            except HeaderDecodeError:
                headers = regular
        else:
            headers = regular
        visible = tuple(
            (n, v) for n, v in headers if n.lower() not in (PROXY_CONNECTION_UPGRADE, PROXY_SRC)
        )
        return RequestReceived(
            stream_id=event.stream_id,
            request_type=request_type,
            method=method,
            path=path or "/",
            authority=authority,
            headers=visible,
            end_stream=event.stream_ended is not None,
        )

    def send_response(
        self,
        stream_id: int,
        status: int,
        headers: list[tuple[str, str]],
        *,
        meta: ResponseMeta = ResponseMeta.ORIGIN,
        end_stream: bool = False,
    ) -> None:
        """Answer a stream: the origin's headers go serialised, as cloudflared sends them."""
        h2_headers: list[tuple[str, str]] = [
            (":status", str(200 if status == 101 else status)),
            (RESPONSE_META, meta.value),
        ]
        if meta is ResponseMeta.ORIGIN:
            h2_headers.append(_unindexed(RESPONSE_HEADERS, encode_serialized_headers(headers)))
            h2_headers.extend(
                ("content-length", v) for n, v in headers if n.lower() == "content-length"
            )
        try:
            self._h2.send_headers(stream_id, _wire_pairs(h2_headers), end_stream=end_stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            raise Http2TunnelError(f"stream {stream_id}: cannot send response: {exc}") from exc


# --- the edge's side ------------------------------------------------------------------------


class EdgeTunnelConnection(TunnelHttp2Connection):
    """The edge: HTTP/2 *client* on the TLS connection the connector dialled."""

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        super().__init__(client_side=True, settings=settings or TunnelSettings())

    @property
    def peer_max_concurrent_streams(self) -> int:
        """What the connector allows (cloudflared: 250)."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    def open_control_stream(self) -> int:
        """Open the stream that carries the Cap'n Proto RPC (no END_STREAM)."""
        stream_id: int = self._h2.get_next_available_stream_id()
        self._h2.send_headers(
            stream_id,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", "/"),
                (PROXY_CONNECTION_UPGRADE, "control-stream"),
            ],
        )
        return stream_id

    def send_request(
        self,
        method: str,
        path: str,
        authority: str,
        headers: list[tuple[str, str]],
        *,
        request_type: RequestType = RequestType.HTTP,
        serialize_headers: bool = False,
        end_stream: bool = False,
    ) -> int:
        """Open a stream for an eyeball request; returns its stream id.

        Hop-by-hop headers are dropped (Go's HTTP/2 server refuses them). With
        ``serialize_headers`` (connectors announcing the adit feature) the exact header names
        travel in ``cf-cloudflared-request-headers`` instead of as HTTP/2 headers.
        """
        stream_id: int = self._h2.get_next_available_stream_id()
        clean = strip_hop_by_hop(headers)
        h2_headers: list[tuple[str, str]] = [
            (":method", method),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
        ]
        if request_type is RequestType.WEBSOCKET:
            h2_headers.append((PROXY_CONNECTION_UPGRADE, "websocket"))
        elif request_type is RequestType.TCP:
            h2_headers.append((PROXY_SRC, "tcp"))
        if serialize_headers:
            h2_headers.append(_unindexed(REQUEST_HEADERS, encode_serialized_headers(clean)))
        else:
            h2_headers.extend(
                (name.lower(), value) for name, value in clean if name.lower() != "host"
            )
        try:
            self._h2.send_headers(stream_id, _wire_pairs(h2_headers), end_stream=end_stream)
        except h2.exceptions.TooManyStreamsError as exc:
            raise Http2TunnelError("the connector's stream limit is reached") from exc
        return stream_id

    def _translate_headers(self, event: h2.events.Event, events: list[Event]) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            assert event.stream_id is not None and event.headers is not None
            status = 0
            meta_value: str | None = None
            serialized = ""
            for name, value in _text_pairs(event.headers):
                if name == ":status":
                    status = int(value)
                elif name == RESPONSE_META:
                    meta_value = value
                elif name == RESPONSE_HEADERS:
                    serialized = value
            try:
                headers = tuple(decode_serialized_headers(serialized))
            except HeaderDecodeError:
                # One connector answer is broken: fail that stream, not the connection.
                self.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                events.append(StreamReset(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR))
                return
            events.append(
                ResponseReceived(
                    stream_id=event.stream_id,
                    status=status,
                    headers=headers,
                    meta=ResponseMeta.parse(meta_value),
                    end_stream=event.stream_ended is not None,
                )
            )
        elif isinstance(event, h2.events.InformationalResponseReceived):
            pass  # 1xx before the real answer: nothing to forward on a tunnel
