"""Headers the edge asserts can only come from the edge (issue 13 item 5).

A visitor sends every header an origin might take as the edge's or the connector's word
(Access identity, client address, country, scheme, the connector's tag, tunnel-internal
names), in odd casings; the raw-socket origin records what arrives. None of the forged values
may reach it; the edge's own values must be there exactly once; the headers a visitor may
legitimately send (Access service tokens, the bastion destination) pass unchanged.
"""

from __future__ import annotations

import json

import pytest

from adversary import RawOrigin, Tenant, exchange, status_of
from harness import Edge

pytestmark = pytest.mark.process

FORGED = "forged-by-visitor"

#: Headers only the edge (or the connector) may assert, as a visitor would spell them.
EDGE_ASSERTED = [
    "Cf-Access-Authenticated-User-Email",
    "Cf-Access-Jwt-Assertion",
    "CF-IPCountry",
    "cf-visitor",
    "True-Client-IP",
    "X-Real-IP",
    "Forwarded",
    "Cf-Warp-Tag-Id",
    "Cf-Warp-Tag-Team",
    "CF-Connecting-IP",
    "CF-RAY",
    "X-Forwarded-Proto",
    "Cf-Worker",
    "cf-trace-id",
    "Cf-Cloudflared-Response-Meta",
    "CF-INT-Anything",
    "Cf-Proxy-Anything",
]

#: Sent by visitors on purpose: service tokens and the bastion destination of `access tcp`.
VISITOR_SENT = [
    ("Cf-Access-Client-Id", "client-id.access"),
    ("Cf-Access-Client-Secret", "client-secret"),
    ("Cf-Access-Jump-Destination", "ssh.internal:22"),
    ("X-Forwarded-For", "198.51.100.7"),
    ("X-Custom", "kept"),
]


def test_forged_edge_headers_never_reach_the_origin(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    lines = [f"{name}: {FORGED}" for name in EDGE_ASSERTED]
    lines += [f"{name}: {value}" for name, value in VISITOR_SENT]
    head = (
        f"GET /h HTTP/1.1\r\nHost: {tenant.hostname}\r\n"
        + "".join(f"{line}\r\n" for line in lines)
        + "Connection: close\r\n\r\n"
    )
    reply = exchange(edge.http, head.encode())
    assert status_of(reply) == 200, reply
    (got,) = recorder.parsed
    forged = sorted(n.decode() for n, v in got.headers if FORGED.encode() in v)
    assert " ".join(forged) == ""

    ray = next(
        line.split(b":", 1)[1].strip()
        for line in reply.split(b"\r\n\r\n")[0].split(b"\r\n")
        if line.lower().startswith(b"cf-ray:")
    )
    edge_values = {
        name: got.values(name)
        for name in (
            "Cf-Ray",
            "Cf-Connecting-Ip",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "Cf-Visitor",
        )
    }
    assert edge_values == {
        "Cf-Ray": [ray],
        "Cf-Connecting-Ip": [b"127.0.0.1"],
        # Cloudflare's documented form: the visitor's chain, then the address it connected from.
        "X-Forwarded-For": [b"198.51.100.7, 127.0.0.1"],
        "X-Forwarded-Proto": [b"http"],
        "Cf-Visitor": [json.dumps({"scheme": "http"}, separators=(",", ":")).encode()],
    }
    for name in ("Cf-Ipcountry", "True-Client-Ip", "X-Real-Ip", "Forwarded", "Cf-Warp-Tag-Team"):
        assert got.values(name) == [], name
    # The connector's own tag, once (set, not appended after the visitor's).
    assert len(got.values("Cf-Warp-Tag-Id")) == 1
    for name, value in VISITOR_SENT[:-2]:
        assert got.values(name) == [value.encode()], name
    assert got.values("X-Custom") == [b"kept"]


def test_a_visitor_cannot_name_the_edge_headers_hop_by_hop(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    """``Connection`` names headers to drop at the next hop (RFC 9110 §7.6.1): the visitor's
    own, never the ones the edge adds after it, or an origin would lose the client address."""
    named = "Cf-Connecting-Ip, X-Forwarded-For, Cf-Ray, X-Forwarded-Proto, Cf-Visitor, X-Mine"
    head = (
        f"GET /h HTTP/1.1\r\nHost: {tenant.hostname}\r\nConnection: close, {named}\r\n"
        "X-Mine: hop\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"
    )
    assert status_of(exchange(edge.http, head.encode())) == 200
    (got,) = recorder.parsed
    present = {
        name: len(got.values(name))
        for name in ("Cf-Connecting-Ip", "X-Forwarded-For", "Cf-Ray", "X-Forwarded-Proto")
    }
    present["Cf-Visitor"] = len(got.values("Cf-Visitor"))
    present["X-Mine"] = len(got.values("X-Mine"))
    assert present == {
        "Cf-Connecting-Ip": 1,
        "X-Forwarded-For": 1,
        "Cf-Ray": 1,
        "X-Forwarded-Proto": 1,
        "Cf-Visitor": 1,
        "X-Mine": 0,
    }
    # The chain the visitor sent was named hop-by-hop: only the address the edge saw is left.
    assert got.values("X-Forwarded-For") == [b"127.0.0.1"]
