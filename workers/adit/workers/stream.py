"""The seam between edge transports and origin proxying (cloudflared's ``OriginProxy``).

A transport (HTTP/2 today, QUIC later) turns each eyeball request into a :class:`TunnelStream`;
the proxy serves it without knowing the transport.
"""

from __future__ import annotations

import enum
from typing import Protocol

import msgspec


class StreamKind(enum.Enum):
    """How the edge asked for this stream (PROTOCOL.md §4.2)."""

    HTTP = "http"
    WEBSOCKET = "websocket"
    TCP = "tcp"


class ResponseSource(enum.Enum):
    """``cf-cloudflared-response-meta`` ``src``: who produced the response."""

    ORIGIN = "origin"
    CONNECTOR = "cloudflared"
    #: The connector refused a private flow for ``--max-active-flows`` (cloudflared's
    #: ``flow_rate_limited`` meta over HTTP/2, ``FlowConnectRateLimited`` over QUIC).
    FLOW_RATE_LIMITED = "cloudflared, flow rate limited"


class IncomingRequest(msgspec.Struct, frozen=True):
    """An eyeball request as the edge forwarded it.

    ``headers`` keep the eyeball's order and repeated names; names are as received on the
    tunnel (HTTP/2 lower-cases them). ``host`` is the public hostname without port.
    """

    kind: StreamKind
    method: str
    path: str  # path and query, e.g. "/a/b?x=1"
    authority: str  # ":authority" as sent by the edge (public host[:port], or ip:port for TCP)
    host: str
    headers: tuple[tuple[str, str], ...]
    conn_index: int = 0
    #: The edge ended the stream with the request head (END_STREAM on HEADERS): no body.
    end_stream: bool = False


class TunnelStream(Protocol):
    """One edge-initiated stream, from the proxy's point of view.

    ``read`` returns ``b""`` once the edge ended its side, and is safe to cancel: nothing is
    taken from the stream until a read returns (the body probe relies on it). ``write`` waits
    while the edge's flow-control window is closed (back-pressure: never buffers a whole body).
    """

    request: IncomingRequest

    async def read(self) -> bytes: ...

    async def send_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        source: ResponseSource = ResponseSource.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        """The response head, then ``body`` (a whole small body already in memory), then
        the end of the stream when ``end_stream``."""

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    def reset(self) -> None: ...

    @property
    def response_started(self) -> bool: ...
