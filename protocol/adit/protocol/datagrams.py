"""QUIC DATAGRAM payloads of the tunnel: datagram v2 and v3 (PROTOCOL.md §6), sans-IO.

**v2** (``quic/datagramv2.go``, ``quic/datagram.go``) puts the type byte *last*, after a trailer:
``payload ‖ sessionId(16) ‖ 0x00`` for a UDP session (registered beforehand over RPC),
``packet ‖ 0x01`` for an IP packet (ICMP), ``packet ‖ identity(25) ‖ 0x02`` for a traced one,
``spans ‖ identity(25) ‖ 0x03`` for tracing spans. cloudflared refuses to send a UDP payload over
:data:`MAX_UDP_PAYLOAD` or a datagram over :data:`MAX_DATAGRAM_FRAME_SIZE`; on receipt it checks
only that the trailer fits. We refuse on receipt what no cloudflared would send, too.

**v3** (``quic/v3/datagram.go``, ``quic/v3/request.go``) puts the type byte *first* and
registers sessions in-band: registration (0x00), payload (0x01), ICMP (0x02), registration
response (0x03). Request ids are 128-bit big-endian integers. The decoders refuse what
cloudflared's ``UnmarshalBinary`` methods refuse, with the same bounds, and also the short
registrations it does not check for (it slices past their end and panics). Where cloudflared
ignores bytes (unknown flag bits, bytes after a registration that is not flagged as bundled,
bytes after a response's error message) we ignore them too: that is where the format can grow.

Malformed input raises :class:`~adit.protocol.errors.DatagramError`; the receiver drops that
datagram, as cloudflared does. Encoders raise :class:`~adit.protocol.errors.ProtocolUsageError`
for values that cannot be sent.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import uuid
from collections.abc import Iterable

import msgspec

from adit.protocol.errors import DatagramError, ProtocolUsageError

__all__ = [
    "MAX_DATAGRAM_FRAME_SIZE",
    "MAX_REGISTRATION_MESSAGE",
    "MAX_UDP_PAYLOAD",
    "PAYLOAD_HEADER_V3",
    "REGISTRATION_HEADER_V3_IPV4",
    "REGISTRATION_HEADER_V3_IPV6",
    "REGISTRATION_RESPONSE_HEADER_V3",
    "REQUEST_ID_LENGTH",
    "SESSION_ID_LENGTH",
    "TRACING_IDENTITY_LENGTH",
    "DatagramV2",
    "DatagramV2Type",
    "DatagramV3",
    "DatagramV3Type",
    "DatagramVersion",
    "IcmpDatagramV3",
    "IpPacketDatagramV2",
    "PayloadDatagramV3",
    "RegistrationDatagramV3",
    "RegistrationResponseDatagramV3",
    "RegistrationStatus",
    "TracedIpPacketDatagramV2",
    "TracingSpansDatagramV2",
    "UdpDatagramV2",
    "datagram_version",
    "decode_datagram_v2",
    "decode_datagram_v3",
    "encode_icmp_datagram_v3",
    "encode_ip_packet_datagram_v2",
    "encode_payload_datagram_v3",
    "encode_registration_datagram_v3",
    "encode_registration_response_datagram_v3",
    "encode_traced_ip_packet_datagram_v2",
    "encode_tracing_spans_datagram_v2",
    "encode_udp_datagram_v2",
]

MAX_UDP_PAYLOAD = 1280
"""Largest UDP payload (and v3 ICMP packet) either version carries: the WARP client's packet
size (``maxDatagramPayloadSize`` in quic/param_unix.go, ``maxDatagramPayloadLen`` in v3)."""

MAX_DATAGRAM_FRAME_SIZE = 1350
"""Largest v2 datagram cloudflared sends, type byte included (quic/param_unix.go; 1220 on
Windows, where path MTU discovery is off)."""

SESSION_ID_LENGTH = 16
TRACING_IDENTITY_LENGTH = 25
"""Trace id (16), span id (8), flags (1): tracing/identity.go ``IdentityLength``."""

REQUEST_ID_LENGTH = 16
REGISTRATION_HEADER_V3_IPV4 = 26
"""type, flags, port u16, idle seconds u16, request id, IPv4 address."""
REGISTRATION_HEADER_V3_IPV6 = 38
PAYLOAD_HEADER_V3 = 1 + REQUEST_ID_LENGTH
REGISTRATION_RESPONSE_HEADER_V3 = 20
"""type, response type, request id, error message length u16."""
MAX_REGISTRATION_MESSAGE = MAX_UDP_PAYLOAD - REGISTRATION_RESPONSE_HEADER_V3
"""1260: the response's error message and header stay within :data:`MAX_UDP_PAYLOAD`."""


class DatagramVersion(enum.Enum):
    """The two datagram protocols, by the feature a connector announces for each
    (features/features.go)."""

    V2 = "support_datagram_v2"
    V3 = "support_datagram_v3_2"


def datagram_version(features: Iterable[str]) -> DatagramVersion | None:
    """The datagram version of a connector announcing ``features`` (None: it takes no UDP).

    cloudflared announces ``support_datagram_v3_2`` *beside* its default
    ``support_datagram_v2`` when v3 is on (features/selector.go ``clientFeatures``): v3 is
    looked for first.
    """
    announced = set(features)
    for version in (DatagramVersion.V3, DatagramVersion.V2):
        if version.value in announced:
            return version
    return None


_U16 = struct.Struct(">H")
_REQUEST_IDS = range(1 << 128)
_U16_RANGE = range(1 << 16)


# v2 ----------------------------------------------------------------------------------------------


class DatagramV2Type(enum.IntEnum):
    """The last byte of a v2 datagram."""

    UDP = 0
    IP = 1
    IP_WITH_TRACE = 2
    TRACING_SPAN = 3


class UdpDatagramV2(msgspec.Struct, frozen=True):
    """A UDP payload of a session registered over RPC (``registerUdpSession``)."""

    session_id: uuid.UUID
    payload: bytes


class IpPacketDatagramV2(msgspec.Struct, frozen=True):
    """A raw IP packet for cloudflared's packet router (ICMP)."""

    packet: bytes


class TracedIpPacketDatagramV2(msgspec.Struct, frozen=True):
    """A raw IP packet with the tracing identity it should be traced under."""

    packet: bytes
    identity: bytes


class TracingSpansDatagramV2(msgspec.Struct, frozen=True):
    """Protobuf OTLP spans and the tracing identity they belong to."""

    spans: bytes
    identity: bytes


DatagramV2 = UdpDatagramV2 | IpPacketDatagramV2 | TracedIpPacketDatagramV2 | TracingSpansDatagramV2


def _frame_v2(body: bytes, kind: DatagramV2Type) -> bytes:
    if len(body) + 1 > MAX_DATAGRAM_FRAME_SIZE:
        # quic.SuffixType refuses the same.
        raise ProtocolUsageError(
            f"a v2 datagram of {len(body) + 1} bytes exceeds {MAX_DATAGRAM_FRAME_SIZE}"
        )
    return body + bytes((kind,))


def _identity(identity: bytes) -> bytes:
    if len(identity) != TRACING_IDENTITY_LENGTH:
        raise ProtocolUsageError(f"a tracing identity is {TRACING_IDENTITY_LENGTH} bytes")
    return identity


def encode_udp_datagram_v2(session_id: uuid.UUID, payload: bytes) -> bytes:
    """``payload ‖ session id ‖ 0x00``; cloudflared drops payloads over :data:`MAX_UDP_PAYLOAD`
    before sending (``DatagramMuxerV2.SendToSession``), so we refuse them."""
    if len(payload) > MAX_UDP_PAYLOAD:
        raise ProtocolUsageError(f"a UDP payload of {len(payload)} bytes exceeds {MAX_UDP_PAYLOAD}")
    return _frame_v2(payload + session_id.bytes, DatagramV2Type.UDP)


def encode_ip_packet_datagram_v2(packet: bytes) -> bytes:
    """``packet ‖ 0x01``."""
    return _frame_v2(packet, DatagramV2Type.IP)


def encode_traced_ip_packet_datagram_v2(packet: bytes, identity: bytes) -> bytes:
    """``packet ‖ identity ‖ 0x02``."""
    return _frame_v2(packet + _identity(identity), DatagramV2Type.IP_WITH_TRACE)


def encode_tracing_spans_datagram_v2(spans: bytes, identity: bytes) -> bytes:
    """``spans ‖ identity ‖ 0x03``."""
    return _frame_v2(spans + _identity(identity), DatagramV2Type.TRACING_SPAN)


def decode_datagram_v2(data: bytes) -> DatagramV2:
    """The v2 datagram in ``data`` (one DATAGRAM frame payload)."""
    if not data:
        raise DatagramError("empty v2 datagram (no type byte)")
    if len(data) > MAX_DATAGRAM_FRAME_SIZE:
        raise DatagramError(f"v2 datagram of {len(data)} bytes exceeds {MAX_DATAGRAM_FRAME_SIZE}")
    kind, body = data[-1], data[:-1]
    if kind == DatagramV2Type.UDP:
        if len(body) < SESSION_ID_LENGTH:
            raise DatagramError(f"v2 UDP datagram of {len(data)} bytes lacks a session id")
        payload = body[:-SESSION_ID_LENGTH]
        if len(payload) > MAX_UDP_PAYLOAD:
            raise DatagramError(f"v2 UDP payload of {len(payload)} bytes exceeds {MAX_UDP_PAYLOAD}")
        return UdpDatagramV2(uuid.UUID(bytes=body[-SESSION_ID_LENGTH:]), payload)
    if kind == DatagramV2Type.IP:
        return IpPacketDatagramV2(body)
    if kind in (DatagramV2Type.IP_WITH_TRACE, DatagramV2Type.TRACING_SPAN):
        if len(body) < TRACING_IDENTITY_LENGTH:
            raise DatagramError(
                f"v2 traced datagram of {len(data)} bytes has no room for a tracing identity"
            )
        content, identity = body[:-TRACING_IDENTITY_LENGTH], body[-TRACING_IDENTITY_LENGTH:]
        if kind == DatagramV2Type.IP_WITH_TRACE:
            return TracedIpPacketDatagramV2(content, identity)
        return TracingSpansDatagramV2(content, identity)
    raise DatagramError(f"unknown v2 datagram type {kind}")


# v3 ----------------------------------------------------------------------------------------------


class DatagramV3Type(enum.IntEnum):
    """The first byte of a v3 datagram."""

    REGISTRATION = 0x00
    PAYLOAD = 0x01
    ICMP = 0x02
    REGISTRATION_RESPONSE = 0x03


class RegistrationStatus(enum.IntEnum):
    """A registration response's type (cloudflared sends only OK, UNABLE_TO_BIND_SOCKET for any
    failure it has no other code for, and TOO_MANY_ACTIVE_FLOWS: quic/v3/muxer.go)."""

    OK = 0x00
    DESTINATION_UNREACHABLE = 0x01
    UNABLE_TO_BIND_SOCKET = 0x02
    TOO_MANY_ACTIVE_FLOWS = 0x03
    ERROR_WITH_MESSAGE = 0xFF


_STATUSES = {status.value: status for status in RegistrationStatus}

# Registration flags (quic/v3/datagram.go); the other five bits are unassigned and ignored.
_FLAG_IPV6 = 0b001
_FLAG_TRACED = 0b010
_FLAG_BUNDLED = 0b100


class RegistrationDatagramV3(msgspec.Struct, frozen=True):
    """Edge → connector: open (or refresh, or migrate here) the UDP flow ``request_id`` to
    ``address``:``port``, idle for at most ``idle_seconds``; ``payload`` is a first UDP payload
    bundled with it, if any."""

    request_id: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    idle_seconds: int
    traced: bool = False
    payload: bytes = b""


class PayloadDatagramV3(msgspec.Struct, frozen=True):
    """A UDP payload of flow ``request_id``, either way."""

    request_id: int
    payload: bytes


class IcmpDatagramV3(msgspec.Struct, frozen=True):
    """A raw ICMPv4 or ICMPv6 IP packet, either way."""

    packet: bytes


class RegistrationResponseDatagramV3(msgspec.Struct, frozen=True):
    """Connector → edge: the outcome of a registration."""

    request_id: int
    status: RegistrationStatus
    message: str = ""


DatagramV3 = (
    RegistrationDatagramV3 | PayloadDatagramV3 | IcmpDatagramV3 | RegistrationResponseDatagramV3
)


def _request_id(request_id: int) -> bytes:
    if request_id not in _REQUEST_IDS:
        raise ProtocolUsageError(f"request id {request_id} is not a 128-bit unsigned integer")
    return request_id.to_bytes(REQUEST_ID_LENGTH, "big")


def _u16(name: str, value: int) -> bytes:
    if value not in _U16_RANGE:
        # cloudflared's uint16() conversion would wrap it silently.
        raise ProtocolUsageError(f"{name} {value} does not fit in 16 bits")
    return _U16.pack(value)


def _bounded(name: str, data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise ProtocolUsageError(f"{name} of {len(data)} bytes exceeds {limit}")
    return data


def encode_registration_datagram_v3(
    request_id: int,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    *,
    idle_seconds: int,
    traced: bool = False,
    payload: bytes = b"",
) -> bytes:
    """A registration: ``0x00, flags, port, idle seconds, request id, address[, payload]``.

    The bundled flag is set exactly when there is a payload, as cloudflared sets it. The payload
    is held to :data:`MAX_UDP_PAYLOAD`, what a payload datagram could carry; cloudflared's own
    check adds the header length to that bound (1306/1318 bytes), against the "max 1254/1242"
    its tests describe.
    """
    flags = (_FLAG_IPV6 if address.version == 6 else 0) | (_FLAG_TRACED if traced else 0)
    if payload:
        flags |= _FLAG_BUNDLED
    return b"".join(
        (
            bytes((DatagramV3Type.REGISTRATION, flags)),
            _u16("port", port),
            _u16("idle_seconds", idle_seconds),
            _request_id(request_id),
            address.packed,
            _bounded("bundled payload", payload, MAX_UDP_PAYLOAD),
        )
    )


def encode_payload_datagram_v3(request_id: int, payload: bytes) -> bytes:
    """``0x01, request id, payload`` (payload at most :data:`MAX_UDP_PAYLOAD`)."""
    _bounded("UDP payload", payload, MAX_UDP_PAYLOAD)
    return bytes((DatagramV3Type.PAYLOAD,)) + _request_id(request_id) + payload


def encode_icmp_datagram_v3(packet: bytes) -> bytes:
    """``0x02, packet`` (1 to :data:`MAX_UDP_PAYLOAD` bytes, as ``ICMPDatagram.MarshalBinary``)."""
    if not packet:
        raise ProtocolUsageError("an ICMP datagram needs a packet")
    return bytes((DatagramV3Type.ICMP,)) + _bounded("ICMP packet", packet, MAX_UDP_PAYLOAD)


def encode_registration_response_datagram_v3(
    request_id: int, status: RegistrationStatus, message: str = ""
) -> bytes:
    """``0x03, status, request id, message length u16, message`` (UTF-8, at most
    :data:`MAX_REGISTRATION_MESSAGE` bytes)."""
    try:
        raw = message.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolUsageError(f"registration message is not UTF-8 text: {exc}") from None
    _bounded("registration message", raw, MAX_REGISTRATION_MESSAGE)
    head = bytes((DatagramV3Type.REGISTRATION_RESPONSE, RegistrationStatus(status)))
    return head + _request_id(request_id) + _U16.pack(len(raw)) + raw


def decode_datagram_v3(data: bytes) -> DatagramV3:
    """The v3 datagram in ``data`` (one DATAGRAM frame payload)."""
    if not data:
        raise DatagramError("empty v3 datagram (no type byte)")
    kind = data[0]
    if kind == DatagramV3Type.REGISTRATION:
        return _decode_registration(data)
    if kind == DatagramV3Type.PAYLOAD:
        # UDPSessionPayloadDatagram.UnmarshalBinary's bounds.
        if not PAYLOAD_HEADER_V3 <= len(data) <= PAYLOAD_HEADER_V3 + MAX_UDP_PAYLOAD:
            raise DatagramError(f"v3 payload datagram of {len(data)} bytes (17 to 1297 allowed)")
        return PayloadDatagramV3(_read_request_id(data, 1), data[PAYLOAD_HEADER_V3:])
    if kind == DatagramV3Type.ICMP:
        if len(data) == 1:
            raise DatagramError("v3 ICMP datagram without a packet")
        if len(data) - 1 > MAX_UDP_PAYLOAD:
            raise DatagramError(f"v3 ICMP packet of {len(data) - 1} bytes exceeds 1280")
        return IcmpDatagramV3(data[1:])
    if kind == DatagramV3Type.REGISTRATION_RESPONSE:
        return _decode_response(data)
    raise DatagramError(f"unknown v3 datagram type {kind}")


def _read_request_id(data: bytes, start: int) -> int:
    return int.from_bytes(data[start : start + REQUEST_ID_LENGTH], "big")


def _decode_registration(data: bytes) -> RegistrationDatagramV3:
    ipv6 = len(data) > 1 and data[1] & _FLAG_IPV6
    header = REGISTRATION_HEADER_V3_IPV6 if ipv6 else REGISTRATION_HEADER_V3_IPV4
    if len(data) < header:
        # cloudflared does not check this and panics slicing past the end.
        raise DatagramError(f"v3 registration of {len(data)} bytes is shorter than its header")
    flags = data[1]
    address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
        ipaddress.IPv6Address(data[22:38]) if ipv6 else ipaddress.IPv4Address(data[22:26])
    )
    payload = data[header:] if flags & _FLAG_BUNDLED else b""
    if len(payload) > MAX_UDP_PAYLOAD:
        raise DatagramError(f"v3 bundled payload of {len(payload)} bytes exceeds 1280")
    return RegistrationDatagramV3(
        request_id=_read_request_id(data, 6),
        address=address,
        port=_U16.unpack_from(data, 2)[0],
        idle_seconds=_U16.unpack_from(data, 4)[0],
        traced=bool(flags & _FLAG_TRACED),
        payload=payload,
    )


def _decode_response(data: bytes) -> RegistrationResponseDatagramV3:
    # UDPSessionRegistrationResponseDatagram.UnmarshalBinary's checks, in its order.
    if len(data) < REGISTRATION_RESPONSE_HEADER_V3:
        raise DatagramError(f"v3 registration response of {len(data)} bytes is too short")
    status = _STATUSES.get(data[1])
    if status is None:
        raise DatagramError(f"v3 registration response of unknown type {data[1]:#04x}")
    length: int = _U16.unpack_from(data, 18)[0]
    if length > MAX_REGISTRATION_MESSAGE:
        raise DatagramError(f"v3 registration message length {length} exceeds 1260")
    if len(data) - REGISTRATION_RESPONSE_HEADER_V3 < length:
        raise DatagramError(f"v3 registration message length {length} overruns the datagram")
    # Exactly ``length`` bytes; cloudflared takes everything after the header when length > 0.
    raw = data[REGISTRATION_RESPONSE_HEADER_V3 : REGISTRATION_RESPONSE_HEADER_V3 + length]
    return RegistrationResponseDatagramV3(
        request_id=_read_request_id(data, 2),
        status=status,
        message=raw.decode("utf-8", "replace"),
    )
