"""Heads of cloudflared's QUIC streams, sans-IO (PROTOCOL.md §5.2-§5.4).

Every stream but the control stream starts with a 6-byte signature
(``tunnelrpc/quic/protocol.go``):

* data stream: :data:`DATA_STREAM_SIGNATURE`, the version ``"01"``, then one framed capnp
  ``ConnectRequest`` (edge → connector) or ``ConnectResponse`` (connector → edge), then the raw
  body. Both directions carry the version (``writeDataStreamPreamble``).
* RPC stream: :data:`RPC_STREAM_SIGNATURE` and no version; capnp RPC follows at once
  (``NewCloudflaredClient``/``NewSessionClient`` write only the signature, and
  ``CloudflaredServer.Serve`` hands the stream to RPC right after reading it).

cloudflared reads the signature with ``io.ReadFull`` but the version with one plain ``Read`` of 2
bytes (``readVersion``), so a version split across two STREAM frames that arrive apart would
shift the capnp message by a byte: :func:`encode_data_stream_head` returns preamble and message
as one bytes object for one write. cloudflared itself writes signature, version and message
with three writes, so :class:`StreamHeadReader` takes its input split anywhere. cloudflared
ignores the version's value ("NO-OP for now"); the reader insists on ``"01"``, the only version
there is. An unknown signature makes cloudflared reset the stream (``runStream``).

The metadata conventions of HTTP and TCP streams (``connection/quic_connection.go``) are here
too, as helpers that build and read ``ConnectRequest``/``ConnectResponse`` metadata.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar, cast

import msgspec

from adit.protocol.errors import ProtocolUsageError, QuicMetadataError
from adit.protocol.quic_capnp import (
    ConnectionType,
    ConnectRequest,
    ConnectResponse,
    decode_connect_request,
    decode_connect_response,
    encode_connect_request,
    encode_connect_response,
    framed_length,
)

__all__ = [
    "DATA_STREAM_PREAMBLE",
    "DATA_STREAM_SIGNATURE",
    "FLOW_ID_KEY",
    "FLOW_RATE_LIMITED",
    "HTTP_HEADER_KEY",
    "HTTP_HOST_KEY",
    "HTTP_METHOD_KEY",
    "HTTP_STATUS_KEY",
    "PROTOCOL_VERSION",
    "RPC_STREAM_PREAMBLE",
    "RPC_STREAM_SIGNATURE",
    "TRACE_ID_KEY",
    "TRACING_RESPONSE_KEY",
    "ConnectRequest",
    "ConnectResponse",
    "ConnectionType",
    "HttpRequestHead",
    "HttpResponseHead",
    "StreamHead",
    "StreamHeadReader",
    "StreamSignature",
    "TcpRequestHead",
    "encode_data_stream_head",
    "encode_rpc_stream_head",
    "http_request_metadata",
    "http_response_metadata",
    "parse_http_request",
    "parse_http_response",
    "parse_tcp_request",
    "tcp_connect_request",
]

DATA_STREAM_SIGNATURE = bytes.fromhex("0A36CD12A13E")
RPC_STREAM_SIGNATURE = bytes.fromhex("52BB825CDB65")
PROTOCOL_VERSION = b"01"
DATA_STREAM_PREAMBLE = DATA_STREAM_SIGNATURE + PROTOCOL_VERSION
RPC_STREAM_PREAMBLE = RPC_STREAM_SIGNATURE
"""An RPC stream's preamble is its signature alone: no version (see the module docstring)."""

# Metadata keys (connection/quic_connection.go, tracing/tracing.go, tunnelrpc/pogs).
HTTP_METHOD_KEY = "HttpMethod"
HTTP_HOST_KEY = "HttpHost"
HTTP_HEADER_KEY = "HttpHeader"
HTTP_STATUS_KEY = "HttpStatus"
FLOW_ID_KEY = "FlowID"
TRACE_ID_KEY = "cf-trace-id"
TRACING_RESPONSE_KEY = "Cf-Int-Cloudflared-Tracing"
FLOW_RATE_LIMITED = ("FlowConnectRateLimited", "true")
"""The entry cloudflared adds to an error ConnectResponse when its flow limiter refused."""

_SIGNATURE_LENGTH = 6
_PREAMBLE_LENGTH = len(DATA_STREAM_PREAMBLE)


class StreamSignature(enum.Enum):
    """What a stream carries, by its first six bytes."""

    DATA = DATA_STREAM_SIGNATURE
    RPC = RPC_STREAM_SIGNATURE


def encode_data_stream_head(message: ConnectRequest | ConnectResponse) -> bytes:
    """Preamble and framed ``message`` in one bytes object, to go out in one write."""
    if isinstance(message, ConnectRequest):
        return DATA_STREAM_PREAMBLE + encode_connect_request(message)
    return DATA_STREAM_PREAMBLE + encode_connect_response(message)


def encode_rpc_stream_head() -> bytes:
    """The head of an RPC stream: its signature, after which capnp RPC starts."""
    return RPC_STREAM_PREAMBLE


M = TypeVar("M", bound=ConnectRequest | ConnectResponse)


class StreamHead(msgspec.Struct, Generic[M], frozen=True):
    """A complete stream head: the signature, the data stream's message (None on an RPC
    stream) and the bytes that followed the head in what was fed (body or RPC)."""

    signature: StreamSignature
    message: M | None
    rest: bytes


class StreamHeadReader(Generic[M]):
    """Reads a stream head from bytes fed in pieces of any size.

    ``expect`` is the message a data stream carries in this direction. A ``ConnectRequest``
    reader serves streams the peer opened, which may also be RPC streams (cloudflared's
    ``CloudflaredServer.Serve``); a ``ConnectResponse`` reader reads the answer on a data
    stream we opened, where an RPC signature is an error (``ReadConnectResponseData``).

    Each byte is looked at a bounded number of times; a bad signature or version fails at its
    first wrong byte, and a capnp segment table fails as soon as it exceeds
    ``max_message_size`` (cloudflared's own bound is 64 MiB, go-capnproto2's default).
    """

    def __init__(
        self,
        expect: type[M],
        *,
        max_message_size: int = 64 * 1024,
        rpc_only: bool = False,
    ) -> None:
        if max_message_size < 8:
            raise ValueError("max_message_size must be at least 8 bytes")
        if rpc_only and expect is not ConnectRequest:
            raise ValueError("only a stream the peer opened may be an RPC stream")
        decode = decode_connect_request if expect is ConnectRequest else decode_connect_response
        self._decode: Callable[[bytes], M] = cast("Callable[[bytes], M]", decode)
        self._max_message_size = max_message_size
        self._signatures: tuple[StreamSignature, ...] = (
            (StreamSignature.RPC,)
            if rpc_only
            else (StreamSignature.DATA, StreamSignature.RPC)
            if expect is ConnectRequest
            else (StreamSignature.DATA,)
        )
        self._buffer = bytearray()
        self._signature: StreamSignature | None = None
        self._message_length: int | None = None
        self._done = False

    def feed(self, data: bytes) -> StreamHead[M] | None:
        """Add ``data``; return the head once complete, None while more bytes are needed.

        Raises :class:`QuicMetadataError` for a malformed head; the reader is then spent, like
        the stream. Feeding a reader that already returned its head is a
        :class:`ProtocolUsageError`.
        """
        if self._done:
            raise ProtocolUsageError("this stream's head was already read")
        self._buffer += data
        if self._signature is None:
            self._signature = self._read_signature()
            if self._signature is None:
                return None
            if self._signature is StreamSignature.RPC:
                return self._finish(None, _SIGNATURE_LENGTH)
        if not self._read_version():
            return None
        if self._message_length is None:
            self._message_length = self._read_table()
            if self._message_length is None:
                return None
        end = _PREAMBLE_LENGTH + self._message_length
        if len(self._buffer) < end:
            return None
        self._done = True  # a message that fails to decode spends the reader too
        return self._finish(self._decode(bytes(self._buffer[_PREAMBLE_LENGTH:end])), end)

    def _read_signature(self) -> StreamSignature | None:
        prefix = bytes(self._buffer[:_SIGNATURE_LENGTH])
        candidates = [kind for kind in self._signatures if kind.value.startswith(prefix)]
        if not candidates:
            self._done = True
            if RPC_STREAM_SIGNATURE.startswith(prefix):
                raise QuicMetadataError("RPC stream signature where a data stream answers")
            if DATA_STREAM_SIGNATURE.startswith(prefix):
                raise QuicMetadataError("data stream signature where only RPC streams are taken")
            raise QuicMetadataError(f"unknown stream signature, starting {prefix.hex()}")
        if len(prefix) < _SIGNATURE_LENGTH:
            return None
        return candidates[0]

    def _read_version(self) -> bool:
        version = bytes(self._buffer[_SIGNATURE_LENGTH:_PREAMBLE_LENGTH])
        if not PROTOCOL_VERSION.startswith(version):
            self._done = True
            raise QuicMetadataError(f"unknown data stream version {version!r} (expected b'01')")
        return len(version) == len(PROTOCOL_VERSION)

    def _read_table(self) -> int | None:
        # The view must be released before the buffer grows again, also when the table fails.
        with memoryview(self._buffer) as view:
            try:
                return framed_length(view[_PREAMBLE_LENGTH:], self._max_message_size)
            except QuicMetadataError:
                self._done = True
                raise

    def _finish(self, message: M | None, end: int) -> StreamHead[M]:
        assert self._signature is not None
        self._done = True
        head = StreamHead(
            signature=self._signature, message=message, rest=bytes(self._buffer[end:])
        )
        self._buffer.clear()
        return head


# HTTP streams (connection/quic_connection.go) ------------------------------------------------

# RFC 9110 §5.6.2 token; Go's http.NewRequest and its client check methods and names with it.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Go's httpguts.ValidHeaderFieldValue: no control characters but HTAB.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(r"[1-9][0-9][0-9]")


class HttpRequestHead(msgspec.Struct, frozen=True):
    """The HTTP request an http or websocket ConnectRequest describes (see
    :func:`parse_http_request`); the target stays in ``ConnectRequest.dest``."""

    method: str
    host: str
    headers: tuple[tuple[str, str], ...]


class HttpResponseHead(msgspec.Struct, frozen=True):
    """The HTTP response head a ConnectResponse describes (see :func:`parse_http_response`).

    ``status`` is None when cloudflared answered without one: it failed before the origin
    answered, and ``ConnectResponse.error`` says why.
    """

    status: int | None
    headers: tuple[tuple[str, str], ...]
    flow_rate_limited: bool


def _header_entry(name: str, value: str) -> tuple[str, str]:
    if not name or ":" in name:
        # cloudflared splits the key on ':' and refuses the request unless it gets two parts.
        raise ProtocolUsageError(f"header name {name!r} cannot travel as HttpHeader:<Name>")
    return (f"{HTTP_HEADER_KEY}:{name}", value)


def http_request_metadata(
    method: str, host: str, headers: Iterable[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """Metadata of an http or websocket ConnectRequest: ``HttpMethod``, ``HttpHost`` (the
    public hostname, which cloudflared uses as ``Host`` and for ingress), then one
    ``HttpHeader:<Name>`` entry per header value, a repeated name repeating its key.

    A websocket request adds ``Cf-Cloudflared-Proxy-Connection-Upgrade: websocket`` and the
    ``Sec-WebSocket-*`` headers among ``headers``; the type decides, the header is stripped.
    """
    entries = [(HTTP_METHOD_KEY, method), (HTTP_HOST_KEY, host)]
    entries.extend(_header_entry(name, value) for name, value in headers)
    return tuple(entries)


def http_response_metadata(
    status: int, headers: Iterable[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """Metadata of the ConnectResponse to an http or websocket stream, as cloudflared writes it
    (``httpResponseAdapter.WriteRespHeaders``): ``HttpStatus`` first (101 stays 101), then one
    ``HttpHeader:<Name>`` entry per header value."""
    if not 100 <= status <= 999:
        raise ProtocolUsageError(f"HTTP status {status} is not three digits")
    return ((HTTP_STATUS_KEY, str(status)), *(_header_entry(n, v) for n, v in headers))


def _headers(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The header entries of ``metadata``, by cloudflared's rule (``buildHTTPRequest``): every
    key that *contains* ``HttpHeader`` (case-sensitive ``strings.Contains``, not a prefix test)
    must split on ':' into exactly two parts, the second being the name."""
    headers = []
    for key, value in metadata:
        if HTTP_HEADER_KEY not in key:
            continue
        parts = key.split(":")
        if len(parts) != 2:
            raise QuicMetadataError(f"header key {key!r} does not split on ':' into two parts")
        name = parts[1]
        # cloudflared takes these in, then Go's HTTP client refuses to send them to the origin,
        # which fails the request just the same.
        if not _TOKEN.fullmatch(name):
            raise QuicMetadataError(f"header name {name!r} (key {key!r}) is not a token")
        if _CONTROL.search(value):
            raise QuicMetadataError(f"header {name!r} has a control character in its value")
        headers.append((name, value))
    return tuple(headers)


def parse_http_request(request: ConnectRequest) -> HttpRequestHead:
    """The HTTP request of an http or websocket ConnectRequest, read as cloudflared reads it.

    * ``HttpMethod`` and ``HttpHost``: cloudflared looks them up in a Go map built from the
      metadata (``ConnectRequest.MetadataMap``), so the last entry wins. A missing method is
      GET (Go's ``http.NewRequest``), a missing host is empty; a method that is not a token is
      refused, as ``http.NewRequest`` refuses it.
    * Headers: every key that *contains* ``HttpHeader`` (not only those starting with it) must
      split on ':' into exactly two parts, the name being the second; other keys (``FlowID``...)
      are ignored. Names come back as sent: cloudflared canonicalises them (Go's
      ``Header.Add``), adit does where it builds the origin request.
    * ``dest`` is left to the caller. cloudflared parses it with Go's ``url.Parse`` (an absolute
      ``https://host/path?q`` URL or an origin-form ``/path?q``; a parse error fails the request)
      and keeps only its path and query: ingress matches on ``HttpHost`` and the path, and the
      origin service's scheme and host replace the URL's (``ingress/origin_proxy.go``).

    Raises :class:`QuicMetadataError` where cloudflared would fail the request.
    """
    if request.type is ConnectionType.TCP:
        raise ProtocolUsageError("a tcp ConnectRequest carries no HTTP request")
    method = host = ""
    for key, value in request.metadata:
        if key == HTTP_METHOD_KEY:
            method = value
        elif key == HTTP_HOST_KEY:
            host = value
    method = method or "GET"
    if not _TOKEN.fullmatch(method):
        raise QuicMetadataError(f"HttpMethod {method!r} is not a token")
    return HttpRequestHead(method=method, host=host, headers=_headers(request.metadata))


def parse_http_response(response: ConnectResponse) -> HttpResponseHead:
    """The HTTP response head of a ConnectResponse from an http or websocket stream.

    cloudflared writes at most one ``HttpStatus``; two, or one that is not a three-digit
    status, are refused rather than guessed between. ``flow_rate_limited`` is set by the exact
    :data:`FLOW_RATE_LIMITED` entry.
    """
    status: int | None = None
    for key, value in response.metadata:
        if key != HTTP_STATUS_KEY:
            continue
        if status is not None:
            raise QuicMetadataError("ConnectResponse has two HttpStatus entries")
        if not _STATUS.fullmatch(value):
            raise QuicMetadataError(f"HttpStatus {value!r} is not a three-digit status")
        status = int(value)
    return HttpResponseHead(
        status=status,
        headers=_headers(response.metadata),
        flow_rate_limited=FLOW_RATE_LIMITED in response.metadata,
    )


# TCP streams ---------------------------------------------------------------------------------

# Go's strconv.ParseUint(port, 10, 16) takes leading zeros; at most 5 digits follow them.
_PORT = re.compile(r"0*([0-9]{1,5})")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TcpRequestHead(msgspec.Struct, frozen=True):
    """The destination and labels of a tcp ConnectRequest (see :func:`parse_tcp_request`)."""

    address: _IPAddress
    port: int
    flow_id: str
    trace_id: str


def tcp_connect_request(
    address: _IPAddress, port: int, *, flow_id: str = "", trace_id: str = ""
) -> ConnectRequest:
    """A tcp ConnectRequest: ``dest`` is ``ip:port`` (``[v6]:port``), then ``FlowID`` and
    ``cf-trace-id`` entries when given (cloudflared logs the one and traces with the other)."""
    if not 0 <= port <= 0xFFFF:
        raise ProtocolUsageError(f"port {port} is not a 16-bit port")
    host = f"[{address}]" if address.version == 6 else str(address)
    metadata = [(FLOW_ID_KEY, flow_id)] if flow_id else []
    if trace_id:
        metadata.append((TRACE_ID_KEY, trace_id))
    return ConnectRequest(dest=f"{host}:{port}", type=ConnectionType.TCP, metadata=tuple(metadata))


def parse_tcp_request(request: ConnectRequest) -> TcpRequestHead:
    """The destination of a tcp ConnectRequest, read as cloudflared reads it.

    ``dest`` must be what Go's ``netip.ParseAddrPort`` takes (``proxy.ProxyTCP``): a dotted IPv4
    address or a bracketed IPv6 one (zone allowed), a colon and a decimal port; no hostnames.
    ``FlowID`` and ``cf-trace-id`` come from the metadata map, so the last entry wins.
    """
    if request.type is not ConnectionType.TCP:
        raise ProtocolUsageError(f"a {request.type.name.lower()} ConnectRequest is not tcp")
    host, colon, digits = request.dest.rpartition(":")
    port = _PORT.fullmatch(digits)
    if not colon or port is None or int(port[1]) > 0xFFFF:
        raise QuicMetadataError(f"tcp dest {request.dest!r} is not ip:port")
    try:
        if host.startswith("[") and host.endswith("]"):
            address: _IPAddress = ipaddress.IPv6Address(host[1:-1])
        else:
            address = ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise QuicMetadataError(f"tcp dest {request.dest!r} is not ip:port: {exc}") from None
    values = dict(request.metadata)
    return TcpRequestHead(
        address=address,
        port=int(port[1]),
        flow_id=values.get(FLOW_ID_KEY, ""),
        trace_id=values.get(TRACE_ID_KEY, ""),
    )
