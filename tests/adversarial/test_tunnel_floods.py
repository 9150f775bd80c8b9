"""A tenant's connector that floods the tunnel listener with frames (issue 13, items 11 and 12).

Each test registers a hostile connector with a real tunnel's credentials, then writes one kind
of frame as fast as the edge takes it while another tenant's requests run at a fixed rate. The
edge must answer with GOAWAY ``ENHANCE_YOUR_CALM`` and close within a moment, the other tenant
must be answered throughout, and the edge's memory and descriptors must not grow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adit.protocol.http2_frames import (
    Flag,
    FrameType,
    frame,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)
from adversary import FloodResult, HostileConnector, SteadyLoad, probe, start_tenant
from harness import Edge, Origin, Processes, Tunnel, create_tunnel, login

pytestmark = pytest.mark.process

VICTIM = "victim.example.test"
ATTACKER = "mallory.example.test"
#: How long a flood goes on if the edge never stops it (the old edge never did).
FLOOD_SECONDS = 8.0
#: A generous bound on the time until the abusive connection is closed (the goal is 1 s).
CLOSED_WITHIN = 5.0
#: A generous bound on the slowest answer the other tenant may get during a flood (the old
#: edge kept it waiting for the whole flood).
VICTIM_SLOWEST = 5.0
ENHANCE_YOUR_CALM = 0xB
MIB = 1024 * 1024

#: The stream the edge opened first: the control stream (HEADERS, DATA and RST_STREAM on it
#: are frames a connector may send).
CONTROL = 1


def _continuation(n: int) -> bytes:
    # One header block that never ends: HEADERS without END_HEADERS, then empty CONTINUATIONs.
    head = frame(FrameType.HEADERS, 0, CONTROL, b"") if n == 0 else b""
    return head + frame(FrameType.CONTINUATION, 0, CONTROL, b"")


FLOODS: dict[str, Callable[[int], bytes]] = {
    "ping": lambda n: ping_frame(n.to_bytes(8, "big")),
    "settings": lambda n: settings_frame([(0x4, 65535)]),  # the same INITIAL_WINDOW_SIZE again
    "window_update": lambda n: window_update_frame(0, 1),
    # The first one resets the control stream; every later one names a closed stream.
    "rst_stream": lambda n: rst_stream_frame(CONTROL, 0x8),
    "empty_data": lambda n: frame(FrameType.DATA, 0, CONTROL, b""),
    "empty_continuation": _continuation,
    "priority": lambda n: frame(FrameType.PRIORITY, 0, CONTROL, b"\x00\x00\x00\x00\x10"),
    "ping_ack": lambda n: ping_frame(n.to_bytes(8, "big"), ack=True),
}


def _attacker(edge: Edge, tmp_path: Path) -> Tunnel:
    account = login(edge, tmp_path / "mallory", "mallory")
    return create_tunnel(account, "flood", ATTACKER)


async def _flood(
    edge: Edge, tunnel: Tunnel, frames: Callable[[int], bytes], *, read: bool
) -> FloodResult:
    hostile = HostileConnector.for_tunnel(edge, tunnel)
    await hostile.open()
    if not read:
        hostile.stop_reading()
    try:
        return await hostile.flood(frames, seconds=FLOOD_SECONDS)
    finally:
        await hostile.close()


def _under_attack(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path, kind: str, *, read: bool
) -> tuple[FloodResult, SteadyLoad, int, int]:
    """Flood ``kind`` while the victim is loaded; (result, load, RSS growth, fd growth)."""
    start_tenant(processes, edge, "victim", VICTIM, origin.url)
    tunnel = _attacker(edge, tmp_path)
    edge_probe = probe(edge.proc)
    with SteadyLoad(edge, VICTIM, rate=20) as load:
        time.sleep(1.0)
        rss, fds = edge_probe.rss(), edge_probe.fds()
        result = asyncio.run(_flood(edge, tunnel, FLOODS[kind], read=read))
        grown = edge_probe.rss() - rss
        time.sleep(1.0)
    # The attacker's socket is gone from the edge too (no CLOSE-WAIT left behind).
    edge_probe.wait_until(lambda p: p.fds() <= fds + 2, timeout=10, what="fds back to before")
    assert edge_probe.close_wait() == 0, edge_probe.tcp_states()
    return result, load, grown, edge_probe.fds() - fds


def _assert_victim_served(load: SteadyLoad) -> None:
    failures = load.failures()
    assert failures == [], failures[:5]
    slowest = max(o.seconds for o in load.outcomes)
    assert slowest < VICTIM_SLOWEST, f"the other tenant waited {slowest:.1f}s for an answer"


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_a_frame_flood_is_answered_with_enhance_your_calm(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path, kind: str
) -> None:
    result, load, grown, _ = _under_attack(processes, edge, origin, tmp_path, kind, read=True)
    assert result.closed, (
        f"the edge still took the {kind} flood after {result.seconds:.1f}s ({result.frames} frames)"
    )
    assert result.seconds < CLOSED_WITHIN, result
    assert result.goaway_code == ENHANCE_YOUR_CALM, result
    assert grown < 32 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB"
    _assert_victim_served(load)


def test_a_connector_that_never_reads_cannot_grow_the_edge(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path
) -> None:
    """PINGs whose ACKs are never read: the edge stops reading or closes, its RSS stays flat."""
    result, load, grown, _ = _under_attack(processes, edge, origin, tmp_path, "ping", read=False)
    assert result.closed, (
        f"still connected after {result.seconds:.1f}s ({result.frames} PINGs); "
        f"edge RSS grew by {grown / MIB:.0f} MiB"
    )
    assert result.seconds < CLOSED_WITHIN, result
    assert grown < 32 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB in {result.seconds:.1f}s"
    _assert_victim_served(load)


def test_a_settings_frame_with_thousands_of_entries_is_refused(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path
) -> None:
    """One frame, one cost: a SETTINGS frame may not carry 100,000 parameters to process."""
    start_tenant(processes, edge, "victim", VICTIM, origin.url)
    tunnel = _attacker(edge, tmp_path)

    async def attack() -> tuple[bool, int | None]:
        hostile = HostileConnector.for_tunnel(edge, tunnel)
        await hostile.open()
        try:
            await hostile.send(settings_frame([(0x4, 65535)] * 100_000))
            return await hostile.wait_closed(CLOSED_WITHIN), hostile.goaway_code
        finally:
            await hostile.close()

    closed, code = asyncio.run(attack())
    assert closed and code == ENHANCE_YOUR_CALM, (closed, code)


def test_empty_data_with_end_stream_is_not_a_flood(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path
) -> None:
    """An empty DATA frame that ends a stream is how Go ends a body: never counted."""
    tunnel = _attacker(edge, tmp_path)

    async def ends() -> bool:
        hostile = HostileConnector.for_tunnel(edge, tunnel)
        await hostile.open()
        try:
            # Ending our side of the control stream once is ordinary; the edge then drains.
            await hostile.send(frame(FrameType.DATA, Flag.END_STREAM, CONTROL, b""))
            return await hostile.wait_closed(1.0)
        finally:
            await hostile.close()

    assert not asyncio.run(ends())
