"""ConnectionRegistry.pick: round-robin over live connections, one turn per loop iteration."""

from __future__ import annotations

import asyncio
import datetime
import uuid

from adit.edge.registry import ConnectionRegistry, LiveConnection
from asynctests import uvloop_test

TUNNEL = uuid.uuid4()


class _Handle:
    def __init__(self) -> None:
        self.is_full = False

    def close(self, reason: str) -> None:
        pass

    def revalidate(self) -> bool:
        return True

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        return version, None

    @property
    def full(self) -> bool:
        return self.is_full


def _conn(index: int) -> LiveConnection:
    return LiveConnection(
        tunnel_id=TUNNEL,
        account_tag="acct",
        connection_id=uuid.uuid4(),
        client_id=uuid.uuid4(),
        conn_index=index,
        location="tst",
        origin_ip="127.0.0.1",
        opened_at=datetime.datetime.now(datetime.UTC),
        client_version="test",
        arch="test",
        features=(),
        handle=_Handle(),
    )


def _registry(count: int) -> tuple[ConnectionRegistry, list[LiveConnection]]:
    registry = ConnectionRegistry()
    conns = [_conn(i) for i in range(count)]
    for conn in conns:
        registry.add(conn)
    return registry, conns


async def _next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_without_a_loop_every_pick_takes_the_next_turn() -> None:
    registry, conns = _registry(3)
    assert [registry.pick(TUNNEL) for _ in range(4)] == [conns[0], conns[1], conns[2], conns[0]]
    assert registry.pick(uuid.uuid4()) is None


@uvloop_test
async def test_one_connection_per_iteration_then_the_next() -> None:
    registry, conns = _registry(3)
    picked = []
    for _ in range(4):
        batch = {id(registry.pick(TUNNEL)) for _ in range(5)}
        assert len(batch) == 1  # requests of one iteration travel together
        picked.append(registry.pick(TUNNEL))
        await _next_iteration()
    assert picked == [conns[0], conns[1], conns[2], conns[0]]


@uvloop_test
async def test_draining_or_removed_connections_are_skipped() -> None:
    registry, conns = _registry(3)
    assert registry.pick(TUNNEL) is conns[0]
    conns[0].draining = True
    assert registry.pick(TUNNEL) is conns[1]  # at once, within the same iteration
    registry.remove(conns[1])
    assert registry.pick(TUNNEL) is conns[2]
    await _next_iteration()
    assert registry.pick(TUNNEL) is conns[2]
    conns[2].draining = True
    assert registry.pick(TUNNEL) is None


def test_an_unresponsive_connection_gets_nothing_while_another_answers() -> None:
    registry, conns = _registry(4)
    conns[1].responsive = conns[3].responsive = False
    assert {registry.pick(TUNNEL) for _ in range(8)} == {conns[0], conns[2]}
    conns[1].responsive = True
    assert conns[1] in {registry.pick(TUNNEL) for _ in range(8)}


def test_with_no_responsive_connection_left_one_still_serves() -> None:
    """Better a request that may be answered when the connector wakes than one refused."""
    registry, conns = _registry(2)
    conns[0].responsive = conns[1].responsive = False
    assert registry.pick(TUNNEL) in conns
    conns[0].draining = conns[1].draining = True
    assert registry.pick(TUNNEL) is None


@uvloop_test
async def test_this_iterations_pick_is_dropped_when_it_stops_answering() -> None:
    registry, _ = _registry(2)
    first = registry.pick(TUNNEL)
    assert first is not None
    first.responsive = False
    assert registry.pick(TUNNEL) is not first


@uvloop_test
async def test_a_connection_without_room_for_a_stream_is_passed_over() -> None:
    """cloudflared takes 250 streams a connection: a full one must not fail the request that
    another connection of the tunnel has room for (the bench's thousand WebSockets did)."""
    registry, conns = _registry(3)
    assert registry.pick(TUNNEL) is conns[0]
    handle = conns[0].handle
    assert isinstance(handle, _Handle)
    handle.is_full = True
    assert registry.pick(TUNNEL) is conns[1]  # at once, within the same iteration
    for conn in conns:
        assert isinstance(conn.handle, _Handle)
        conn.handle.is_full = True
    assert registry.pick(TUNNEL) in conns  # none has room: one is tried (its refusal is a 502)


def test_a_pick_over_one_transport_takes_turns_among_its_connections_only() -> None:
    registry, conns = _registry(4)
    conns[1].protocol = conns[3].protocol = "quic"
    assert [registry.pick_over(TUNNEL, "quic") for _ in range(3)] == [
        conns[1],
        conns[3],
        conns[1],
    ]
    assert registry.pick_over(TUNNEL, "http2") in (conns[0], conns[2])
    conns[3].draining = True
    assert [registry.pick_over(TUNNEL, "quic") for _ in range(2)] == [conns[1], conns[1]]
    conns[1].responsive = False  # the only one left: picked all the same
    assert registry.pick_over(TUNNEL, "quic") is conns[1]
    registry.remove(conns[1])
    assert registry.pick_over(TUNNEL, "quic") is None
    assert registry.pick_over(uuid.uuid4(), "quic") is None


def test_a_pick_over_one_transport_prefers_a_connection_that_answers() -> None:
    registry, conns = _registry(3)
    for conn in conns:
        conn.protocol = "quic"
    conns[0].responsive = False
    assert isinstance(conns[2].handle, _Handle)
    conns[2].handle.is_full = True
    assert [registry.pick_over(TUNNEL, "quic") for _ in range(3)] == [conns[1]] * 3
