"""Serialised header codec, request classification and response meta (PROTOCOL.md §4)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol import headers as headers_module
from adit.protocol.errors import HeaderDecodeError
from adit.protocol.headers import (
    RequestType,
    ResponseMeta,
    classify_request,
    decode_serialized_headers,
    encode_serialized_headers,
    strip_hop_by_hop,
)

# From vectors/http2/headers.txt, stream 3: cloudflared's own encoding.
VECTOR = (
    "Q29udGVudC1MZW5ndGg:Mw;Q29udGVudC1UeXBl:dGV4dC9wbGFpbg;WC1PcmlnaW4:c3Bpa2U;"
    "U2V0LUNvb2tpZQ:YT0x;U2V0LUNvb2tpZQ:Yj0y"
)
VECTOR_DECODED = [
    ("Content-Length", "3"),
    ("Content-Type", "text/plain"),
    ("X-Origin", "spike"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
]


def test_cloudflared_vector_decodes_and_re_encodes_byte_for_byte() -> None:
    assert decode_serialized_headers(VECTOR) == VECTOR_DECODED
    assert encode_serialized_headers(VECTOR_DECODED) == VECTOR.encode()


def test_websocket_vector() -> None:
    value = (
        "VXBncmFkZQ:d2Vic29ja2V0;Q29ubmVjdGlvbg:VXBncmFkZQ;"
        "U2VjLVdlYnNvY2tldC1BY2NlcHQ:czNwUExNQmlUeGFROWtZR3p6aFpSYksreE9vPQ"
    )
    assert decode_serialized_headers(value)[2] == (
        "Sec-Websocket-Accept",
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    )


def test_internal_headers_are_never_serialised() -> None:
    encoded = encode_serialized_headers(
        [(":status", "200"), ("Cf-Int-X", "1"), ("cf-cloudflared-x", "1"), ("CF-Proxy-Y", "1")]
    )
    assert encoded == b""


header_names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=20,
).filter(lambda n: not n.lower().startswith(("cf-int-", "cf-cloudflared-", "cf-proxy-")))


# Up to 300: short pieces are coded by binascii, long ones by pybase64 (headers._SHORT).
latin1_values = st.text(alphabet=st.characters(max_codepoint=255), max_size=300)


@given(st.lists(st.tuples(header_names, latin1_values), max_size=20))
def test_round_trip_keeps_every_byte(headers: list[tuple[str, str]]) -> None:
    assert decode_serialized_headers(encode_serialized_headers(headers)) == headers


def test_non_latin1_text_goes_out_as_utf8_bytes() -> None:
    (pair,) = decode_serialized_headers(encode_serialized_headers([("X-Snow", "\u2603")]))
    assert pair == ("X-Snow", "\u2603".encode().decode("latin-1"))


@given(st.text(max_size=200))
def test_garbage_raises_only_header_decode_error(value: str) -> None:
    with contextlib.suppress(HeaderDecodeError):
        decode_serialized_headers(value)


def test_padding_is_tolerated() -> None:
    assert decode_serialized_headers("QQ==:Qg==") == [("A", "B")]


@pytest.mark.parametrize("size", [3, 60, 300, 3000])  # both sides of headers._SHORT
@pytest.mark.parametrize("bad", ["!", "=", " ", "-", "\n"])
def test_a_piece_outside_base64_is_refused_short_or_long(size: int, bad: str) -> None:
    good = encode_serialized_headers([("X-Value", "v" * size)]).decode()
    name, value = good.split(":")
    at = len(value) // 2
    with pytest.raises(HeaderDecodeError):
        decode_serialized_headers(f"{name}:{value[:at]}{bad}{value[at:]}")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], RequestType.HTTP),
        ([("cf-cloudflared-proxy-connection-upgrade", "websocket")], RequestType.WEBSOCKET),
        (
            [("cf-cloudflared-proxy-connection-upgrade", "control-stream")],
            RequestType.CONTROL_STREAM,
        ),
        (
            [("cf-cloudflared-proxy-connection-upgrade", "update-configuration")],
            RequestType.CONFIGURATION,
        ),
        ([("cf-cloudflared-proxy-src", "x")], RequestType.TCP),
        (
            [
                ("cf-cloudflared-proxy-src", "x"),
                ("cf-cloudflared-proxy-connection-upgrade", "control-stream"),
            ],
            RequestType.TCP,
        ),
        ([("cf-cloudflared-proxy-connection-upgrade", "WebSocket")], RequestType.HTTP),
    ],
)
def test_classification_follows_cloudflared_precedence(
    headers: list[tuple[str, str]], expected: RequestType
) -> None:
    assert classify_request(headers) is expected


def test_response_meta() -> None:
    assert ResponseMeta.parse('{"src":"origin"}') is ResponseMeta.ORIGIN
    assert ResponseMeta.parse('{"src": "origin"}') is ResponseMeta.ORIGIN
    assert ResponseMeta.parse('{"src":"cloudflared"}') is ResponseMeta.CONNECTOR
    assert ResponseMeta.parse("garbage") is ResponseMeta.CONNECTOR
    assert ResponseMeta.parse(None) is ResponseMeta.CONNECTOR


def test_strip_hop_by_hop_removes_connection_named_headers() -> None:
    assert strip_hop_by_hop(
        [("Connection", "close, X-A"), ("x-a", "1"), ("TE", "trailers"), ("B", "2")]
    ) == [("B", "2")]
    assert strip_hop_by_hop(
        [
            ("X-Named", "1"),  # named by a Connection header that comes later
            ("Keep-Alive", "timeout=5"),
            ("User-Agent", "ua"),  # as long as a hop-by-hop name, but not one
            ("connection", "x-named"),
            ("Proxy-Authorization", "Basic x"),
            ("Transfer-Encoding", "chunked"),
            ("Host", "h"),
        ]
    ) == [("User-Agent", "ua"), ("Host", "h")]


def test_repeated_pairs_code_the_same_from_the_cache() -> None:
    headers = [("Server", "nginx"), (":status", "200"), ("Cf-Int-X", "1"), ("X-A", "b")]
    first = encode_serialized_headers(headers)
    assert encode_serialized_headers(headers) == first == b"U2VydmVy:bmdpbng;WC1B:Yg"
    assert decode_serialized_headers(first) == decode_serialized_headers(first)
    assert decode_serialized_headers(first) == [("Server", "nginx"), ("X-A", "b")]


def test_credentials_are_never_kept_by_the_header_caches() -> None:
    secret = "s3cr3t-" + "x" * 20
    headers = [
        ("Cookie", f"session={secret}"),
        ("authorization", f"Bearer {secret}"),
        ("Set-Cookie", f"id={secret}"),
        ("Cf-Access-Client-Secret", secret),
    ]
    assert decode_serialized_headers(encode_serialized_headers(headers)) == headers
    kept = [*headers_module._encoded, *headers_module._decoded.values()]
    assert not [pair for pair in kept if secret in pair[1]]
    assert not [piece for piece in headers_module._decoded if b"czNjcjN0" in piece]


def test_header_caches_stay_bounded() -> None:
    limit = headers_module._CACHE_ENTRIES
    for n in range(3 * limit):
        encoded = encode_serialized_headers([("X-N", str(n))])
        assert decode_serialized_headers(encoded) == [("X-N", str(n))]
    assert 0 < len(headers_module._encoded) <= limit
    assert 0 < len(headers_module._decoded) <= limit
    big = "v" * (headers_module._CACHE_PAIR_BYTES + 1)
    encode_serialized_headers([("X-Big", big)])
    assert ("X-Big", big) not in headers_module._encoded


def test_a_connection_keeps_what_it_repeats_and_the_process_cache_does_not() -> None:
    # A visitor connection's cookie (a credential, and near a kilobyte under Access) is coded
    # once per connection: into the connection's own memo, never the process's cache.
    cookie = ("Cookie", "CF_Authorization=" + "t" * 900)
    long_value = ("X-Long", "v" * (headers_module._CACHE_PAIR_BYTES + 1))
    ray = ("Cf-Ray", "0123456789abcdef-LHR")
    headers = [("Host", "h"), cookie, long_value, ray]
    keep: dict[tuple[str, str], bytes] = {}
    first = encode_serialized_headers(headers, keep=keep)
    assert set(keep) == {cookie, long_value}  # not the ray: new on every request
    assert cookie not in headers_module._encoded
    assert (
        encode_serialized_headers(headers, keep=keep) == first == encode_serialized_headers(headers)
    )
    assert decode_serialized_headers(first) == headers


def test_a_connections_memo_stays_bounded() -> None:
    keep: dict[tuple[str, str], bytes] = {}
    for n in range(50):
        pair = ("Cookie", f"id={n}")
        assert decode_serialized_headers(encode_serialized_headers([pair], keep=keep)) == [pair]
        assert 0 < len(keep) <= headers_module._KEPT_PER_CONNECTION
