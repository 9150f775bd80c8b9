"""UDP sessions through real connector processes: adit's (``adit tunnel run --protocol quic``)
and the unmodified cloudflared, datagram v2 (their default) and v3 (``-F
support_datagram_v3_2``).

The edge runs in the test's event loop (:mod:`udp_tunnel`): ``adit access udp``, the client
that would drive ``open_udp`` through an edge endpoint, does not exist yet. Everything is on
127.0.0.1: a UDP echo origin, the edge's QUIC listener, the connector. cloudflared runs in a
private network namespace holding only loopback (as in test_cloudflared_quic.py), where a DNS
server answers what it looks up at start.

Loss is reported and bounded: 10,000 datagrams go through an echo at most 64 unanswered at a
time (UDP may drop; on loopback nearly nothing is), and at least 95% must come back intact,
which no broken path can fake.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import dns_records
from adit.edge.quic_listener import QuicTunnelSession
from adit.edge.udp_flows import UdpFlowError
from adit.protocol.datagrams import (
    DatagramVersion,
    datagram_version,
    encode_payload_datagram_v3,
    encode_udp_datagram_v2,
)
from adit.quicio import DatagramSend
from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns
from asynctests import asynctest
from harness import Proc, Processes, adit_command
from udp_tunnel import (
    LOOPBACK,
    InProcessEdge,
    free_udp_port,
    in_process_edge,
    pump_echo,
    receive_closed,
    udp_echo,
)

pytestmark = pytest.mark.process

DATAGRAMS = 10_000
SIZE = 1000
V3_FEATURE = ["-F", "support_datagram_v3_2"]
CLOUDFLARED_TWINS = [
    "test_cloudflared_v2_carries_ten_thousand_datagrams_and_refuses_bad_input",
    "test_cloudflared_v3_carries_ten_thousand_datagrams_and_refuses_bad_input",
]


# -- connectors -----------------------------------------------------------------------------


def start_adit(processes: Processes, edge: InProcessEdge, tmp_path: Path, extra: list[str]) -> Proc:
    credentials = edge.write_credentials(tmp_path / "credentials.json")
    return processes.start(
        "adit",
        [
            *adit_command(),
            "tunnel",
            "run",
            "--credentials-file",
            str(credentials),
            "--edge",
            edge.tunnel_address,
            "--cacert",
            str(edge.ca_path),
            "--protocol",
            "quic",
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "1s",
            "--hello-world",
            *extra,
            str(edge.tunnel.id),
        ],
        env={"HOME": str(tmp_path)},
    )


def start_cloudflared(
    processes: Processes, edge: InProcessEdge, tmp_path: Path, extra: list[str]
) -> Proc:
    credentials = edge.write_credentials(tmp_path / "credentials.json")
    return processes.start(
        "cloudflared",
        [
            CLOUDFLARED,
            "tunnel",
            "--no-autoupdate",
            "--edge",
            edge.tunnel_address,
            "--cacert",
            str(edge.ca_path),
            "--protocol",
            "quic",
            "--no-prechecks",
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "1s",
            "--loglevel",
            "debug",
            "run",
            "--credentials-file",
            str(credentials),
            "--hello-world",
            *extra,
            str(edge.tunnel.id),
        ],
        env={"HOME": str(tmp_path)},
    )


def metrics_text(proc: Proc) -> str:
    log = proc.wait_for_log(r"Starting metrics server on \S+/metrics")
    match = re.search(r"Starting metrics server on (\S+)/metrics", log)
    assert match, log
    with urllib.request.urlopen(f"http://{match.group(1)}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
    return text


async def metric_reaches(proc: Proc, line: str, *, timeout: float = 20.0) -> None:
    """Until ``line`` (a whole sample line) is on the connector's /metrics."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await asyncio.to_thread(metrics_text, proc)
        if line in text.splitlines():
            return
        if loop.time() > deadline:
            udp = [s for s in text.splitlines() if s.startswith("cloudflared_udp")]
            raise AssertionError(f"{line!r} not on /metrics; udp lines: {udp}")
        await asyncio.sleep(0.2)


async def registered(edge: InProcessEdge, proc: Proc) -> QuicTunnelSession:
    try:
        return await edge.session(timeout=30)
    except AssertionError:
        raise AssertionError(f"{proc.name} did not register:\n{proc.text()}") from None


# -- the scenario, for any connector ---------------------------------------------------------

#: v3 flows the edge is done with stay on the connector until idle (v3 cannot say "closed"):
#: short-lived here, so that the flow limit is free again for the next part.
SHORT_IDLE = 2.0


async def carry_ten_thousand(session: QuicTunnelSession, version: DatagramVersion) -> None:
    assert datagram_version(session.live.features if session.live else ()) is version
    async with udp_echo() as (port, echo):
        flow = await session.open_udp(LOOPBACK, port, idle_timeout=SHORT_IDLE)
        tally = await pump_echo(flow, DATAGRAMS, size=SIZE)
        print(
            f"{version.name}: sent {tally.sent}, echoed {tally.received}, "
            f"loss {tally.loss:.3%}, refused {tally.refused}, corrupt {tally.corrupt}; "
            f"edge drops {dict(session.udp.dropped)}"
        )
        assert tally.corrupt == 0 and tally.refused == 0
        assert tally.received >= 0.95 * DATAGRAMS, tally
        assert echo.received >= tally.received
        flow.close("done")


async def bad_input_is_refused_and_counted(
    session: QuicTunnelSession, version: DatagramVersion
) -> None:
    async with udp_echo() as (port, echo):
        flow = await session.open_udp(LOOPBACK, port, idle_timeout=SHORT_IDLE)
        # Too large for the protocol (1280), then for one QUIC packet of the edge's.
        assert not flow.send(os.urandom(1281))
        assert not flow.send(os.urandom(1250))
        assert session.udp.dropped["send: too large"] == 2
        largest = session.conn.quic.max_datagram_payload - 17  # v2 and v3 add 17 bytes each
        big = os.urandom(largest)
        assert flow.send(big)
        assert await asyncio.wait_for(flow.receive(), 10) == big
        # Datagrams for sessions nobody opened: dropped by the connector, which carries on.
        stranger = uuid.uuid4()
        bogus = (
            encode_udp_datagram_v2(stranger, b"who?")
            if version is DatagramVersion.V2
            else encode_payload_datagram_v3(stranger.int, b"who?")
        )
        for _ in range(3):
            assert session.send_datagram(bogus) is DatagramSend.SENT
        before = echo.received
        assert flow.send(b"still here")
        assert await asyncio.wait_for(flow.receive(), 10) == b"still here"
        assert echo.received == before + 1
        flow.close("done")


async def an_unreachable_origin(session: QuicTunnelSession, version: DatagramVersion) -> str:
    """A flow to a port nobody listens on: the connector's socket fails at the first
    datagram. v2: the connector unregisters with its reason, returned; v3: it says nothing,
    and the edge closes the flow when idle."""
    port = free_udp_port()
    flow = await session.open_udp(LOOPBACK, port, idle_timeout=SHORT_IDLE)
    assert flow.send(b"anyone there?")
    reason = await receive_closed(flow, timeout=30)
    if version is DatagramVersion.V3:
        assert reason == f"idle for {SHORT_IDLE:g}s"
    return reason


async def more_flows_than_allowed(
    session: QuicTunnelSession, version: DatagramVersion, *, limit: int
) -> None:
    async with udp_echo() as (port, _):
        flows = [await session.open_udp(LOOPBACK, port) for _ in range(limit)]
        with pytest.raises(UdpFlowError) as refused:
            await session.open_udp(LOOPBACK, port)
        print(f"{version.name}: a flow over the limit: {refused.value}")
        if version is DatagramVersion.V2:
            assert "failed to start udp session due to rate limiting: too many active flows" in (
                str(refused.value)
            )
        else:
            assert "too many active flows" in str(refused.value)
        # The flows it has still work.
        for flow in flows:
            assert flow.send(b"ok")
            assert await asyncio.wait_for(flow.receive(), 10) == b"ok"
            flow.close()


async def settled(proc: Proc, version: DatagramVersion, number: str) -> None:
    """Until the connector holds no session (v2: unregistered; v3: idled out)."""
    if version is DatagramVersion.V2:
        await metric_reaches(proc, f"cloudflared_udp_active_sessions {number.format(0)}")
    else:
        flows = 'cloudflared_udp_active_flows{conn_index="0"}'
        await metric_reaches(proc, f"{flows} {number.format(0)}", timeout=SHORT_IDLE + 20)


async def exercise(
    session: QuicTunnelSession, proc: Proc, version: DatagramVersion, *, number: str
) -> None:
    """The whole scenario against a connector started with ``--max-active-flows 2``;
    ``number`` formats a metric's value as the connector's Prometheus client does."""
    await carry_ten_thousand(session, version)
    await bad_input_is_refused_and_counted(session, version)
    await settled(proc, version, number)
    reason = await an_unreachable_origin(session, version)
    print(f"{proc.name} {version.name}: the unreachable origin's session ended: {reason!r}")
    if version is DatagramVersion.V2:
        # Go's words for the socket's error, from cloudflared and adit alike.
        assert re.fullmatch(
            r"read udp 127\.0\.0\.1:\d+->127\.0\.0\.1:\d+: read: connection refused",
            reason,
        ), reason
    await settled(proc, version, number)
    await more_flows_than_allowed(session, version, limit=2)
    limited = 'flow_client_registrations_rate_limited_total{flow_type="udp"}'
    await metric_reaches(proc, f"{limited} {number.format(1)}")
    if version is DatagramVersion.V2:
        await metric_reaches(proc, f"cloudflared_udp_total_sessions {number.format(5)}")
        # Six registerUdpSession calls served, the refused one included (a refusal is an
        # answer, not an RPC failure).
        served = (
            'cloudflared_rpc_server_operations{handler="session",method="register_udp_session"}'
        )
        await metric_reaches(proc, f"{served} {number.format(6)}")
    else:
        failed = 'cloudflared_udp_failed_flows{conn_index="0"}'
        await metric_reaches(proc, f"{failed} {number.format(1)}")
        total = 'cloudflared_udp_total_flows{conn_index="0"}'
        await metric_reaches(proc, f"{total} {number.format(5)}")
        unknown = 'cloudflared_udp_dropped_datagrams{conn_index="0",reason="write_flow_unknown"}'
        await metric_reaches(proc, f"{unknown} {number.format(3)}")
    # Through all of it, neither side went down.
    assert proc.popen.poll() is None, proc.text()
    assert not session.closed


# -- adit's connector ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [DatagramVersion.V2, DatagramVersion.V3], ids=["v2", "v3"])
def test_adit_carries_ten_thousand_datagrams_and_refuses_bad_input(
    processes: Processes, tmp_path: Path, version: DatagramVersion
) -> None:
    @asynctest
    async def run() -> None:
        async with in_process_edge(tmp_path / "edge") as edge:
            extra = V3_FEATURE if version is DatagramVersion.V3 else []
            proc = start_adit(processes, edge, tmp_path, [*extra, "--max-active-flows", "2"])
            session = await registered(edge, proc)
            await exercise(session, proc, version, number="{}.0")
            label = 'conn_index="0",reason="write_flow_unknown"'
            if version is DatagramVersion.V2:  # adit counts v2's drops too
                await metric_reaches(proc, f"cloudflared_udp_dropped_datagrams{{{label}}} 3.0")

    run()


# -- the unmodified cloudflared --------------------------------------------------------------


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
@pytest.mark.parametrize("name", CLOUDFLARED_TWINS)
def test_in_a_loopback_only_namespace(name: str) -> None:
    rerun_in_private_netns(f"{Path(__file__)}::{name}", resolver=True)


inside = pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")


@pytest.fixture
def resolver() -> Iterator[None]:
    """cloudflared's start-up lookups answered at once (none is needed over QUIC)."""
    with dns_records.serving():
        yield


def _cloudflared(version: DatagramVersion, processes: Processes, tmp_path: Path) -> None:
    @asynctest
    async def run() -> None:
        async with in_process_edge(tmp_path / "edge") as edge:
            extra = V3_FEATURE if version is DatagramVersion.V3 else []
            proc = start_cloudflared(processes, edge, tmp_path, [*extra, "--max-active-flows", "2"])
            session = await registered(edge, proc)
            await exercise(session, proc, version, number="{}")

    run()


@inside
def test_cloudflared_v2_carries_ten_thousand_datagrams_and_refuses_bad_input(
    processes: Processes, tmp_path: Path, resolver: None
) -> None:
    _cloudflared(DatagramVersion.V2, processes, tmp_path)


@inside
def test_cloudflared_v3_carries_ten_thousand_datagrams_and_refuses_bad_input(
    processes: Processes, tmp_path: Path, resolver: None
) -> None:
    _cloudflared(DatagramVersion.V3, processes, tmp_path)
