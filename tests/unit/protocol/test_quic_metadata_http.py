"""Metadata conventions of HTTP and TCP streams, as cloudflared's quic_connection.go reads them."""

from __future__ import annotations

import importlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.errors import ProtocolUsageError, QuicMetadataError
from adit.protocol.quic_metadata import (
    FLOW_RATE_LIMITED,
    ConnectionType,
    ConnectRequest,
    ConnectResponse,
    HttpRequestHead,
    HttpResponseHead,
    TcpRequestHead,
    http_request_metadata,
    http_response_metadata,
    parse_http_request,
    parse_http_response,
    parse_tcp_request,
    tcp_connect_request,
)

tokens = st.text(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    min_size=1,
    max_size=12,
)
# Field values: any latin-1 character but the controls Go's HTTP client refuses (HTAB is fine).
values = st.text(
    st.characters(
        max_codepoint=0xFF,
        exclude_characters=[*map(chr, range(9)), *map(chr, range(10, 32)), "\x7f"],
    ),
    max_size=20,
)
headers = st.lists(st.tuples(tokens, values), max_size=6).map(tuple)


def http(*metadata: tuple[str, str], kind: ConnectionType = ConnectionType.HTTP) -> ConnectRequest:
    return ConnectRequest("https://h/p", kind, metadata)


# Requests --------------------------------------------------------------------------------------


@given(tokens, values, headers, st.sampled_from([ConnectionType.HTTP, ConnectionType.WEBSOCKET]))
def test_request_round_trip(
    method: str, host: str, fields: tuple[tuple[str, str], ...], kind: ConnectionType
) -> None:
    request = ConnectRequest("/p", kind, http_request_metadata(method, host, fields))
    assert parse_http_request(request) == HttpRequestHead(method, host, fields)


def test_request_metadata_order_and_repeats() -> None:
    assert http_request_metadata("PUT", "h.example", [("A", "1"), ("B", "2"), ("A", "3")]) == (
        ("HttpMethod", "PUT"),
        ("HttpHost", "h.example"),
        ("HttpHeader:A", "1"),
        ("HttpHeader:B", "2"),
        ("HttpHeader:A", "3"),
    )


@pytest.mark.parametrize("name", ["", ":authority", "a:b"])
def test_request_metadata_refuses_names_cloudflared_would_split_wrong(name: str) -> None:
    with pytest.raises(ProtocolUsageError):
        http_request_metadata("GET", "h", [(name, "v")])


def test_method_and_host_last_wins_and_defaults() -> None:
    # cloudflared reads them through a Go map: the last entry wins.
    request = http(
        ("HttpMethod", "GET"), ("HttpHost", "a"), ("HttpMethod", "POST"), ("HttpHost", "b")
    )
    assert parse_http_request(request) == HttpRequestHead("POST", "b", ())
    assert parse_http_request(http()) == HttpRequestHead("GET", "", ())  # http.NewRequest's ""
    assert parse_http_request(http(("HttpMethod", ""))).method == "GET"


def test_method_must_be_a_token() -> None:
    with pytest.raises(QuicMetadataError, match="HttpMethod"):
        parse_http_request(http(("HttpMethod", "GE T")))


def test_header_keys_follow_cloudflareds_contains_and_split_rule() -> None:
    # Any key containing "HttpHeader" is a header, split on ':' into exactly two parts.
    request = http(
        ("XHttpHeader:A", "1"), ("HttpHeaderish:B", "2"), ("FlowID", "f"), ("httpheader:c", "x")
    )
    assert parse_http_request(request).headers == (("A", "1"), ("B", "2"))
    for key in ("HttpHeader", "HttpHeader:A:B", "HttpHeader:A:", ":HttpHeader:A"):
        with pytest.raises(QuicMetadataError, match="two parts"):
            parse_http_request(http((key, "v")))


@pytest.mark.parametrize("key", ["HttpHeader:", "HttpHeader:A B", "HttpHeader:\xe9"])
def test_header_names_must_be_tokens(key: str) -> None:
    with pytest.raises(QuicMetadataError, match="not a token"):
        parse_http_request(http((key, "v")))


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "\x00", "\x7f", "\x1b"])
def test_header_values_without_controls(value: str) -> None:
    with pytest.raises(QuicMetadataError, match="control character"):
        parse_http_request(http(("HttpHeader:A", value)))
    assert parse_http_request(http(("HttpHeader:A", "a\tb\xff"))).headers == (("A", "a\tb\xff"),)


def test_tcp_request_has_no_http_head() -> None:
    with pytest.raises(ProtocolUsageError):
        parse_http_request(ConnectRequest("1.2.3.4:5", ConnectionType.TCP))


# Responses -------------------------------------------------------------------------------------


@given(st.integers(min_value=100, max_value=999), headers)
def test_response_round_trip(status: int, fields: tuple[tuple[str, str], ...]) -> None:
    response = ConnectResponse(metadata=http_response_metadata(status, fields))
    assert response.metadata[0] == ("HttpStatus", str(status))
    assert parse_http_response(response) == HttpResponseHead(status, fields, False)


@pytest.mark.parametrize("status", [99, 1000, -200])
def test_response_metadata_refuses_bad_status(status: int) -> None:
    with pytest.raises(ProtocolUsageError):
        http_response_metadata(status, [])


def test_response_metadata_refuses_bad_names() -> None:
    with pytest.raises(ProtocolUsageError):
        http_response_metadata(200, [("a:b", "v")])


@pytest.mark.parametrize("status", ["", "20", "2000", "099", "20x", "+20", "２００"])
def test_response_status_must_be_three_digits(status: str) -> None:
    with pytest.raises(QuicMetadataError, match="three-digit"):
        parse_http_response(ConnectResponse(metadata=(("HttpStatus", status),)))


def test_response_with_two_statuses_is_refused() -> None:
    with pytest.raises(QuicMetadataError, match="two HttpStatus"):
        parse_http_response(
            ConnectResponse(metadata=(("HttpStatus", "200"), ("HttpStatus", "502")))
        )


def test_response_header_rules_are_the_requests() -> None:
    with pytest.raises(QuicMetadataError, match="two parts"):
        parse_http_response(ConnectResponse(metadata=(("HttpHeader:A:B", "v"),)))
    with pytest.raises(QuicMetadataError, match="control character"):
        parse_http_response(ConnectResponse(metadata=(("HttpHeader:A", "\r"),)))


def test_flow_rate_limited_error() -> None:
    # What handleDataStream writes when the flow limiter refuses: an error, no status.
    limited = ConnectResponse(error="too many active flows", metadata=(FLOW_RATE_LIMITED,))
    assert parse_http_response(limited) == HttpResponseHead(None, (), True)
    other = ConnectResponse(error="x", metadata=(("FlowConnectRateLimited", "false"),))
    assert parse_http_response(other).flow_rate_limited is False


# TCP -------------------------------------------------------------------------------------------


@given(st.ip_addresses(), st.integers(min_value=0, max_value=0xFFFF), values, values)
def test_tcp_round_trip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, flow: str, trace: str
) -> None:
    request = tcp_connect_request(address, port, flow_id=flow, trace_id=trace)
    assert parse_tcp_request(request) == TcpRequestHead(address, port, flow, trace)


def test_tcp_request_layout() -> None:
    v6 = tcp_connect_request(ipaddress.IPv6Address("::1"), 22, flow_id="f", trace_id="t")
    assert v6 == ConnectRequest(
        "[::1]:22", ConnectionType.TCP, (("FlowID", "f"), ("cf-trace-id", "t"))
    )
    assert tcp_connect_request(ipaddress.IPv4Address("10.0.0.1"), 80).metadata == ()
    with pytest.raises(ProtocolUsageError):
        tcp_connect_request(ipaddress.IPv4Address("10.0.0.1"), 65536)


def test_tcp_dest_as_netip_reads_it() -> None:
    def dest(text: str) -> TcpRequestHead:
        return parse_tcp_request(
            ConnectRequest(text, ConnectionType.TCP, (("FlowID", "a"), ("FlowID", "b")))
        )

    assert dest("1.2.3.4:0080").port == 80  # strconv.ParseUint takes leading zeros
    assert dest("[fe80::1%eth0]:1").address == ipaddress.IPv6Address("fe80::1%eth0")
    assert dest("[::ffff:1.2.3.4]:1").address.version == 6
    assert dest("1.2.3.4:5").flow_id == "b"  # the metadata map: last wins


@pytest.mark.parametrize(
    "text",
    [
        "example.com:80",
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:8O",
        "1.2.3.4:١٢",
        "::1:80",
        "[1.2.3.4]:80",
        "01.2.3.4:80",
        "[::1]80",
        ":80",
        "1.2.3.4:" + "9" * 5000,
    ],
)
def test_tcp_dest_refusals(text: str) -> None:
    with pytest.raises(QuicMetadataError, match="not ip:port"):
        parse_tcp_request(ConnectRequest(text, ConnectionType.TCP))


def test_http_request_has_no_tcp_head() -> None:
    with pytest.raises(ProtocolUsageError):
        parse_tcp_request(ConnectRequest("1.2.3.4:5", ConnectionType.HTTP))


# Exports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adit.protocol.quic_capnp", "adit.protocol.quic_metadata"])
def test_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(set(module.__all__))
    for attribute in module.__all__:
        assert hasattr(module, attribute), attribute
