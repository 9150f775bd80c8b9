"""A visitor can never choose the stream type (issue 13 item 6).

On the tunnel, a request's kind is told by headers: ``Cf-Cloudflared-Proxy-Connection-Upgrade``
(``update-configuration``, ``control-stream``, ``websocket``) and ``Cf-Cloudflared-Proxy-Src``
(a TCP stream). A visitor who sends them must get an ordinary HTTP request to the origin, never
a configuration push, a second control stream or a TCP stream, whichever connector serves the
tunnel: adit's (which gets the eyeball's headers serialised) and the unmodified cloudflared
(which gets them as plain HTTP/2 headers, where they used to mean exactly that).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversary import (
    CLOSE_RESPONSE,
    CLOUDFLARED,
    INSIDE_NETNS,
    RawOrigin,
    canned,
    cloudflared_metrics,
    metrics_json,
    raw_origin,
    request_complete,
    rerun_in_private_netns,
    start_cloudflared,
    start_tenant,
)
from harness import Account, Edge, Processes, create_tunnel, request, write_config

pytestmark = pytest.mark.process

HOST = "app.example.test"

#: What a configuration push from Cloudflare's edge looks like: a new ingress, version 10.
PUSH = json.dumps({"version": 10, "config": {"ingress": [{"service": "http_status:418"}]}}).encode()

#: (method, smuggled headers, body): each must reach the origin as an ordinary request.
SMUGGLED = [
    ("PUT", [("Cf-Cloudflared-Proxy-Connection-Upgrade", "update-configuration")], PUSH),
    ("GET", [("Cf-Cloudflared-Proxy-Src", "127.0.0.1:22")], b""),
    ("GET", [("cf-cloudflared-proxy-connection-upgrade", "control-stream")], b""),
    ("GET", [("CF-CLOUDFLARED-PROXY-CONNECTION-UPGRADE", "websocket")], b""),
]


@pytest.fixture
def answering() -> Iterator[RawOrigin]:
    """A raw-socket origin that answers every request once its body is in."""
    with raw_origin(canned(CLOSE_RESPONSE, when=request_complete)) as origin:
        yield origin


def _smuggle(edge: Edge, origin: RawOrigin) -> list[str]:
    """Send every :data:`SMUGGLED` request; what was wrong with each, if anything."""
    wrong = []
    for index, (method, headers, body) in enumerate(SMUGGLED):
        before = len(origin.parsed)
        path = f"/smuggled/{index}"
        try:
            reply = request(edge, HOST, method, path, body=body or None, headers=headers)
            status = reply.status
        except (OSError, http.client.HTTPException) as exc:
            status = 0
            reply = None
            wrong.append(f"{method} {headers}: {exc!r}")
        got = origin.parsed[before:]
        if status != 200 or len(got) != 1:
            wrong.append(f"{method} {headers}: status {status}, origin got {len(got)} requests")
            continue
        (seen,) = got
        internal = [n for n, _ in seen.headers if n.lower().startswith(b"cf-cloudflared-")]
        if seen.line != f"{method} {path} HTTP/1.1".encode() or internal or seen.body != body:
            wrong.append(f"{method} {headers}: origin got {seen}")
        assert reply is not None
    return wrong


def test_adit_connector_serves_smuggled_kinds_as_plain_requests(
    processes: Processes, edge: Edge, answering: RawOrigin
) -> None:
    start_tenant(processes, edge, "acme", HOST, answering.url)
    assert _smuggle(edge, answering) == []
    assert request(edge, HOST, "GET", "/after").status == 200


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_in_a_private_namespace() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_cloudflared_serves_smuggled_kinds_as_plain")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
def test_cloudflared_serves_smuggled_kinds_as_plain(
    processes: Processes, edge: Edge, account: Account, answering: RawOrigin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "cfd", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": answering.url}])
    cloudflared = start_cloudflared(processes, tunnel, config, edge)
    metrics = cloudflared_metrics(cloudflared)

    def applied() -> tuple[int, list[str]]:
        current = metrics_json(metrics, "/config")
        return current["version"], [rule["service"] for rule in current["config"]["ingress"]]

    before = applied()
    assert before == (-1, [answering.url, "http_status:404"])
    wrong = _smuggle(edge, answering)
    after = applied()
    assert (after, wrong) == (before, []), f"config now {after}; {wrong}"
    assert "Updated to new configuration" not in cloudflared.text()
    assert request(edge, HOST, "GET", "/after").status == 200
