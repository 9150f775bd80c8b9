"""Every QUIC connection on the edge has a bounded life, and its end frees all it held.

What a QUIC session holds in the listener, read through the state seam (tests/seams): its
routes (every connection id the edge issued it), its place in the per-address count and among
the handshakes that make others prove their address. A connection that never registers is
closed at the registration timeout, as over TCP; one whose peer sends CONNECTION_CLOSE, or
vanishes, is freed; datagrams still addressed to it afterwards make nothing.

Found here (failed before its fix): the listener kept every connection id it had ever routed
to a session, retired ones included, for the session's life: a connector retiring ids (RETIRE_
CONNECTION_ID, a new one issued each time) grew that list by one per retirement, without end,
on a connection that may live for months.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from adit.edge.tunnel_session import REGISTRATION_TIMEOUT
from adit.protocol.quic_capnp import ConnectRequest
from adversary import split_hostport
from harness import Edge, Processes, Tunnel, create_tunnel, login, request, start_edge
from quic_hostile import HostileQuic, QuicState, quic_seam_env, quic_state, udp_socket, wait_state

pytestmark = pytest.mark.process

ATTACKER = "mallory.example.test"
SOURCE = "127.0.0.7"


@pytest.fixture
def edge(processes: Processes) -> Edge:
    """An edge whose QUIC listener state tests can read (tests/seams)."""
    return start_edge(processes, env=quic_seam_env(processes.tmp))


def _tunnel(edge: Edge, tmp_path: Path) -> Tunnel:
    account = login(edge, tmp_path / "mallory", "mallory")
    return create_tunnel(account, "mallory", ATTACKER)


def _empty(state: QuicState) -> bool:
    return (
        state.sessions == 0
        and state.routes == 0
        and state.tracked_ids == 0
        and state.unregistered == 0
        and state.per_ip == {}
    )


def _lines(edge: Edge, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [line for line in edge.proc.text().splitlines() if regex.search(line)]


def test_a_connection_that_never_registers_is_closed_at_the_registration_timeout(
    edge: Edge,
) -> None:
    async def scenario() -> tuple[QuicState, HostileQuic, int]:
        # It finishes its handshake and answers the edge's PINGs: only the registration
        # timeout can end it.
        idle = HostileQuic.for_tunnel(edge, None, source=SOURCE)
        await idle.open(register=False)
        port = idle.local_address[1]
        held = await asyncio.to_thread(quic_state, edge)
        await idle.wait_ended(REGISTRATION_TIMEOUT + 20)
        idle.abandon()
        return held, idle, port

    held, idle, port = asyncio.run(scenario())
    assert held.sessions == 1 and held.unregistered == 1 and held.per_ip == {SOURCE: 1}, held
    assert held.routes >= 2, held
    assert idle.closed is not None, "the edge never closed it"
    assert idle.closed.error_code == 0 and idle.closed.frame_type is None, idle.closed
    assert _lines(edge, rf"connector {SOURCE}:{port} did not register in time"), edge.proc.text()
    wait_state(edge, _empty, what="everything the connection held freed")


def test_a_connector_that_closes_frees_its_session_and_its_requests_fail(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _tunnel(edge, tmp_path)
    asked: list[int] = []

    def never_answer(client: HostileQuic, stream_id: int, request: ConnectRequest) -> None:
        asked.append(stream_id)

    async def scenario() -> tuple[QuicState, int, bytes, int]:
        hostile = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE, answer=never_answer)
        await hostile.open()
        held = await asyncio.to_thread(quic_state, edge)
        port = hostile.local_address[1]
        edge_cid = hostile.quic._peer_cid.cid
        pending = asyncio.ensure_future(asyncio.to_thread(request, edge, ATTACKER, path="/x"))
        for _ in range(500):
            if asked:
                break
            await asyncio.sleep(0.02)
        assert asked, "the request never reached the connector"
        await hostile.close(reason="going away")
        reply = await pending
        return held, reply.status, edge_cid, port

    held, status, edge_cid, port = asyncio.run(scenario())
    assert held.sessions == 1 and held.per_ip == {SOURCE: 1}, held
    # The request in flight fails with the connection (a page, not a hang).
    assert status == 502, status
    wait_state(edge, _empty, what="everything the connection held freed")
    lost = _lines(edge, rf"tunnel connection lost .*from={SOURCE}:{port}: ")
    assert lost and "closed by the peer (application error 0x0: going away)" in lost[0], lost
    # Its connection ids lead nowhere now: packets addressed to them make nothing.
    address = split_hostport(edge.tunnel[0])
    sock = udp_socket(SOURCE)
    try:
        for _ in range(200):
            sock.sendto(bytes([0x40]) + edge_cid + os.urandom(1100), address)
    finally:
        sock.close()
    state = quic_state(edge)
    assert _empty(state), state


def test_a_connector_that_vanishes_is_freed(edge: Edge, tmp_path: Path) -> None:
    tunnel = _tunnel(edge, tmp_path)

    async def scenario() -> tuple[QuicState, int, int]:
        registered = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE)
        await registered.open()
        # A second one that finished its handshake but never registers, gone as well.
        unregistered = HostileQuic.for_tunnel(edge, None, source=SOURCE)
        await unregistered.open(register=False)
        held = await asyncio.to_thread(quic_state, edge)
        ports = registered.local_address[1], unregistered.local_address[1]
        registered.abandon()  # no CONNECTION_CLOSE: the socket is simply gone
        unregistered.abandon()
        return held, *ports

    held, port, _ = asyncio.run(scenario())
    assert held.sessions == 2 and held.per_ip == {SOURCE: 2}, held
    wait_state(edge, _empty, timeout=40, what="both connections freed")
    lost = _lines(edge, rf"tunnel connection lost .*from={SOURCE}:{port}: ")
    assert lost and ("Idle timeout" in lost[0] or "no answer from the peer" in lost[0]), lost


def test_retiring_connection_ids_does_not_grow_what_the_listener_keeps(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _tunnel(edge, tmp_path)
    retirements = 300

    async def scenario() -> tuple[QuicState, QuicState, int]:
        hostile = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE)
        await hostile.open()
        try:
            # Every id the edge gives the connection is routed before the client may use it.
            start = await asyncio.to_thread(quic_state, edge)
            retired = 0
            for n in range(100 * retirements):
                if retired >= retirements or hostile.closed is not None:
                    break
                if not hostile.quic._peer_cid_available:
                    await asyncio.sleep(0.01)  # the edge's next NEW_CONNECTION_ID
                    continue
                hostile.quic.change_connection_id()  # RETIRE_CONNECTION_ID for the one in use
                hostile.quic.send_ping(n)
                hostile.flush()
                retired += 1
                await asyncio.sleep(0)
            await asyncio.sleep(0.5)
            return start, await asyncio.to_thread(quic_state, edge), retired
        finally:
            await hostile.close()

    start, after, retired = asyncio.run(scenario())
    assert retired == retirements
    # As many routes as the connection has ids in use (the client's Initial's, and as many
    # issued as the client takes: aioquic's active_connection_id_limit, 8), none beyond them.
    assert start.routes == 1 + 8, start
    assert after.sessions == 1 and after.routes == start.routes, (start, after)
    assert after.tracked_ids == after.routes, (start, after)
    wait_state(edge, _empty, what="everything the connection held freed")


def test_a_client_moving_to_a_new_connection_id_at_once_is_heard(
    edge: Edge, tmp_path: Path
) -> None:
    """The ids the edge issues are routed when they are sent, not when the connection's next
    datagram or timer comes: a client may use a new one at once, and send nothing else.
    Failed before its fix: the edge knew only the handshake's ids when the client moved, and
    dropped what the client sent until one of its own timers came (about 25 ms later)."""
    tunnel = _tunnel(edge, tmp_path)

    async def scenario() -> QuicState:
        hostile = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE)
        hostile.switch_at_once = True
        try:
            await hostile.open(register=False)
            await asyncio.wait_for(hostile.switched.wait(), 10)
            moved = await asyncio.to_thread(quic_state, edge)
            await hostile.register(timeout=10)
            return moved
        finally:
            await hostile.close()

    moved = asyncio.run(scenario())
    # The Initial's id, the handshake's and the 7 the edge issued after it (less the one the
    # client left, if its RETIRE_CONNECTION_ID came already and the new one is not sent yet);
    # before the fix, the two of the handshake alone.
    assert moved.sessions == 1 and moved.routes in (1 + 7, 1 + 8), moved
    wait_state(edge, _empty, what="everything the connection held freed")
