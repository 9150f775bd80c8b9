"""Datagram v2 and v3 codecs (PROTOCOL.md §6): cloudflared's bytes, its layouts, its bounds.

v2 is checked against the captured datagrams; v3 was never captured, so its layouts are spelled
out byte by byte from the diagrams in cloudflared's quic/v3/datagram.go.
"""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol import datagrams
from adit.protocol.datagrams import (
    MAX_DATAGRAM_FRAME_SIZE,
    MAX_REGISTRATION_MESSAGE,
    MAX_UDP_PAYLOAD,
    DatagramV2,
    DatagramV3,
    IcmpDatagramV3,
    IpPacketDatagramV2,
    PayloadDatagramV3,
    RegistrationDatagramV3,
    RegistrationResponseDatagramV3,
    RegistrationStatus,
    TracedIpPacketDatagramV2,
    TracingSpansDatagramV2,
    UdpDatagramV2,
    decode_datagram_v2,
    decode_datagram_v3,
    encode_icmp_datagram_v3,
    encode_ip_packet_datagram_v2,
    encode_payload_datagram_v3,
    encode_registration_datagram_v3,
    encode_registration_response_datagram_v3,
    encode_traced_ip_packet_datagram_v2,
    encode_tracing_spans_datagram_v2,
    encode_udp_datagram_v2,
)
from adit.protocol.errors import DatagramError, ProtocolError, ProtocolUsageError

CORPUS = Path(__file__).parents[2] / "corpus" / "quic" / "datagram_v2"
SESSION = uuid.UUID("0badcafe-0000-4000-8000-00000000d00d")
IDENTITY = bytes(range(25))
REQUEST_ID = 0x0102030405060708090A0B0C0D0E0F10
REQUEST_ID_HEX = "0102030405060708090a0b0c0d0e0f10"


def refused(decode: object, data: bytes, match: str) -> None:
    assert callable(decode)
    with pytest.raises(DatagramError, match=match) as caught:
        decode(data)
    assert isinstance(caught.value, ProtocolError)


# v2 --------------------------------------------------------------------------------------------


def test_v2_vectors() -> None:
    edge = (CORPUS / "edge_to_cloudflared.bin").read_bytes()
    cfd = (CORPUS / "cloudflared_to_edge.bin").read_bytes()
    assert decode_datagram_v2(edge) == UdpDatagramV2(SESSION, b"udp-payload")
    assert decode_datagram_v2(cfd) == UdpDatagramV2(SESSION, b"udp-echo:udp-payload")
    # cloudflared's bytes are authoritative: ours are the same.
    assert encode_udp_datagram_v2(SESSION, b"udp-echo:udp-payload") == cfd


def test_v2_layouts() -> None:
    assert encode_udp_datagram_v2(SESSION, b"p") == b"p" + SESSION.bytes + b"\x00"
    assert encode_ip_packet_datagram_v2(b"pkt") == b"pkt\x01"
    assert encode_traced_ip_packet_datagram_v2(b"pkt", IDENTITY) == b"pkt" + IDENTITY + b"\x02"
    assert encode_tracing_spans_datagram_v2(b"sp", IDENTITY) == b"sp" + IDENTITY + b"\x03"


identities = st.binary(min_size=25, max_size=25)
v2_datagrams = st.one_of(
    st.builds(UdpDatagramV2, st.uuids(), st.binary(max_size=MAX_UDP_PAYLOAD)),
    st.builds(IpPacketDatagramV2, st.binary(max_size=MAX_DATAGRAM_FRAME_SIZE - 1)),
    st.builds(TracedIpPacketDatagramV2, st.binary(max_size=1324), identities),
    st.builds(TracingSpansDatagramV2, st.binary(max_size=1324), identities),
)


def encode_v2(datagram: DatagramV2) -> bytes:
    match datagram:
        case UdpDatagramV2(session_id, payload):
            return encode_udp_datagram_v2(session_id, payload)
        case IpPacketDatagramV2(packet):
            return encode_ip_packet_datagram_v2(packet)
        case TracedIpPacketDatagramV2(packet, identity):
            return encode_traced_ip_packet_datagram_v2(packet, identity)
        case TracingSpansDatagramV2(spans, identity):
            return encode_tracing_spans_datagram_v2(spans, identity)


@given(v2_datagrams)
def test_v2_round_trip(datagram: DatagramV2) -> None:
    encoded = encode_v2(datagram)
    assert len(encoded) <= MAX_DATAGRAM_FRAME_SIZE
    assert decode_datagram_v2(encoded) == datagram


def test_v2_refusals() -> None:
    refused(decode_datagram_v2, b"", "empty")
    refused(decode_datagram_v2, bytes(MAX_DATAGRAM_FRAME_SIZE) + b"\x01", "exceeds 1350")
    decode_datagram_v2(bytes(MAX_DATAGRAM_FRAME_SIZE - 1) + b"\x01")
    refused(decode_datagram_v2, bytes(15) + b"\x00", "lacks a session id")
    assert decode_datagram_v2(bytes(16) + b"\x00") == UdpDatagramV2(uuid.UUID(int=0), b"")
    refused(decode_datagram_v2, bytes(1281 + 16) + b"\x00", "payload of 1281")
    refused(decode_datagram_v2, bytes(24) + b"\x02", "tracing identity")
    refused(decode_datagram_v2, bytes(24) + b"\x03", "tracing identity")
    assert decode_datagram_v2(IDENTITY + b"\x03") == TracingSpansDatagramV2(b"", IDENTITY)
    refused(decode_datagram_v2, b"x\x04", "unknown v2 datagram type 4")


def test_v2_encoder_bounds() -> None:
    with pytest.raises(ProtocolUsageError, match="1281"):
        encode_udp_datagram_v2(SESSION, bytes(MAX_UDP_PAYLOAD + 1))
    with pytest.raises(ProtocolUsageError, match="1351"):
        encode_ip_packet_datagram_v2(bytes(MAX_DATAGRAM_FRAME_SIZE))
    with pytest.raises(ProtocolUsageError, match="1351"):
        encode_tracing_spans_datagram_v2(bytes(1325), IDENTITY)
    for identity in (IDENTITY[:-1], IDENTITY + b"x"):
        with pytest.raises(ProtocolUsageError, match="25 bytes"):
            encode_traced_ip_packet_datagram_v2(b"p", identity)


# v3 layouts ------------------------------------------------------------------------------------

V4 = ipaddress.IPv4Address("1.1.1.1")
V6 = ipaddress.IPv6Address("fc00::1")


def test_v3_registration_layout() -> None:
    # type, flags, port, idle seconds, request id, address (quic/v3/datagram.go diagram).
    v4 = encode_registration_datagram_v3(REQUEST_ID, V4, 8080, idle_seconds=5)
    assert v4.hex() == "00" + "00" + "1f90" + "0005" + REQUEST_ID_HEX + "01010101"
    v6 = encode_registration_datagram_v3(
        REQUEST_ID, V6, 53, idle_seconds=65535, traced=True, payload=b"\xff\xaa"
    )
    assert v6.hex() == (
        "00" + "07" + "0035" + "ffff" + REQUEST_ID_HEX + "fc00" + "00" * 13 + "01" + "ffaa"
    )
    assert len(v4) == 26 and len(v6) == 38 + 2


def test_v3_other_layouts() -> None:
    assert encode_payload_datagram_v3(REQUEST_ID, b"hi").hex() == "01" + REQUEST_ID_HEX + "6869"
    assert encode_icmp_datagram_v3(b"\x45\x00").hex() == "024500"
    ok = encode_registration_response_datagram_v3(REQUEST_ID, RegistrationStatus.OK)
    assert ok.hex() == "03" + "00" + REQUEST_ID_HEX + "0000"
    failed = encode_registration_response_datagram_v3(
        REQUEST_ID, RegistrationStatus.ERROR_WITH_MESSAGE, "no"
    )
    assert failed.hex() == "03" + "ff" + REQUEST_ID_HEX + "0002" + "6e6f"


request_ids = st.integers(min_value=0, max_value=(1 << 128) - 1)
payloads = st.binary(max_size=MAX_UDP_PAYLOAD)
v3_datagrams = st.one_of(
    st.builds(
        RegistrationDatagramV3,
        request_ids,
        st.ip_addresses(),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.booleans(),
        payloads,
    ),
    st.builds(PayloadDatagramV3, request_ids, payloads),
    st.builds(IcmpDatagramV3, st.binary(min_size=1, max_size=MAX_UDP_PAYLOAD)),
    st.builds(
        RegistrationResponseDatagramV3,
        request_ids,
        st.sampled_from(RegistrationStatus),
        st.text(st.characters(exclude_categories=["Cs"]), max_size=300),
    ),
)


def encode_v3(datagram: DatagramV3) -> bytes:
    match datagram:
        case RegistrationDatagramV3(request_id, address, port, idle, traced, payload):
            return encode_registration_datagram_v3(
                request_id, address, port, idle_seconds=idle, traced=traced, payload=payload
            )
        case PayloadDatagramV3(request_id, payload):
            return encode_payload_datagram_v3(request_id, payload)
        case IcmpDatagramV3(packet):
            return encode_icmp_datagram_v3(packet)
        case RegistrationResponseDatagramV3(request_id, status, message):
            return encode_registration_response_datagram_v3(request_id, status, message)


@given(v3_datagrams)
def test_v3_round_trip(datagram: DatagramV3) -> None:
    assert decode_datagram_v3(encode_v3(datagram)) == datagram


# v3 leniency where cloudflared is lenient (room for the format to grow) ------------------------


def test_v3_registration_ignores_what_cloudflared_ignores() -> None:
    plain = encode_registration_datagram_v3(REQUEST_ID, V4, 1, idle_seconds=2)
    expected = RegistrationDatagramV3(REQUEST_ID, V4, 1, 2)
    unknown_flags = plain[:1] + b"\xf8" + plain[2:]
    assert decode_datagram_v3(unknown_flags) == expected
    assert decode_datagram_v3(plain + b"not bundled") == expected
    bundled_but_empty = plain[:1] + b"\x04" + plain[2:]
    assert decode_datagram_v3(bundled_but_empty) == expected


def test_v3_response_reads_exactly_its_message() -> None:
    response = encode_registration_response_datagram_v3(REQUEST_ID, RegistrationStatus.OK, "ab")
    decoded = decode_datagram_v3(response + b"extra")
    assert decoded == RegistrationResponseDatagramV3(REQUEST_ID, RegistrationStatus.OK, "ab")
    garbled = response[:-2] + b"\xff\xfe"
    assert decode_datagram_v3(garbled) == RegistrationResponseDatagramV3(
        REQUEST_ID, RegistrationStatus.OK, "\ufffd\ufffd"
    )


# v3 refusals -----------------------------------------------------------------------------------


def test_v3_refusals() -> None:
    refused(decode_datagram_v3, b"", "empty")
    refused(decode_datagram_v3, b"\x04", "unknown v3 datagram type 4")


def test_v3_short_registrations_cloudflared_would_panic_on() -> None:
    v4 = encode_registration_datagram_v3(REQUEST_ID, V4, 1, idle_seconds=2)
    v6 = encode_registration_datagram_v3(REQUEST_ID, V6, 1, idle_seconds=2)
    refused(decode_datagram_v3, b"\x00", "shorter than its header")
    refused(decode_datagram_v3, v4[:-1], "shorter than its header")
    refused(decode_datagram_v3, v6[:-1], "shorter than its header")
    # The IPv6 flag on a 26-byte datagram: it needs 38.
    refused(decode_datagram_v3, v4[:1] + b"\x01" + v4[2:], "shorter than its header")


def test_v3_bounds() -> None:
    bundled = encode_registration_datagram_v3(
        REQUEST_ID, V4, 1, idle_seconds=2, payload=bytes(MAX_UDP_PAYLOAD)
    )
    assert decode_datagram_v3(bundled).payload == bytes(MAX_UDP_PAYLOAD)  # type: ignore[union-attr]
    refused(decode_datagram_v3, bundled + b"x", "bundled payload of 1281")
    payload = encode_payload_datagram_v3(REQUEST_ID, bytes(MAX_UDP_PAYLOAD))
    refused(decode_datagram_v3, payload + b"x", "1298 bytes")
    refused(decode_datagram_v3, payload[:16], "16 bytes")
    assert decode_datagram_v3(payload[:17]) == PayloadDatagramV3(REQUEST_ID, b"")
    refused(decode_datagram_v3, b"\x02", "without a packet")
    refused(decode_datagram_v3, b"\x02" + bytes(MAX_UDP_PAYLOAD + 1), "1281 bytes")


def test_v3_response_refusals() -> None:
    ok = encode_registration_response_datagram_v3(REQUEST_ID, RegistrationStatus.OK)
    refused(decode_datagram_v3, ok[:-1], "too short")
    refused(decode_datagram_v3, ok[:1] + b"\x04" + ok[2:], "unknown type 0x04")
    too_long = MAX_REGISTRATION_MESSAGE + 1
    refused(
        decode_datagram_v3, ok[:-2] + too_long.to_bytes(2, "big") + bytes(too_long), "exceeds 1260"
    )
    refused(decode_datagram_v3, ok[:-2] + b"\x00\x03ab", "overruns")


def test_v3_encoder_bounds() -> None:
    for request_id in (-1, 1 << 128):
        with pytest.raises(ProtocolUsageError, match="128-bit"):
            encode_payload_datagram_v3(request_id, b"")
    with pytest.raises(ProtocolUsageError, match="port"):
        encode_registration_datagram_v3(1, V4, 65536, idle_seconds=1)
    with pytest.raises(ProtocolUsageError, match="idle_seconds"):
        encode_registration_datagram_v3(1, V4, 1, idle_seconds=65537)  # Go would send 1
    with pytest.raises(ProtocolUsageError, match="bundled payload"):
        encode_registration_datagram_v3(1, V4, 1, idle_seconds=1, payload=bytes(1281))
    with pytest.raises(ProtocolUsageError, match="UDP payload"):
        encode_payload_datagram_v3(1, bytes(1281))
    with pytest.raises(ProtocolUsageError, match="needs a packet"):
        encode_icmp_datagram_v3(b"")
    with pytest.raises(ProtocolUsageError, match="ICMP packet"):
        encode_icmp_datagram_v3(bytes(1281))
    with pytest.raises(ProtocolUsageError, match="registration message"):
        encode_registration_response_datagram_v3(1, RegistrationStatus.OK, "é" * 631)
    encode_registration_response_datagram_v3(1, RegistrationStatus.OK, "é" * 630)
    with pytest.raises(ProtocolUsageError, match="UTF-8"):
        encode_registration_response_datagram_v3(1, RegistrationStatus.OK, "\ud800")


def test_all_names_resolve() -> None:
    assert sorted(datagrams.__all__) == sorted(set(datagrams.__all__))
    for attribute in datagrams.__all__:
        assert hasattr(datagrams, attribute), attribute
