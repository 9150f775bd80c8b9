"""cloudflared's QUIC transport behind the interface of the HTTP/2 tunnel connection.

The edge and the workers drive one tunnel connection through the calls and events of
:class:`~adit.protocol.http2.TunnelHttp2Connection` (``send_request``/``send_response``,
``send_data``, ``acknowledge``, ``RequestReceived``/``ResponseReceived``/``DataReceived``...).
This module gives a QUIC connection (aioquic, sans-IO) the same face, so the registration,
routing and proxying above it are one code for both transports (PROTOCOL.md §5):

* stream 0, opened by the connector, is the control stream: raw Cap'n Proto RPC both ways
  (the HTTP/2 transport's control stream, minus its HTTP head);
* streams the edge opens start with the data-stream preamble and a ``ConnectRequest``; the
  connector answers with the preamble and a ``ConnectResponse``, then the bodies follow raw;
* other streams start with the RPC preamble (configuration pushes, UDP sessions), opened by
  either side with :meth:`QuicTunnelConnection.open_rpc_stream`.

Flow control is the application's: what a stream's reader consumed is credited back with
``acknowledge``, as on HTTP/2 (aioquic on its own would grant the peer more window whatever
the reader took, and a slow origin would buffer an upload in memory without bound).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress

from adit.protocol.errors import Http2TunnelError, ProtocolError
from adit.protocol.headers import RequestType, ResponseMeta, strip_for_tunnel
from adit.protocol.http2 import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from adit.protocol.quic_engine import TunnelQuicConnection
from adit.protocol.quic_metadata import (
    ConnectionType,
    ConnectRequest,
    ConnectResponse,
    StreamHead,
    StreamHeadReader,
    StreamSignature,
    encode_data_stream_head,
    encode_rpc_stream_head,
    http_request_metadata,
    http_response_metadata,
    parse_http_request,
    parse_http_response,
)

__all__ = [
    "CONTROL_STREAM_ID",
    "ConnectorQuicConnection",
    "DatagramReceived",
    "EdgeQuicConnection",
    "HandshakeDone",
    "QuicTunnelConnection",
    "RpcStreamOpened",
]

#: The connector's first bidirectional stream: the control stream (PROTOCOL.md §5.2).
CONTROL_STREAM_ID = 0
#: Reset code for a stream given up (cloudflared resets with 0 as well; the reason is local).
RESET_CODE = 0
#: A connector-made error's reason, kept until the stream ends (it becomes
#: ``ConnectResponse.error``): a short text, not a body.
_MAX_REASON = 4096
#: What cloudflared writes when the origin cannot be reached and there is no better reason.
UNREACHABLE = "Unable to reach the origin service. The service may be down or it may not be "
"responding to traffic from cloudflared"


class HandshakeDone(msgspec.Struct, frozen=True):
    """The QUIC (TLS 1.3) handshake completed; ``alpn`` is what was negotiated."""

    alpn: str | None


class RpcStreamOpened(msgspec.Struct, frozen=True):
    """The peer opened a stream with the RPC preamble; its Cap'n Proto bytes follow as
    ``DataReceived`` (``data`` holds those that came with the preamble)."""

    stream_id: int
    data: bytes


class DatagramReceived(msgspec.Struct, frozen=True):
    """A QUIC DATAGRAM frame (UDP sessions, PROTOCOL.md §6)."""

    data: bytes


class ConnectionIdIssued(msgspec.Struct, frozen=True):
    """A connection id this side issued: the edge's listener routes packets by it."""

    connection_id: bytes


class ConnectionIdRetired(msgspec.Struct, frozen=True):
    """A connection id the peer retired."""

    connection_id: bytes


QuicEvent = (
    Event
    | HandshakeDone
    | RpcStreamOpened
    | DatagramReceived
    | ConnectionIdIssued
    | ConnectionIdRetired
)


class _Phase(enum.Enum):
    """Where a stream is in its head: waiting for it, raw bytes, or its reason collected."""

    HEAD = enum.auto()  # the preamble and ConnectRequest/ConnectResponse are being read
    RAW = enum.auto()  # bodies, or the control/RPC stream's Cap'n Proto
    DROP = enum.auto()  # answered with an error: what else arrives is credited and dropped


@dataclass(slots=True)
class _Stream:
    stream_id: int
    phase: _Phase
    reader: StreamHeadReader[ConnectRequest] | StreamHeadReader[ConnectResponse] | None = None
    request_type: RequestType = RequestType.HTTP
    local_ended: bool = False
    remote_ended: bool = False
    #: The peer sent STOP_SENDING: what we would still send is dropped.
    stopped: bool = False
    #: The connector answers with an error of its own: its reason is collected here and sent
    #: as ``ConnectResponse.error`` when the stream ends (QUIC has no error body).
    reason: bytearray | None = None
    #: A request stream whose ``ConnectResponse`` is still to be sent (connector).
    awaiting_head: bool = False
    #: The connector's error says the flow was rate limited.
    flow_limited: bool = False


class QuicTunnelConnection:
    """What both roles share: streams, flow control, output, the events of a read."""

    #: Whether STOP_SENDING gives the stream up: for a connector yes (the edge no longer
    #: wants the answer: its visitor left), for the edge no (the connector wants no more of
    #: the request body; its answer stands).
    stop_sending_gives_up = True

    def __init__(self, quic: TunnelQuicConnection) -> None:
        self.quic = quic
        self._streams: dict[int, _Stream] = {}
        self._events: list[QuicEvent] = []
        self._terminated = False
        #: Why the connection ended (aioquic's reason: "Idle timeout", the peer's phrase...).
        self.terminated_reason = ""
        #: Answers the peer made us owe (the HTTP/2 transport counts them; QUIC's own ACKs
        #: are aioquic's business).
        self.owed_control_frames = 0

    # -- the tunnel connection's interface ---------------------------------------------------

    def initiate(self) -> None:
        """Nothing to queue: the QUIC handshake is started by the I/O (``connect``)."""

    @property
    def open_streams(self) -> int:
        """Streams open in either direction (the control stream included)."""
        return len(self._streams)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue body bytes on a stream (dropped if the peer asked us to stop sending)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise Http2TunnelError(f"stream {stream_id}: cannot send data: stream closed")
        if stream.reason is not None:
            room = _MAX_REASON - len(stream.reason)
            stream.reason += data[:room]
            if end_stream:
                self.end_stream(stream_id)
            return
        if stream.stopped:
            return
        self.quic.send_stream_data(stream_id, data, end_stream)
        if end_stream:
            self._local_end(stream)

    def end_stream(self, stream_id: int) -> None:
        """End our side of a stream (FIN after what is queued)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended:
            return
        if stream.reason is not None:
            self._send_reason(stream)
        elif not stream.stopped:
            self.quic.send_stream_data(stream_id, b"", True)
        self._local_end(stream)

    def reset_stream(self, stream_id: int, error_code: int = RESET_CODE) -> None:
        """Abort a stream both ways (RESET_STREAM and STOP_SENDING)."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.local_ended and not stream.stopped:
            self._reset_sending(stream_id, error_code)
        if not stream.remote_ended:
            self._stop_receiving(stream_id, error_code)

    def _abort(self, stream_id: int, error_code: int = RESET_CODE) -> None:
        """RESET_STREAM where we send, STOP_SENDING where we receive."""
        self._reset_sending(stream_id, error_code)
        self._stop_receiving(stream_id, error_code)

    def _reset_sending(self, stream_id: int, error_code: int) -> None:
        if self._can_send(stream_id):
            self.quic.reset_stream(stream_id, error_code)

    def _stop_receiving(self, stream_id: int, error_code: int) -> None:
        # A stream whose state aioquic already discarded (both sides done) has nothing to stop.
        if self._can_receive(stream_id) and stream_id in self.quic._streams:
            self.quic.stop_stream(stream_id, error_code)

    def open_rpc_stream(self, data: bytes) -> int:
        """Open a stream of ours for one Cap'n Proto RPC exchange (PROTOCOL.md §5.6, §6.1).

        The RPC preamble and ``data``, the session's first bytes, go out in one write:
        cloudflared reads the signature and hands the rest of the stream to capnp at once. The
        peer answers with raw capnp (no preamble), which arrives as ``DataReceived``.
        """
        if self._terminated:
            raise Http2TunnelError("the connection is closed: no new streams")
        stream_id = self.quic.get_next_available_stream_id()
        self._streams[stream_id] = _Stream(stream_id, _Phase.RAW)
        self.quic.send_stream_data(stream_id, encode_rpc_stream_head() + data)
        return stream_id

    def _can_send(self, stream_id: int) -> bool:
        """Not a unidirectional stream the peer opened (aioquic raises for those)."""
        return not stream_id & 2 or bool(stream_id & 1) != self.quic._is_client

    def _can_receive(self, stream_id: int) -> bool:
        """Not a unidirectional stream we opened."""
        return not stream_id & 2 or bool(stream_id & 1) == self.quic._is_client

    def pending(self, stream_id: int) -> int:
        """Bytes queued on the stream and not yet sent."""
        return self.quic.stream_send_queued(stream_id)

    def acknowledge(self, stream_id: int, flow_controlled_length: int) -> bool:
        """Credit what a stream's reader consumed back to the peer; whether that raised a
        receive limit (a MAX_DATA or MAX_STREAM_DATA frame is then to be sent)."""
        return bool(flow_controlled_length) and self._consume(stream_id, flow_controlled_length)

    def ping(self, payload: bytes) -> None:
        """A PING (aioquic matches its acknowledgement by an id, not a payload)."""
        self.quic.send_ping(int.from_bytes(payload[:8].ljust(8, b"\0"), "big"))

    def close(self, error_code: int = 0, last_stream_id: int | None = None) -> None:
        """CONNECTION_CLOSE with an application error code (cloudflared closes with 0)."""
        del last_stream_id  # QUIC has no GOAWAY: streams in flight end with the connection
        self.quic.close(error_code=error_code)

    # -- I/O ----------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> list[QuicEvent]:
        """A UDP datagram from the peer; returns the events it brought."""
        self.quic.receive_datagram(data, addr, now)
        return self._drain()

    def handle_timer(self, now: float) -> list[QuicEvent]:
        """The time of :meth:`get_timer` came: retransmissions, idle timeout, keepalive."""
        self.quic.handle_timer(now)
        return self._drain()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next."""
        return self.quic.get_timer()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """UDP datagrams to send now."""
        return self.quic.datagrams_to_send(now=now)

    @property
    def events_pending(self) -> bool:
        """Sending made events (see :meth:`take_events`)."""
        return self.quic.events_pending

    def take_events(self) -> list[QuicEvent]:
        """Events produced outside a read (``initiate`` of the connector, packets built)."""
        return self._drain()

    # -- events -------------------------------------------------------------------------------

    def _drain(self) -> list[QuicEvent]:
        events, self._events = self._events, []
        while (event := self.quic.next_event()) is not None:
            self._on_quic_event(event, events)
        return events

    def _on_quic_event(self, event: quic_events.QuicEvent, out: list[QuicEvent]) -> None:
        if isinstance(event, quic_events.StreamDataReceived):
            self._on_stream_data(event.stream_id, event.data, event.end_stream, out)
        elif isinstance(event, quic_events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                out.append(StreamReset(stream_id=event.stream_id, error_code=event.error_code))
        elif isinstance(event, quic_events.StopSendingReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None and not stream.local_ended:
                # The peer wants no more of what we send: the stream is given up, as an
                # HTTP/2 RST_STREAM gives it up. The edge sends it when its visitor left (a
                # GET's request side has ended already, so STOP_SENDING is all it can say):
                # the connector must stop the origin request, not keep pouring its body into
                # a stream nobody reads. (cloudflared sends it when it closes a stream it
                # answered; what it sent whole is still read: see StreamChannel.read.)
                stream.stopped = True
                self._reset_sending(event.stream_id, event.error_code)
                if not self.stop_sending_gives_up:
                    # The edge: the connector wants no more of the request (cloudflared's
                    # close is FIN and STOP_SENDING, and the two may come in either order):
                    # its answer, whole or still arriving, stands; only our sending stops. A
                    # connector that gives the stream up resets its own side.
                    self._local_end(stream)
                    return
                if not stream.remote_ended:
                    self._stop_receiving(event.stream_id, event.error_code)
                self._streams.pop(event.stream_id, None)
                out.append(StreamReset(stream_id=event.stream_id, error_code=event.error_code))
        elif isinstance(event, quic_events.DatagramFrameReceived):
            out.append(DatagramReceived(data=event.data))
        elif isinstance(event, quic_events.HandshakeCompleted):
            out.append(HandshakeDone(alpn=event.alpn_protocol))
        elif isinstance(event, quic_events.ConnectionIdIssued):
            out.append(ConnectionIdIssued(connection_id=event.connection_id))
        elif isinstance(event, quic_events.ConnectionIdRetired):
            out.append(ConnectionIdRetired(connection_id=event.connection_id))
        elif isinstance(event, quic_events.ConnectionTerminated) and not self._terminated:
            self._terminated = True
            phrase = event.reason_phrase
            if self.quic.closed_by_peer:
                kind = "transport" if event.frame_type is not None else "application"
                self.terminated_reason = (
                    f"closed by the peer ({kind} error {event.error_code:#x}"
                    + (f": {phrase})" if phrase else ")")
                )
            else:
                self.terminated_reason = phrase or f"closed with code {event.error_code:#x}"
            out.append(ConnectionTerminated(error_code=event.error_code, last_stream_id=0))

    def _on_stream_data(
        self, stream_id: int, data: bytes, end_stream: bool, out: list[QuicEvent]
    ) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._new_peer_stream(stream_id)
            if stream is None:
                # Not a stream this role takes (or one already given up): credit its bytes
                # and make the peer stop.
                self._consume(stream_id, len(data))
                if not end_stream:
                    self._stop_receiving(stream_id, RESET_CODE)
                return
            self._streams[stream_id] = stream
        if stream.phase is _Phase.DROP:
            self._consume(stream_id, len(data))
        elif stream.phase is _Phase.RAW:
            if data:
                out.append(
                    DataReceived(stream_id=stream_id, data=data, flow_controlled_length=len(data))
                )
        else:
            assert stream.reader is not None
            try:
                head = stream.reader.feed(data)
            except ProtocolError as exc:
                # One bad stream head fails that stream, not the connection.
                self._consume(stream_id, len(data))
                self._streams.pop(stream_id, None)
                self._abort(stream_id)
                reason = f"bad stream head from the peer: {exc}"
                out.append(StreamReset(stream_id=stream_id, error_code=RESET_CODE, reason=reason))
                return
            if head is None:
                self._consume(stream_id, len(data))
                if end_stream:
                    # Our side goes too, or the stream (and its place among those the peer
                    # may open) would stay half-open for the connection's life.
                    self._streams.pop(stream_id, None)
                    self._reset_sending(stream_id, RESET_CODE)
                    reason = "the peer ended the stream inside its head"
                    out.append(
                        StreamReset(stream_id=stream_id, error_code=RESET_CODE, reason=reason)
                    )
                return
            stream.reader = None
            # The head's bytes are ours, consumed now; the rest is the reader's to credit.
            self._consume(stream_id, len(data) - len(head.rest))
            stream.phase = _Phase.RAW
            self._on_head(stream, head, end_stream and not head.rest, out)
            if stream.phase is _Phase.RAW and head.rest:
                out.append(
                    DataReceived(
                        stream_id=stream_id, data=head.rest, flow_controlled_length=len(head.rest)
                    )
                )
            elif stream.phase is _Phase.DROP:
                self._consume(stream_id, len(head.rest))
        if end_stream and stream_id in self._streams and not stream.remote_ended:
            stream.remote_ended = True
            out.append(StreamEnded(stream_id=stream_id))
            self._maybe_forget(stream)

    def _consume(self, stream_id: int, length: int) -> bool:
        # More than arrived would be a caller's bookkeeping slip, not the peer's: the window
        # stays where it is rather than the connection failing.
        try:
            return self.quic.consumed(stream_id, length)
        except ValueError:
            return False

    def _local_end(self, stream: _Stream) -> None:
        stream.local_ended = True
        self._maybe_forget(stream)

    def _maybe_forget(self, stream: _Stream) -> None:
        if stream.local_ended and stream.remote_ended:
            self._streams.pop(stream.stream_id, None)

    def _send_reason(self, stream: _Stream) -> None:
        raise NotImplementedError

    # -- role hooks -------------------------------------------------------------------------------

    def _new_peer_stream(self, stream_id: int) -> _Stream | None:
        raise NotImplementedError

    def _on_head(
        self,
        stream: _Stream,
        head: StreamHead[ConnectRequest] | StreamHead[ConnectResponse],
        ended: bool,
        out: list[QuicEvent],
    ) -> None:
        raise NotImplementedError


# --- the edge's side --------------------------------------------------------------------------


class EdgeQuicConnection(QuicTunnelConnection):
    """The edge: QUIC *server*; opens a stream per eyeball request."""

    stop_sending_gives_up = False

    #: No stream limit of cloudflared's to respect on QUIC (it allows 2^60).
    peer_max_concurrent_streams = 1 << 30

    def open_control_stream(self) -> int:
        """The control stream is the connector's stream 0: nothing to send, bytes to expect."""
        self._streams[CONTROL_STREAM_ID] = _Stream(CONTROL_STREAM_ID, _Phase.RAW)
        return CONTROL_STREAM_ID

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
        encoded: Mapping[tuple[str, str], bytes] | None = None,
        keep: dict[tuple[str, str], bytes] | None = None,
    ) -> int:
        """Open a stream for an eyeball request: preamble, ``ConnectRequest``, then the body.

        As on HTTP/2 every header the tunnel gives meaning to is dropped: the stream's kind
        is ``request_type`` alone (cloudflared takes it from ``ConnectRequest.type``)."""
        del serialize_headers, encoded, keep  # QUIC metadata carries every name as it is
        if self._terminated:
            raise Http2TunnelError("the connection is closed: no new streams")
        stream_id = self.quic.get_next_available_stream_id()
        if request_type is RequestType.TCP:
            message = ConnectRequest(dest=authority, type=ConnectionType.TCP)
        else:
            clean = [(n, v) for n, v in strip_for_tunnel(headers) if n.lower() != "host"]
            kind = (
                ConnectionType.WEBSOCKET
                if request_type is RequestType.WEBSOCKET
                else ConnectionType.HTTP
            )
            message = ConnectRequest(
                # The full URL, as Cloudflare's edge sends it (cloudflared parses it with
                # http.NewRequest; the path is what routes).
                dest=f"https://{authority}{path}",
                type=kind,
                metadata=http_request_metadata(method, authority, clean),
            )
        stream = _Stream(
            stream_id,
            _Phase.HEAD,
            reader=StreamHeadReader(ConnectResponse),
            request_type=request_type,
        )
        self._streams[stream_id] = stream
        self.quic.send_stream_data(stream_id, encode_data_stream_head(message), end_stream)
        if end_stream:
            stream.local_ended = True
        return stream_id

    def _new_peer_stream(self, stream_id: int) -> _Stream | None:
        if stream_id & 1:
            return None  # a server stream we do not know: given up already
        if stream_id & 2:
            return None  # cloudflared opens no unidirectional stream: stopped at once
        if stream_id == CONTROL_STREAM_ID:
            return None  # only if it was never expected (open_control_stream was not called)
        # The connector's RPC streams (datagram v2 unregisterUdpSession, §6.1), and nothing
        # else: a data head (the edge's to send) is refused at its first byte, not buffered.
        return _Stream(
            stream_id, _Phase.HEAD, reader=StreamHeadReader(ConnectRequest, rpc_only=True)
        )

    def _on_head(
        self,
        stream: _Stream,
        head: StreamHead[ConnectRequest] | StreamHead[ConnectResponse],
        ended: bool,
        out: list[QuicEvent],
    ) -> None:
        if head.signature is StreamSignature.RPC:
            out.append(RpcStreamOpened(stream_id=stream.stream_id, data=b""))
            return
        message = head.message
        if not isinstance(message, ConnectResponse) or stream.stream_id % 4 != 1:
            # A data head on a stream the connector opened: not a thing cloudflared does.
            stream.phase = _Phase.DROP
            self._streams.pop(stream.stream_id, None)
            self._abort(stream.stream_id)
            return
        if message.error:
            # The connector could not serve it: the reason goes to the pipeline as the body of
            # a connector-made answer, as the HTTP/2 transport's 502 carries it.
            response = parse_http_response(message)
            meta = (
                ResponseMeta.FLOW_RATE_LIMITED
                if response.flow_rate_limited
                else ResponseMeta.CONNECTOR
            )
            out.append(
                ResponseReceived(
                    stream_id=stream.stream_id, status=502, headers=(), meta=meta, end_stream=False
                )
            )
            reason = message.error.encode("utf-8", "replace")
            out.append(
                DataReceived(stream_id=stream.stream_id, data=reason, flow_controlled_length=0)
            )
            out.append(StreamEnded(stream_id=stream.stream_id))
            stream.phase = _Phase.DROP
            stream.remote_ended = True
            self._maybe_forget(stream)
            return
        headers: tuple[tuple[str, str], ...] = ()
        if stream.request_type is RequestType.TCP:
            status = 200
        else:
            response = parse_http_response(message)
            if response.status is None:
                stream.phase = _Phase.DROP
                out.append(
                    ResponseReceived(
                        stream_id=stream.stream_id,
                        status=502,
                        headers=(),
                        meta=ResponseMeta.CONNECTOR,
                        end_stream=True,
                    )
                )
                return
            status, headers = response.status, tuple(response.headers)
        out.append(
            ResponseReceived(
                stream_id=stream.stream_id,
                status=status,
                headers=headers,
                meta=ResponseMeta.ORIGIN,
                end_stream=ended,
            )
        )

    def _send_reason(self, stream: _Stream) -> None:  # pragma: no cover - connector only
        self.quic.send_stream_data(stream.stream_id, b"", True)


# --- the connector's side ---------------------------------------------------------------------


class ConnectorQuicConnection(QuicTunnelConnection):
    """The connector: QUIC *client*; opens the control stream, answers the edge's streams."""

    def initiate(self) -> None:
        """Open the control stream (stream 0): told as the edge's control-stream request,
        as the HTTP/2 transport tells the edge's first stream."""
        stream_id = self.quic.get_next_available_stream_id()
        assert stream_id == CONTROL_STREAM_ID
        self._streams[stream_id] = _Stream(
            stream_id, _Phase.RAW, request_type=RequestType.CONTROL_STREAM
        )
        # Created in aioquic now (nothing is sent): the next stream we open (an RPC stream)
        # must not be given its id before the registration writes to it.
        self.quic.send_stream_data(stream_id, b"")
        self._events.append(
            RequestReceived(
                stream_id=stream_id,
                request_type=RequestType.CONTROL_STREAM,
                method="GET",
                path="/",
                authority="",
                headers=(),
                end_stream=False,
            )
        )

    def send_response(
        self,
        stream_id: int,
        status: int,
        headers: list[tuple[str, str]],
        *,
        meta: ResponseMeta = ResponseMeta.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        """Answer a stream: preamble and ``ConnectResponse`` (then ``body``).

        A connector-made error has no HTTP answer on QUIC: its reason (``body`` and what is
        written after) becomes ``ConnectResponse.error`` when the stream ends, and the edge
        shows its own error page, as for cloudflared's."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended or not stream.awaiting_head:
            if stream is not None and stream.request_type is RequestType.CONTROL_STREAM:
                return  # the control stream has no head on QUIC
            raise Http2TunnelError(f"stream {stream_id}: cannot send response: stream closed")
        stream.awaiting_head = False
        if meta is not ResponseMeta.ORIGIN:
            stream.reason = bytearray(body[:_MAX_REASON])
            stream.flow_limited = meta is ResponseMeta.FLOW_RATE_LIMITED
            if end_stream:
                self.end_stream(stream_id)
            return
        if stream.request_type is RequestType.TCP:
            message = ConnectResponse()
        else:
            if (
                stream.request_type is RequestType.WEBSOCKET
                and status == 200
                and any(n.lower() == "sec-websocket-accept" for n, _ in headers)
            ):
                # An accepted upgrade in HTTP/2's words (200): QUIC carries the 101 (§5.4).
                status = 101
            message = ConnectResponse(metadata=http_response_metadata(status, headers))
        self.quic.send_stream_data(stream_id, encode_data_stream_head(message) + body, end_stream)
        if end_stream:
            self._local_end(stream)

    def _send_reason(self, stream: _Stream) -> None:
        reason = bytes(stream.reason or b"").decode("utf-8", "replace").strip() or UNREACHABLE
        metadata: tuple[tuple[str, str], ...] = ()
        if stream.flow_limited:
            metadata = (("FlowConnectRateLimited", "true"),)
        stream.reason = None
        if not stream.stopped:
            message = ConnectResponse(error=reason, metadata=metadata)
            self.quic.send_stream_data(stream.stream_id, encode_data_stream_head(message), True)

    def _new_peer_stream(self, stream_id: int) -> _Stream | None:
        if stream_id % 4 != 1:
            return None  # only the edge's bidirectional streams carry requests
        return _Stream(stream_id, _Phase.HEAD, reader=StreamHeadReader(ConnectRequest))

    def _on_head(
        self,
        stream: _Stream,
        head: StreamHead[ConnectRequest] | StreamHead[ConnectResponse],
        ended: bool,
        out: list[QuicEvent],
    ) -> None:
        if head.signature is StreamSignature.RPC:
            out.append(RpcStreamOpened(stream_id=stream.stream_id, data=b""))
            return
        message = head.message
        if not isinstance(message, ConnectRequest):
            stream.phase = _Phase.DROP
            return
        stream.awaiting_head = True
        if message.type is ConnectionType.TCP:
            stream.request_type = RequestType.TCP
            out.append(
                RequestReceived(
                    stream_id=stream.stream_id,
                    request_type=RequestType.TCP,
                    method="CONNECT",
                    path="",
                    authority=message.dest,
                    headers=_metadata_headers(message.metadata),
                    end_stream=ended,
                )
            )
            return
        request = parse_http_request(message)
        stream.request_type = (
            RequestType.WEBSOCKET if message.type is ConnectionType.WEBSOCKET else RequestType.HTTP
        )
        out.append(
            RequestReceived(
                stream_id=stream.stream_id,
                request_type=stream.request_type,
                method=request.method,
                path=_path_of(message.dest),
                authority=request.host,
                headers=tuple(request.headers),
                end_stream=ended,
            )
        )


def _path_of(dest: str) -> str:
    """The request target of a ``ConnectRequest.dest``: a full URL (Cloudflare's edge sends
    ``https://host/path?query``) or a bare path."""
    if dest.startswith("/"):
        return dest
    parts = urlsplit(dest)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _metadata_headers(metadata: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(metadata)
