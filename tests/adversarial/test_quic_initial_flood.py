"""Initials that never finish a handshake, and the Retry tokens that hold them back.

A QUIC Initial can come from any (forged) address and costs the edge a connection: the
listener makes new connections prove their address with a Retry (RFC 9000 §8.1) while
``RETRY_ABOVE`` handshakes are in flight or the address already has ``RETRY_ABOVE_PER_ADDRESS``
connections, caps them per address, and ends every handshake at QUIC's idle timeout or its
deadline. These tests flood it with Initials from many ports of many addresses, check what a
Retry token proves (its address, its age), that an honest client gets through a Retry, and that
another tenant is served all along.

Found here (each failed before its fix):

* a Retry token from another address (or port), or an expired one, was taken for no token: at
  an address under the thresholds the edge made the connection anyway (a client's token-bearing
  Initial replayed from elsewhere became a connection); under them it sent a second Retry, which
  a client must ignore (RFC 9000 §17.2.5.2), so an honest client with a stale token hung until
  its handshake timeout. Now: no connection, and CONNECTION_CLOSE INVALID_TOKEN (§8.1.3);
* every handshake that never finished logged a warning that the peer "does not answer PINGs"
  (and then that it failed): the edge's liveness ran before there was anything to PING with;
* every Initial refused at the per-address cap was a warning line of its own: a flood of them
  was a flood of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from aioquic.quic.packet import QuicPacketType

from adit.edge.quic_listener import RETRY_ABOVE, RETRY_ABOVE_PER_ADDRESS
from adversary import SteadyLoad, probe, split_hostport, start_tenant
from harness import (
    Edge,
    Origin,
    Processes,
    Tunnel,
    create_tunnel,
    login,
    request,
    start_connector,
    start_edge,
    write_config,
)
from quic_hostile import (
    TOKEN_LIFETIME_SEAM,
    HostileQuic,
    QuicState,
    answers_until_marker,
    initial_close_code,
    long_header,
    packet_type,
    quic_seam_env,
    quic_state,
    raw_client,
    to_send,
    udp_socket,
    varint2,
    wait_state,
)

pytestmark = pytest.mark.process

VICTIM = "victim.example.test"
LATE = "late.example.test"
ATTACKER = "mallory.example.test"
INVALID_TOKEN = 0x0B
MIB = 1 << 20
#: The address whose connections put it over the per-address threshold.
HOLDER = "127.0.0.3"
#: Addresses the flood comes from (many ports of each).
FLOOD = [f"127.0.0.{n}" for n in range(10, 30)]
RETRY = QuicPacketType.RETRY
INITIAL = QuicPacketType.INITIAL


@pytest.fixture
def edge(processes: Processes) -> Edge:
    """An edge whose QUIC listener state tests can read (tests/seams)."""
    return start_edge(processes, env=quic_seam_env(processes.tmp))


def _attacker(edge: Edge, tmp_path: Path) -> Tunnel:
    account = login(edge, tmp_path / "mallory", "mallory")
    return create_tunnel(account, "mallory", ATTACKER)


async def _holders(
    edge: Edge, tunnel: Tunnel, count: int, source: str = HOLDER
) -> list[HostileQuic]:
    """``count`` registered connections from ``source`` (they answer the edge's PINGs)."""
    holders = []
    for index in range(count):
        holder = HostileQuic.for_tunnel(edge, tunnel, source=source, conn_index=index)
        await holder.open()
        holders.append(holder)
    return holders


def _retry_then_replay(
    edge: Edge, sources: list[str]
) -> tuple[list[bytes], dict[str, list[bytes]], bytes]:
    """A client's first flight from :data:`HOLDER` (answered with Retry packets), then its
    token-bearing Initials sent from each of ``sources`` (``""``: a new port of HOLDER).
    Returns the answers to the first flight, the answers to each replay, and the connection
    id the replayed Initials were addressed to (the Retry's source connection id)."""
    client = raw_client(edge)
    sock = udp_socket(HOLDER)
    try:
        retries = answers_until_marker(sock, edge, to_send(client))
    finally:
        sock.close()
    assert retries, "no answer to the first flight"
    address = split_hostport(edge.tunnel[0])
    client.receive_datagram(retries[0], address, now=time.monotonic())
    replay = to_send(client)
    assert replay, "aioquic did not answer the Retry"
    answered: dict[str, list[bytes]] = {}
    for source in sources:
        other = udp_socket(source or HOLDER)
        try:
            answered[source] = answers_until_marker(other, edge, replay)
        finally:
            other.close()
    return retries, answered, client._peer_cid.cid


def test_past_the_per_address_threshold_a_retry_is_demanded_and_proves_the_address(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _attacker(edge, tmp_path)

    async def scenario() -> tuple[
        QuicState, QuicState, tuple[list[bytes], dict[str, list[bytes]], bytes], HostileQuic
    ]:
        holders = await _holders(edge, tunnel, RETRY_ABOVE_PER_ADDRESS)
        try:
            before = await asyncio.to_thread(quic_state, edge)
            replayed = await asyncio.to_thread(_retry_then_replay, edge, ["127.0.0.4", ""])
            after = await asyncio.to_thread(quic_state, edge)
            # An honest client (aioquic's) gets through the Retry and registers.
            honest = HostileQuic.for_tunnel(
                edge, tunnel, source=HOLDER, conn_index=RETRY_ABOVE_PER_ADDRESS
            )
            await honest.open()
            await honest.close()
            return before, after, replayed, honest
        finally:
            for holder in holders:
                await holder.close()

    before, after, (retries, replays, cid), honest = asyncio.run(scenario())
    assert before.per_ip.get(HOLDER) == RETRY_ABOVE_PER_ADDRESS, before
    # Past the threshold: only Retry packets, and no connection for an Initial without token.
    assert retries and all(packet_type(r) is RETRY for r in retries), retries
    # A token is valid from where it was given only: not from another address, not from
    # another port of the same one. Neither makes a connection; both are told INVALID_TOKEN.
    for source in ("127.0.0.4", ""):
        answers = replays[source]
        assert answers, f"replay from {source or 'another port'}: no answer"
        codes = [initial_close_code(a, cid) for a in answers]
        assert codes == [INVALID_TOKEN] * len(answers), (source, codes)
    assert after.created == before.created, (before, after)
    assert after.retries - before.retries == len(retries), (before, after)
    assert honest.retried and honest.registered is not None


def test_adits_connector_gets_through_a_retry(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path
) -> None:
    """The real connector, from an address that already holds the threshold's connections:
    its Initial must be answered with a Retry, and it registers through it."""
    tunnel = _attacker(edge, tmp_path)
    quic = ["--protocol", "quic", "--ha-connections", "1"]

    async def scenario() -> tuple[QuicState, QuicState, int]:
        holders = await _holders(edge, tunnel, RETRY_ABOVE_PER_ADDRESS, source="127.0.0.1")
        try:
            before = await asyncio.to_thread(quic_state, edge)
            await asyncio.to_thread(
                start_tenant, processes, edge, "victim", VICTIM, origin.url, extra=quic
            )
            after = await asyncio.to_thread(quic_state, edge)
            reply = await asyncio.to_thread(request, edge, VICTIM, path="/through-retry")
            return before, after, reply.status
        finally:
            for holder in holders:
                await holder.close()

    before, after, status = asyncio.run(scenario())
    assert before.per_ip.get("127.0.0.1") == RETRY_ABOVE_PER_ADDRESS, before
    assert after.retries > before.retries, (before, after)
    assert after.per_ip.get("127.0.0.1") == RETRY_ABOVE_PER_ADDRESS + 1, after
    assert status == 200
    lines = edge.proc.text().splitlines()
    registered = [line for line in lines if "Registered tunnel connection" in line]
    assert "protocol=quic" in registered[-1], registered


@pytest.fixture
def expiring_edge(processes: Processes) -> Edge:
    """An edge whose Retry tokens are expired as soon as they are made (tests/seams)."""
    return start_edge(processes, env=quic_seam_env(processes.tmp, **{TOKEN_LIFETIME_SEAM: "-1"}))


def test_an_expired_token_is_refused_at_once(expiring_edge: Edge, tmp_path: Path) -> None:
    edge = expiring_edge
    tunnel = _attacker(edge, tmp_path)

    async def scenario() -> tuple[QuicState, QuicState, HostileQuic]:
        holders = await _holders(edge, tunnel, RETRY_ABOVE_PER_ADDRESS)
        try:
            before = await asyncio.to_thread(quic_state, edge)
            late = HostileQuic.for_tunnel(edge, tunnel, source=HOLDER)
            with pytest.raises(ConnectionError):
                await late.open(timeout=20)
            late.abandon()
            return before, await asyncio.to_thread(quic_state, edge), late
        finally:
            for holder in holders:
                await holder.close()

    before, after, late = asyncio.run(scenario())
    assert late.retried
    # Told why at once (the old edge sent another Retry, which a client must ignore).
    assert late.closed is not None and late.closed.error_code == INVALID_TOKEN, late.closed
    assert after.created == before.created, (before, after)


class _Flood:
    """Initials from many ports of :data:`FLOOD`'s addresses, one socket (a new port) per
    Initial, never answered; in a thread until stopped (bounded)."""

    def __init__(self, edge: Edge, per_round: int = 40, rounds: int = 400) -> None:
        self.edge = edge
        self.per_round = per_round
        self.rounds = rounds
        self.sent = 0
        #: The packet types of the first answer each socket got (read at the end).
        self.first_answers: list[object] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> _Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for sock in self._sockets:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                self.first_answers.append(packet_type(sock.recv(65536)))
            sock.close()

    def _run(self) -> None:
        address = split_hostport(self.edge.tunnel[0])
        for round_ in range(self.rounds):
            if self._stop.is_set():
                return
            for n in range(self.per_round):
                sock = udp_socket(FLOOD[(round_ * self.per_round + n) % len(FLOOD)])
                sock.sendto(to_send(raw_client(self.edge, post_quantum=False))[0], address)
                self._sockets.append(sock)
                self.sent += 1
            self._stop.wait(0.05)


def _flood_lines(text: str) -> list[str]:
    pattern = re.compile(r"127\.0\.0\.(1\d|2\d)\b")
    return [line for line in text.splitlines() if pattern.search(line)]


def test_an_initial_flood_stays_bounded_and_other_tenants_are_served(
    processes: Processes, edge: Edge, origin: Origin
) -> None:
    quic = ["--protocol", "quic", "--ha-connections", "1"]
    start_tenant(processes, edge, "victim", VICTIM, origin.url, extra=quic)
    assert "protocol=quic" in edge.proc.text()
    # The late tenant's account, tunnel and route exist; its connector starts mid-flood.
    late_home = processes.tmp / "home-late"
    late_tunnel = create_tunnel(login(edge, late_home, "late"), "late", LATE)
    edge_probe = probe(edge.proc)
    before = quic_state(edge)
    snapshots: list[QuicState] = []
    with SteadyLoad(edge, VICTIM, rate=20) as load:
        time.sleep(1.0)
        rss = edge_probe.rss()
        with _Flood(edge) as flood:
            for _ in range(40):
                snapshots.append(quic_state(edge))
                if snapshots[-1].retries - before.retries >= 100:
                    break
                time.sleep(0.1)
            # Another tenant's connector dials while the flood holds the handshake slots.
            config = write_config(
                processes.tmp / "config-late.yml", LATE, [{"service": origin.url}]
            )
            start_connector(processes, late_tunnel, config, name="connector-late", extra=quic)
            assert request(edge, LATE, path="/late").status == 200
            snapshots.append(quic_state(edge))
        grown = edge_probe.rss() - rss
    assert flood.sent > RETRY_ABOVE * 4
    # Never more handshakes without a proven address than the threshold (the two honest
    # connectors' own, which may have proven theirs, aside).
    assert max(s.unregistered for s in snapshots) <= RETRY_ABOVE + 2, snapshots
    # Past it, Retry packets: sockets got a server Initial (a handshake) or a Retry, nothing
    # else; and no connection was made for a Retry.
    last = snapshots[-1]
    assert last.retries > before.retries, last
    assert RETRY in flood.first_answers
    assert set(flood.first_answers) <= {INITIAL, RETRY}, set(flood.first_answers)
    # Every flood handshake ends (QUIC's idle timeout, the handshake deadline) and its place
    # in the counts goes with it.
    wait_state(
        edge,
        lambda s: s.unregistered == 0 and not set(s.per_ip) & set(FLOOD),
        timeout=60,
        what="the flood's handshakes ended",
    )
    assert load.failures() == [], load.failures()[:5]
    assert grown < 64 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB"
    # Handshakes that never finish are not news: no line of the log per flood connection.
    assert _flood_lines(edge.proc.text()) == [], _flood_lines(edge.proc.text())[:5]
    assert request(edge, VICTIM, path="/after").status == 200


@pytest.fixture
def capped_edge(processes: Processes) -> Edge:
    """An edge that takes at most RETRY_ABOVE_PER_ADDRESS + 1 QUIC connections per address."""
    burst = str(RETRY_ABOVE_PER_ADDRESS + 1)
    return start_edge(
        processes, env=quic_seam_env(processes.tmp, ADIT_EDGE_TUNNEL_DIAL_BURST=burst)
    )


def _lookalikes(edge: Edge, count: int) -> None:
    """``count`` full-size version 1 Initial headers over random bytes, from HOLDER."""
    address = split_hostport(edge.tunnel[0])
    sockets = [udp_socket(HOLDER) for _ in range(16)]
    try:
        for n in range(count):
            head = long_header(1, os.urandom(8), os.urandom(8), first=0xC0)
            rest = 1200 - len(head) - 3
            sockets[n % len(sockets)].sendto(
                head + b"\0" + varint2(rest) + os.urandom(rest), address
            )
            if n % 200 == 199:
                time.sleep(0.005)
    finally:
        for sock in sockets:
            sock.close()


def test_initials_refused_at_the_address_cap_are_not_a_line_each(
    capped_edge: Edge, tmp_path: Path
) -> None:
    edge = capped_edge
    tunnel = _attacker(edge, tmp_path)
    cap = RETRY_ABOVE_PER_ADDRESS + 1

    async def scenario() -> tuple[QuicState, QuicState]:
        holders = await _holders(edge, tunnel, RETRY_ABOVE_PER_ADDRESS)
        # The last place goes to a client that proves its address.
        last = HostileQuic.for_tunnel(edge, tunnel, source=HOLDER, conn_index=cap - 1)
        await last.open()
        holders.append(last)
        try:
            full = await asyncio.to_thread(quic_state, edge)
            await asyncio.to_thread(_lookalikes, edge, 3000)
            return full, await asyncio.to_thread(quic_state, edge)
        finally:
            for holder in holders:
                await holder.close()

    full, after = asyncio.run(scenario())
    assert full.per_ip.get(HOLDER) == cap, full
    assert after.created == full.created and after.per_ip.get(HOLDER) == cap, after
    lines = edge.proc.text().splitlines()
    refused = [line for line in lines if "connection limit reached" in line]
    assert 1 <= len(refused) <= 3, f"{len(refused)} lines: {refused[:3]}"
