"""UDP sessions, both roles in one event loop over a real QUIC connection on 127.0.0.1.

The edge (:class:`~adit.edge.server.EdgeServer`, in process) opens flows with ``open_udp`` on
the connection adit's connector (:class:`~adit.workers.quic_dial.QuicEdgeConnection`, dialled
in process) registered; the origin is a UDP echo. Datagram v2 (RPC registration, payload ‖
session id ‖ 0) and v3 (registration datagrams) by the features the connector announces.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adit.edge.quic_listener import QuicTunnelSession
from adit.edge.udp_flows import UdpFlowError
from adit.protocol.datagrams import (
    RegistrationResponseDatagramV3,
    RegistrationStatus,
    decode_datagram_v3,
    encode_payload_datagram_v3,
    encode_registration_datagram_v3,
    encode_udp_datagram_v2,
)
from adit.protocol.quic_rpc import (
    CloudflaredClientSession,
    ConfigurationUpdated,
    UdpSessionRegistered,
)
from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.quic_rpc_streams import call_on_new_stream
from adit.quicio import DatagramSend
from adit.workers.edge_connection import Registration
from adit.workers.quic_dial import QuicEdgeConnection, connector_quic_configuration, dial_quic
from adit.workers.udp_sessions import FlowLimiter, UdpCounters
from asynctests import uvloop_test
from udp_tunnel import (
    LOOPBACK,
    InProcessEdge,
    eventually,
    free_udp_port,
    in_process_edge,
    pump_echo,
    receive_closed,
    udp_echo,
)

V2 = ("serialized_headers", "support_datagram_v2")
V3 = ("serialized_headers", "support_datagram_v2", "support_datagram_v3_2")


class _NoOrigins:
    """The connector's HTTP side: no request reaches it in these tests."""

    async def serve(self, stream: Any, rule: Any) -> None:
        raise AssertionError("no HTTP request expected")

    async def serve_private(self, stream: Any, options: Any) -> None:
        raise AssertionError("no TCP flow expected")


@dataclass
class Pair:
    edge: InProcessEdge
    connector: QuicEdgeConnection
    session: QuicTunnelSession
    counters: UdpCounters
    limiter: FlowLimiter


@contextlib.asynccontextmanager
async def tunnel(
    tmp_path: Path, features: tuple[str, ...], *, max_active_flows: int = 0
) -> AsyncIterator[Pair]:
    async with in_process_edge(tmp_path / "edge") as edge:
        registration = Registration(
            auth=TunnelAuth(edge.account.tag, edge.tunnel.secret),
            tunnel_id=edge.tunnel.id,
            conn_index=0,
            options=ConnectionOptions(
                client=ClientInfo(
                    client_id=uuid.uuid4(), features=features, version="test", arch="test"
                )
            ),
        )
        limiter, counters = FlowLimiter(max_active_flows), UdpCounters()
        host, port = edge.tunnel_address.rsplit(":", 1)
        connector = await dial_quic(
            host,
            int(port),
            connector_quic_configuration(edge.server.ca.cert_pem),
            lambda quic: QuicEdgeConnection(
                quic,
                registration,
                _NoOrigins(),
                lambda: None,  # type: ignore[arg-type, return-value]
                flow_limiter=limiter,
                udp_counters=counters,
            ),
            handshake_timeout=10,
        )
        try:
            await asyncio.wait_for(asyncio.shield(connector.registered), 10)
            session = await edge.session()
            yield Pair(edge, connector, session, counters, limiter)
        finally:
            # The connection ends (its CONNECTION_CLOSE, then its socket and its origin
            # sockets close) before the loop does.
            connector.close("test over")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(connector.lost), 10)
            if connector.udp is not None:
                connector.udp.close()


@pytest.mark.parametrize("features", [V2, V3], ids=["v2", "v3"])
def test_datagrams_cross_to_an_echo_and_back_in_order_of_sending(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, features) as pair, udp_echo() as (port, echo):
            flow = await pair.session.open_udp(LOOPBACK, port)
            tally = await pump_echo(flow, 2000, size=700)
            # On loopback nothing should be lost; a broken path returns nothing at all.
            assert tally.corrupt == 0 and tally.refused == 0
            assert tally.received >= 0.99 * tally.sent, tally
            assert echo.received >= tally.received
            assert len(pair.connector.sessions) == 1
            if features == V2:
                assert (pair.counters.total_sessions, pair.counters.active_sessions) == (1, 1)
            else:
                assert pair.counters.total_flows[0] == pair.counters.active_flows[0] == 1
            flow.close("client done")
            assert flow.closed and flow.close_reason == "client done"
            assert not flow.send(b"late")
            if features == V2:
                # v2 tells the connector, which closes the session and its socket.
                await eventually(lambda: len(pair.connector.sessions) == 0, what="unregistered")
                assert pair.counters.active_sessions == 0
            # Every RPC stream either side opened was closed both ways: only stream 0 is left.
            await eventually(lambda: list(pair.session.channels) == [0], what="edge streams")
            await eventually(lambda: list(pair.connector.channels) == [0], what="streams")

    run()


@pytest.mark.parametrize("features", [V2, V3], ids=["v2", "v3"])
def test_an_idle_session_closes_on_the_connector_and_v2_tells_the_edge_why(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, features) as pair, udp_echo() as (port, _):
            flow = await pair.session.open_udp(LOOPBACK, port, idle_timeout=1)
            assert flow.send(b"ping")
            assert await asyncio.wait_for(flow.receive(), 5) == b"ping"
            await eventually(lambda: len(pair.connector.sessions) == 0, what="idle close")
            # v2: cloudflared's words, on the edge's SessionManager; v3: each side on its own.
            reason = await receive_closed(flow)
            if features == V2:
                assert reason == "session idle for 1s"
                assert pair.counters.active_sessions == 0
            else:
                assert reason == "idle for 1s"
                assert pair.counters.active_flows[0] == 0

    run()


@pytest.mark.parametrize("features", [V2, V3], ids=["v2", "v3"])
def test_a_port_nobody_listens_on_ends_the_session_with_the_origins_error(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, features) as pair:
            port = free_udp_port()
            # A connected UDP socket opens whatever listens: the origin's refusal comes later.
            flow = await pair.session.open_udp(LOOPBACK, port, idle_timeout=2)
            assert flow.send(b"anyone?")
            await eventually(lambda: len(pair.connector.sessions) == 0, what="origin error")
            reason = await receive_closed(flow)
            if features == V2:
                assert reason.startswith("read udp 127.0.0.1:"), reason
                assert reason.endswith(f"->127.0.0.1:{port}: read: connection refused"), reason
            else:
                assert pair.counters.failed_flows[0] == 1
                assert reason == "idle for 2s"  # v3 has no way to tell the edge
            assert not pair.connector.closed and not pair.session.closed

    run()


@pytest.mark.parametrize("features", [V2, V3], ids=["v2", "v3"])
def test_more_flows_than_allowed_are_refused_with_the_reason(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    @uvloop_test
    async def run() -> None:
        async with (
            tunnel(tmp_path, features, max_active_flows=1) as pair,
            udp_echo() as (
                port,
                _,
            ),
        ):
            first = await pair.session.open_udp(LOOPBACK, port)
            with pytest.raises(UdpFlowError) as refused:
                await pair.session.open_udp(LOOPBACK, port)
            if features == V2:
                assert "failed to start udp session due to rate limiting: too many active " in str(
                    refused.value
                )
            else:
                assert "too many active flows" in str(refused.value)
            # The first flow still works, and once it is gone there is room again.
            assert first.send(b"still")
            assert await asyncio.wait_for(first.receive(), 5) == b"still"
            if features == V2:
                first.close()
                await eventually(lambda: pair.limiter.active == 0, what="slot freed")
                again = await pair.session.open_udp(LOOPBACK, port)
                assert again.send(b"again")
                assert await asyncio.wait_for(again.receive(), 5) == b"again"

    run()


def test_the_edge_caps_flows_per_connection(tmp_path: Path) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, V2) as pair, udp_echo() as (port, _):
            pair.session.udp.max_flows = 2
            await pair.session.open_udp(LOOPBACK, port)
            await pair.session.open_udp(LOOPBACK, port)
            with pytest.raises(UdpFlowError, match="too many UDP flows on this tunnel connection"):
                await pair.session.open_udp(LOOPBACK, port)
            with pytest.raises(UdpFlowError, match="invalid UDP port 0"):
                await pair.session.open_udp(LOOPBACK, 0)

    run()


@pytest.mark.parametrize("features", [V2, V3], ids=["v2", "v3"])
def test_oversized_and_unknown_datagrams_are_dropped_and_counted(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, features) as pair, udp_echo() as (port, echo):
            flow = await pair.session.open_udp(LOOPBACK, port)
            # Over the protocol's 1280 bytes, and over what one QUIC packet of ours holds.
            assert not flow.send(b"x" * 1281)
            assert not flow.send(b"x" * 1250)
            assert flow.dropped_sending == 2
            assert pair.session.udp.dropped["send: too large"] == 2
            # Datagrams for sessions nobody opened, both ways.
            stranger = uuid.uuid4()
            if features == V2:
                bogus = encode_udp_datagram_v2(stranger, b"who?")
            else:
                bogus = encode_payload_datagram_v3(stranger.int, b"who?")
            assert pair.session.send_datagram(bogus) is DatagramSend.SENT
            assert pair.connector.send_datagram(bogus) is DatagramSend.SENT
            assert pair.session.send_datagram(b"\x09garbage") is DatagramSend.SENT
            await eventually(
                lambda: pair.counters.dropped[(0, "write_flow_unknown")] == 1, what="unknown"
            )
            await eventually(lambda: pair.session.udp.dropped["unknown flow"] == 1, what="edge")
            await eventually(lambda: pair.counters.dropped[(0, "write_failed")] == 1, what="bad")
            # Nothing of it reached the origin, and the flow still works.
            assert echo.received == 0
            assert flow.send(b"fine")
            assert await asyncio.wait_for(flow.receive(), 5) == b"fine"

    run()


def test_a_v3_registration_sent_again_is_answered_ok_again(tmp_path: Path) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, V3) as pair, udp_echo() as (port, _):
            answers: list[RegistrationResponseDatagramV3] = []
            original = pair.session.udp.on_datagram

            def spy(data: bytes) -> None:
                message = decode_datagram_v3(data)
                if isinstance(message, RegistrationResponseDatagramV3):
                    answers.append(message)
                original(data)

            pair.session.udp.on_datagram = spy  # type: ignore[method-assign]
            request = uuid.uuid4().int
            registration = encode_registration_datagram_v3(request, LOOPBACK, port, idle_seconds=30)
            for _ in range(3):
                pair.session.send_datagram(registration)
                await eventually(lambda: len(answers) >= 1, what="an answer")
            await eventually(lambda: len(answers) == 3, what="three answers")
            assert {a.status for a in answers} == {RegistrationStatus.OK}
            assert {a.request_id for a in answers} == {request}
            assert len(pair.connector.sessions) == 1
            assert pair.counters.total_flows[0] == 1
            # cloudflared_udp_retry_flow_responses: the two answers sent again.
            assert pair.counters.retried == {0: 2}

    run()


@pytest.mark.parametrize("features", [V2, V3], ids=["v2", "v3"])
def test_a_session_the_connector_cannot_open_a_socket_for_is_refused(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, features) as pair:
            # The broadcast address: connect() refuses it (EACCES) without SO_BROADCAST.
            broadcast = ipaddress.IPv4Address("255.255.255.255")
            with pytest.raises(UdpFlowError) as refused:
                await pair.session.open_udp(broadcast, 53)
            if features == V2:
                assert str(refused.value) == (
                    "the connector refused the UDP session: unable to dial udp to origin "
                    "255.255.255.255:53: Permission denied"
                )
            else:
                assert str(refused.value) == (
                    "the connector refused the UDP flow: unable to bind socket"
                )
            assert pair.limiter.active == 0 and len(pair.connector.sessions) == 0
            assert len(pair.session.udp) == 0

    run()


def test_configuration_pushes_over_rpc_are_refused_as_over_http2(tmp_path: Path) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, V2) as pair:
            client = CloudflaredClientSession()
            question = client.update_configuration(7, b"{}")
            answer = await call_on_new_stream(pair.session, client, question)
            assert answer == ConfigurationUpdated(
                question_id=question,
                latest_applied_version=-1,
                error="this connector is locally managed",
            )
            # Served (a refusal in the answer is no RPC failure), as cloudflared counts it.
            (served,) = pair.counters.rpc_server.snapshot()
            assert (served.handler, served.method) == ("config", "update_configuration")
            assert (served.operations, served.failures) == (1, 0)

    run()


def test_v3_connectors_refuse_rpc_registrations_as_cloudflared(tmp_path: Path) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, V3) as pair:
            client = CloudflaredClientSession()
            question = client.register_udp_session(uuid.uuid4(), LOOPBACK, 53, 0)
            answer = await call_on_new_stream(pair.session, client, question)
            assert isinstance(answer, UdpSessionRegistered)
            assert answer.error == "datagram v3 does not support RegisterUdpSession RPC"
            assert pair.counters.unsupported == {(0, "register_udp_session"): 1}

    run()


@pytest.mark.parametrize("features", [V2, V3], ids=["v2", "v3"])
def test_flows_close_when_the_tunnel_connection_ends(
    tmp_path: Path, features: tuple[str, ...]
) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, features) as pair, udp_echo() as (port, _):
            flows = [await pair.session.open_udp(LOOPBACK, port) for _ in range(3)]
            pair.connector.close("connector going away")
            for flow in flows:
                assert (await receive_closed(flow)) == "the tunnel connection closed"
            await asyncio.wait_for(asyncio.shield(pair.connector.lost), 10)
            assert len(pair.connector.sessions) == 0
            assert pair.limiter.active == 0
            with pytest.raises(UdpFlowError):
                await pair.session.open_udp(LOOPBACK, port)

    run()


def test_a_v3_idle_timeout_under_a_second_reaches_the_connector_as_one_second(
    tmp_path: Path,
) -> None:
    @uvloop_test
    async def run() -> None:
        async with tunnel(tmp_path, V3) as pair, udp_echo() as (port, _):
            flow = await pair.session.open_udp(LOOPBACK, port, idle_timeout=0.4)
            # 0 would be the connector's default, 210 s: whole seconds are rounded up.
            (session,) = pair.connector.sessions._sessions.values()
            assert session.idle_timeout == 1.0
            assert flow.idle_timeout == 0.4

    run()
