"""Errors of the wire protocol. Every one means: the peer broke the protocol; fail that peer.

A daemon catches :class:`ProtocolError` around each connection and never dies of one.
(Shared file: the RPC layer adds its own subclasses below.)
"""

from __future__ import annotations

__all__ = [
    "BadRequestTarget",
    "DatagramError",
    "FramingError",
    "HeaderDecodeError",
    "Http2FloodError",
    "Http2TunnelError",
    "ProtocolError",
    "ProtocolUsageError",
    "QuicMetadataError",
    "RpcProtocolError",
]


class ProtocolError(Exception):
    """Base class: the remote side sent something this protocol does not allow."""


class HeaderDecodeError(ProtocolError):
    """A serialised header value (``cf-cloudflared-*-headers``) could not be decoded."""


class BadRequestTarget(ProtocolError):
    """An eyeball's request target is not one unambiguous path of the host it is sent to
    (:mod:`adit.protocol.request_target`): the edge answers 400 and forwards nothing."""


class Http2TunnelError(ProtocolError):
    """The HTTP/2 layer of a tunnel connection failed (bad frames, bad headers).

    ``error_code`` is the HTTP/2 error code (RFC 9113 §7) the GOAWAY that ends the connection
    carries: PROTOCOL_ERROR unless the failure has a more precise one.
    """

    #: PROTOCOL_ERROR.
    error_code: int = 0x1

    def __init__(self, message: str, error_code: int | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code


class Http2FloodError(Http2TunnelError):
    """The peer sent more frames of some kind than any legitimate peer does (a flood)."""

    #: ENHANCE_YOUR_CALM (RFC 9113 §7).
    error_code = 0xB


class RpcProtocolError(ProtocolError):
    """The peer's Cap'n Proto RPC byte stream is malformed or breaks the RPC rules."""


class FramingError(RpcProtocolError):
    """A Cap'n Proto stream-framing header is absurd (too many or too large segments)."""


class QuicMetadataError(ProtocolError):
    """The head of a QUIC stream is malformed: an unknown signature or version, or a
    ``ConnectRequest``/``ConnectResponse`` that is not a valid struct of its type (PROTOCOL.md
    §3.3, §5.2-§5.4). The stream is reset; the connection lives on."""


class DatagramError(ProtocolError):
    """A QUIC DATAGRAM payload is not a valid datagram v2 or v3 (PROTOCOL.md §6).

    Datagrams are unreliable and unordered: the receiver drops the one datagram, as cloudflared
    does, and keeps the connection.
    """


class ProtocolUsageError(Exception):
    """Our own code used a protocol object in a way its state does not allow.

    Deliberately not a :class:`ProtocolError`: it is a bug on this side, not the peer's fault, and
    must not be mistaken for (and silently handled as) a misbehaving peer.
    """
