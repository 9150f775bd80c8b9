"""Pure pieces of the origin side: request heads, WebSocket frames, Go durations."""

from __future__ import annotations

import uuid

import pytest

from adit.config.origin import OriginOptions
from adit.workers.origins.helloworld import go_duration, parse_go_duration
from adit.workers.origins.request import (
    BodyFraming,
    build_request_head,
    canonical_header_name,
    tag_headers,
)
from adit.workers.stream import IncomingRequest, StreamKind

CONNECTOR = uuid.UUID(int=1)


def request(
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    kind: StreamKind = StreamKind.HTTP,
) -> IncomingRequest:
    return IncomingRequest(kind, method, "/p?q=1", "pub.example.com", "pub.example.com", headers)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("cf-warp-tag-id", "Cf-Warp-Tag-Id"), ("X-FOO", "X-Foo"), ("env", "Env")],
)
def test_canonical_header_name(name: str, canonical: str) -> None:
    assert canonical_header_name(name) == canonical


def test_tag_headers_put_the_connector_id_first() -> None:
    assert tag_headers(CONNECTOR, {"region": "eu", "RACK": "7"}) == (
        ("Cf-Warp-Tag-Id", str(CONNECTOR)),
        ("Cf-Warp-Tag-Region", "eu"),
        ("Cf-Warp-Tag-Rack", "7"),
    )


def test_the_connector_sets_its_tags_and_tunnel_names_never_reach_the_origin() -> None:
    """Another edge than adit's may pass a visitor's Cf-Warp-Tag-*: the connector's tags
    replace them (cloudflared appends after them), and tunnel-internal names are dropped."""
    tags = tag_headers(CONNECTOR, {"team": "blue"})
    forged = (
        ("Cf-Warp-Tag-Id", "forged"),
        ("cf_warp_tag_team", "forged"),
        ("cf-warp-tag-other", "forged"),
        ("cf-cloudflared-proxy-src", "1.2.3.4:22"),
        ("cf-trace-id", "x"),
        ("X-Kept", "1"),
    )
    head = build_request_head(request(headers=forged), OriginOptions(), tags)
    assert head.headers == (
        ("Host", "pub.example.com"),
        ("X-Kept", "1"),
        ("Cf-Warp-Tag-Id", str(CONNECTOR)),
        ("Cf-Warp-Tag-Team", "blue"),
        ("Connection", "keep-alive"),
    )


@pytest.mark.parametrize(
    ("method", "headers", "options", "framing"),
    [
        ("GET", (), OriginOptions(), BodyFraming.PROBE),
        ("POST", (), OriginOptions(), BodyFraming.CHUNKED),
        ("POST", (("content-length", "12"),), OriginOptions(), BodyFraming.LENGTH),
        ("POST", (), OriginOptions(disable_chunked_encoding=True), BodyFraming.BUFFERED),
        ("POST", (("content-length", "nope"),), OriginOptions(), BodyFraming.CHUNKED),
    ],
)
def test_body_framing(
    method: str,
    headers: tuple[tuple[str, str], ...],
    options: OriginOptions,
    framing: BodyFraming,
) -> None:
    assert build_request_head(request(method, headers), options, ()).framing is framing


def test_websocket_head_replaces_connection_headers_and_has_no_body() -> None:
    head = build_request_head(
        request(
            headers=(
                ("sec-websocket-key", "k"),
                ("sec-websocket-version", "8"),
                ("connection", "keep-alive"),
            ),
            kind=StreamKind.WEBSOCKET,
        ),
        OriginOptions(),
        (),
    )
    assert head.framing is BodyFraming.NONE
    assert head.headers == (
        ("Host", "pub.example.com"),
        ("sec-websocket-key", "k"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-Websocket-Version", "13"),
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10ms", 0.01), ("1m30s", 90.0), ("1.5h", 5400.0), ("", None), ("10", None), ("5x", None)],
)
def test_parse_go_duration(text: str, seconds: float | None) -> None:
    result = parse_go_duration(text)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0015, "1.5ms"), (2.5, "2.5s"), (62.0, "1m2s"), (3725.5, "1h2m5.5s")],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
