"""Issue 13 item 9: the edge and every connector have one idea of a hostname.

The edge routed ``Host: RAW.EXAMPLE.COM`` and ``raw.example.com.`` to the tunnel, but the
connector's ingress matched case-sensitively and kept the trailing dot, so those requests hit
the catch-all. The edge now forwards the name in the one spelling it routed
(``adit.protocol.hostnames.normalize_authority``), so cloudflared, whose rules compare names
byte for byte, matches it too; adit's connector compares in the same spelling whatever it gets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adversary import (
    CLOUDFLARED,
    INSIDE_NETNS,
    RawOrigin,
    exchange,
    raw_origin,
    rerun_in_private_netns,
    start_cloudflared,
    start_tenant,
    status_of,
)
from harness import Account, Edge, Processes, create_tunnel, write_config

pytestmark = pytest.mark.process

HOST = "raw.example.com"
SPELLINGS = {
    "raw.example.com": "raw.example.com",
    "RAW.EXAMPLE.COM": "raw.example.com",
    "raw.example.com.": "raw.example.com",
    "Raw.Example.Com.:80": "raw.example.com:80",
}


def _visit(edge: Edge, recorder: RawOrigin, spelling: str) -> None:
    request = f"GET /x HTTP/1.1\r\nHost: {spelling}\r\nConnection: close\r\n\r\n".encode()
    reply = exchange(edge.http, request)
    assert status_of(reply) == 200, reply[:300]
    recorder.wait_for(lambda o: len(o.requests) >= 1, what="the request at the rule's origin")
    # The origin sees the name the edge routed, in its one spelling (the port as sent).
    assert f"\r\nHost: {SPELLINGS[spelling]}\r\n".encode() in recorder.requests[-1]


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_reaches_the_rule(
    processes: Processes, edge: Edge, recorder: RawOrigin, spelling: str
) -> None:
    # A rule for raw.example.com and a 404 catch-all (write_config adds it).
    start_tenant(processes, edge, "raw", HOST, recorder.url)
    _visit(edge, recorder, spelling)


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_in_a_private_namespace() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_every_spelling_reaches_cloudflareds_rule")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
def test_every_spelling_reaches_cloudflareds_rule(
    processes: Processes, edge: Edge, account: Account, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "raw", HOST)
    with raw_origin() as recorder:
        config = write_config(tmp_path / "config.yml", HOST, [{"service": recorder.url}])
        start_cloudflared(processes, tunnel, config, edge)
        for spelling in SPELLINGS:
            _visit(edge, recorder, spelling)
