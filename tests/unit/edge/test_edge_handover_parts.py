"""The hand-over's parts that need no second process: the hold of requests for moving tunnels,
the relayed-datagram framing and the inherited-socket list (the whole hand-over, with real
processes, is tests/process/test_edge_handover.py)."""

from __future__ import annotations

import asyncio
import socket
import uuid

from adit.edge.handover import ENV_FDS, Inherited, decode_relayed, encode_relayed
from adit.edge.tunnel_hold import TunnelHold

MOVING = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)


def test_a_request_waits_for_a_moving_tunnel_and_goes_on_when_it_registers() -> None:
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        hold = TunnelHold(until=loop.time() + 60, longest=5)
        waiting = asyncio.ensure_future(hold.connection(MOVING))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        hold.connected(MOVING)
        first = await waiting
        # Arrived once: a later outage is no move, answered at once.
        return first, await hold.connection(MOVING)

    assert asyncio.run(scenario()) == (True, False)


def test_narrowing_answers_the_requests_for_tunnels_that_are_not_moving() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        loop = asyncio.get_running_loop()
        hold = TunnelHold(until=loop.time() + 60, longest=5)
        other = asyncio.ensure_future(hold.connection(OTHER))
        moving = asyncio.ensure_future(hold.connection(MOVING))
        await asyncio.sleep(0.01)
        hold.narrow([MOVING], loop.time() + 60)
        other_result = await other
        assert not moving.done()
        hold.connected(MOVING)
        return other_result, await moving, await hold.connection(OTHER)

    assert asyncio.run(scenario()) == (False, True, False)


def test_the_wait_is_bounded_and_ends_with_the_window() -> None:
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        bounded = TunnelHold(until=loop.time() + 60, longest=0.05)
        over = TunnelHold(until=loop.time() - 1, longest=5)
        return await bounded.connection(MOVING), await over.connection(MOVING)

    assert asyncio.run(scenario()) == (False, False)


def test_relayed_datagrams_keep_their_sender() -> None:
    packet = bytes(range(256)) + b"\n\x00"
    assert decode_relayed(encode_relayed(packet, ("127.0.0.1", 7844))) == (
        packet,
        ("127.0.0.1", 7844),
    )
    assert decode_relayed(encode_relayed(b"", ("::1", 1))) == (b"", ("::1", 1))
    assert decode_relayed(b"no header") is None
    assert decode_relayed(b"host notaport\nx") is None


def test_inherited_sockets_are_read_from_the_environment_and_taken_once() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fd = listener.detach()
    environ = {ENV_FDS: f"http:0={fd},bad,api:0=x"}
    inherited = Inherited.from_environ(environ)
    assert ENV_FDS not in environ  # not passed on to a later successor
    sock = inherited.take("http:0")
    assert sock is not None
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert not sock.get_inheritable()
        assert inherited.take("http:0") is None
        assert inherited.take("api:0") is None
        assert not inherited
    finally:
        sock.close()
    assert not Inherited.from_environ({})
