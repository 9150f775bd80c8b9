"""The edge's header policy (adit.edge.header_policy): what enters a tunnel, whatever is sent."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.edge.header_policy import is_websocket_upgrade, tunnel_request_headers

EDGE_SET = ["Cf-Ray", "Cf-Connecting-Ip", "X-Forwarded-For", "X-Forwarded-Proto", "Cf-Visitor"]
# A visitor's spellings of names only the edge, the connector or the tunnel may send.
FORGED = [
    "Cf-Access-Authenticated-User-Email",
    "cf-access-jwt-assertion",
    "CF-IPCOUNTRY",
    "Cf-Visitor",
    "cf_connecting_ip",
    "Cf-Ray",
    "Cf-Warp-Tag-Id",
    "cf-worker",
    "True-Client-IP",
    "x-real-ip",
    "X_Real_Ip",
    "Forwarded",
    "X-Forwarded-Proto",
    "X_Forwarded_For",
    "Cf-Cloudflared-Proxy-Src",
    "cf-cloudflared-proxy-connection-upgrade",
    "Cf-Int-X",
    "Cf-Proxy-X",
    "cf-trace-id",
]
VISITOR_SENT = [
    "Cf-Access-Client-Id",
    "cf-access-client-secret",
    "Cf-Access-Token",
    "Cf-Access-Jump-Destination",
    "Accept",
    "X-Custom",
    "Cookie",
]

headers = st.lists(
    st.tuples(
        st.sampled_from(FORGED + VISITOR_SENT + ["X-Forwarded-For"]),
        st.text(alphabet="abc0123456789.,", max_size=8),
    ),
    max_size=12,
)


def _policy(pairs: list[tuple[str, str]], scheme: str = "https") -> list[tuple[str, str]]:
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]
    return tunnel_request_headers(raw, "203.0.113.9", scheme, "ray-1")


@given(headers, st.sampled_from(["http", "https"]))
def test_only_the_edge_speaks_for_the_edge(pairs: list[tuple[str, str]], scheme: str) -> None:
    out = _policy(pairs, scheme)
    names = [n for n, _ in out]
    # The edge's own values, once each, last; nothing forged passes.
    assert names[-len(EDGE_SET) :] == EDGE_SET
    assert not set(names[: -len(EDGE_SET)]) & set(FORGED + EDGE_SET)
    # The visitor's own headers pass in order, untouched.
    assert out[: -len(EDGE_SET)] == [(n, v) for n, v in pairs if n in VISITOR_SENT]
    edge = dict(out[-len(EDGE_SET) :])
    chain = [v for n, v in pairs if n == "X-Forwarded-For"]
    assert edge == {
        "Cf-Ray": "ray-1",
        "Cf-Connecting-Ip": "203.0.113.9",
        "X-Forwarded-For": ", ".join([*chain, "203.0.113.9"]),
        "X-Forwarded-Proto": scheme,
        "Cf-Visitor": json.dumps({"scheme": scheme}, separators=(",", ":")),
    }


def test_header_bytes_pass_one_char_a_byte() -> None:
    raw = [(b"X-Bin", b"\xff\x00a")]
    assert tunnel_request_headers(raw, "", "http", "r")[0] == ("X-Bin", "\xff\x00a")


@given(headers, st.lists(st.sampled_from(FORGED + VISITOR_SENT + EDGE_SET), max_size=6))
def test_connection_names_only_the_visitors_own_headers(
    pairs: list[tuple[str, str]], named: list[str]
) -> None:
    """``Connection: Cf-Connecting-Ip`` drops the visitor's copy, never the edge's."""
    out = _policy([*pairs, ("Connection", ", ".join(["keep-alive", *named]))])
    lowered = {n.lower() for n in named}
    assert [n for n, _ in out][-len(EDGE_SET) :] == EDGE_SET
    assert out[: -len(EDGE_SET)] == [
        (n, v) for n, v in pairs if n in VISITOR_SENT and n.lower() not in lowered
    ]


@pytest.mark.parametrize(
    ("headers", "websocket"),
    [
        ([(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], True),
        ([(b"upgrade", b"WebSocket "), (b"connection", b"keep-alive, upgrade")], True),
        ([(b"Upgrade", b"websocket")], False),
        ([(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade")], False),
        ([(b"Upgrade", b"websocket"), (b"Connection", b"upgraded")], False),
    ],
)
def test_websocket_upgrade(headers: list[tuple[bytes, bytes]], websocket: bool) -> None:
    assert is_websocket_upgrade(headers) is websocket
