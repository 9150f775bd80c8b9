"""A tenant's connector that misbehaves over QUIC (a scripted aioquic client, registered with
its tunnel's real credentials): the edge stays up and bounded, and says why in its log.

The QUIC transport gives a connector moves the HTTP/2 one does not: it opens streams of its
own (cloudflared opens its control stream and RPC streams), DATAGRAM frames, its own flow
control windows, and it can simply stop sending UDP. Each test makes one of those moves.

Found here (each failed before its fix):

* a unidirectional stream from the connector (cloudflared opens none) raised out of the edge's
  QUIC datagram handler on every such stream ("Unhandled exception in event loop"), dropping
  the events of the rest of that datagram: the edge tried to RESET a stream it cannot send on;
* the edge's "tunnel connection lost" line did not say why (too many streams, an oversized
  DATAGRAM frame, a window ignored, the connector's CONNECTION_CLOSE, silence): aioquic's own
  warning named a connection id only;
* a ConnectResponse head the edge refuses (64 KiB is its bound) was logged as "the connector
  reset the stream (code 0)";
* a data head on a stream the connector opened (the edge's to send, never the connector's) was
  buffered up to that bound before being refused: 8 connections holding 127 unfinished ones
  each grew the edge by 85 MiB. Connector-opened streams now take the RPC signature only.

What held already, and is kept so: more streams than allowed, an oversized DATAGRAM frame or
a window overrun close the connection (STREAM_LIMIT_ERROR, PROTOCOL_VIOLATION,
FLOW_CONTROL_ERROR); a connector that never reads holds the edge to a write buffer per stream;
one that stops answering gets no new requests once its PING is overdue and is dropped at the
idle timeout, its tunnel's other connection serving on.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adit.protocol.quic_capnp import ConnectRequest, ConnectResponse
from adit.protocol.quic_engine import TunnelQuicConfiguration
from adit.protocol.quic_metadata import (
    DATA_STREAM_PREAMBLE,
    DATA_STREAM_SIGNATURE,
    RPC_STREAM_PREAMBLE,
    ConnectionType,
    encode_data_stream_head,
    http_response_metadata,
)
from adversary import SteadyLoad, probe, split_hostport, start_tenant
from harness import Edge, Origin, Processes, Tunnel, create_tunnel, login, request, start_edge
from quic_hostile import HostileQuic, QuicAnswer, quic_seam_env, quic_state, wait_state

pytestmark = pytest.mark.process

VICTIM = "victim.example.test"
ATTACKER = "mallory.example.test"
#: Where the hostile connector's connections come from.
SOURCE = "127.0.0.5"
MIB = 1 << 20
STREAM_LIMIT_ERROR = 0x4
FLOW_CONTROL_ERROR = 0x3
PROTOCOL_VIOLATION = 0xA
#: The most the edge lets a connector have open at once (adit.protocol.quic_engine).
SERVER_STREAMS = 128


@pytest.fixture
def edge(processes: Processes) -> Edge:
    """An edge whose QUIC listener state tests can read (tests/seams)."""
    return start_edge(processes, env=quic_seam_env(processes.tmp))


def _attacker(edge: Edge, tmp_path: Path) -> Tunnel:
    account = login(edge, tmp_path / "mallory", "mallory")
    return create_tunnel(account, "mallory", ATTACKER)


def _victim(processes: Processes, edge: Edge, origin: Origin) -> None:
    extra = ["--protocol", "quic", "--ha-connections", "1"]
    start_tenant(processes, edge, "victim", VICTIM, origin.url, extra=extra)
    assert "protocol=quic" in edge.proc.text()


def ok(body: bytes) -> QuicAnswer:
    """Answer every request with 200 and ``body``."""

    def answer(client: HostileQuic, stream_id: int, request: ConnectRequest) -> None:
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        client.respond(
            stream_id, ConnectResponse(metadata=http_response_metadata(200, headers)), body
        )

    return answer


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Let the loop run until ``predicate`` holds (bounded)."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s")


async def _get(edge: Edge, host: str, path: str = "/") -> tuple[int, bytes]:
    reply = await asyncio.to_thread(request, edge, host, path=path)
    return reply.status, reply.body


def _lost_lines(edge: Edge, source: str) -> list[str]:
    """The edge's "tunnel connection lost" lines for connections from ``source`` (an address,
    or ``address:port`` for one connection)."""
    where = f"from={source}:" if source.count(":") == 0 else f"from={source}: "
    return [
        line
        for line in edge.proc.text().splitlines()
        if "tunnel connection lost" in line and where in line
    ]


def _assert_no_bug(edge: Edge) -> None:
    text = edge.proc.text()
    assert edge.proc.popen.poll() is None, text
    for sign in ("Traceback", "Unhandled exception", "internal error"):
        assert sign not in text, text


def test_streams_without_the_preamble_are_refused_one_by_one(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path
) -> None:
    _victim(processes, edge, origin)
    tunnel = _attacker(edge, tmp_path)
    edge_probe = probe(edge.proc)
    garbage = [
        b"GET / HTTP/1.1\r\n\r\n",  # not a preamble at all
        DATA_STREAM_PREAMBLE[:4] + b"xx",  # a preamble that goes wrong
        DATA_STREAM_SIGNATURE + b"99",  # an unknown version
        # A data head on a stream the connector opened: a ConnectRequest, the edge's to send.
        encode_data_stream_head(ConnectRequest(dest="https://x/", type=ConnectionType.HTTP)),
    ]
    # (An RPC stream of junk is no refusal: the edge serves the connector's SessionManager
    # calls there and answers junk with an Abort: tests/unit/protocol/test_quic_rpc_*.py.)

    async def attack() -> tuple[int, int, bool, tuple[int, bytes]]:
        hostile = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE, answer=ok(b"hostile"))
        await hostile.open()
        try:
            # Three times the streams the edge allows open at once: each is refused (and its
            # place given back) as it comes.
            opened = [
                hostile.open_stream(garbage[n % len(garbage)], end=n % 2 == 0)
                for n in range(3 * SERVER_STREAMS)
            ]
            await _until(
                lambda: all(s in hostile.refused for s in opened[1::2]),
                30,
                "the streams left open refused",
            )
            # Unidirectional streams: cloudflared opens none; each is stopped.
            uni = [
                hostile.open_stream(payload, uni=True)
                for payload in [*garbage, RPC_STREAM_PREAMBLE + b"\0" * 64]
            ]
            await _until(lambda: all(s in hostile.refused for s in uni), 15, "uni refused")
            answered = await _get(edge, ATTACKER, "/after")
            return len(opened), len(uni), hostile.closed is None, answered
        finally:
            await hostile.close()

    with SteadyLoad(edge, VICTIM, rate=20) as load:
        time.sleep(0.5)
        rss = edge_probe.rss()
        opened, uni, alive, answered = asyncio.run(attack())
        grown = edge_probe.rss() - rss
    assert opened == 3 * SERVER_STREAMS and uni == 5
    # One bad stream costs that stream, never the connection: it still serves its tunnel.
    assert alive and answered == (200, b"hostile"), answered
    assert load.failures() == [], load.failures()[:5]
    assert grown < 32 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB"
    _assert_no_bug(edge)


def test_stream_heads_that_never_end_cost_the_edge_next_to_nothing(
    edge: Edge, tmp_path: Path
) -> None:
    """Connector-opened streams carry RPC (its 6-byte signature, then the edge refuses them):
    a data head there is refused at its first byte, never buffered up to the head's bound."""
    tunnel = _attacker(edge, tmp_path)
    edge_probe = probe(edge.proc)
    # A preamble, a segment table announcing 60,000 bytes, 59,000 of them: never finished.
    table = (0).to_bytes(4, "little") + (60_000 // 8).to_bytes(4, "little")
    partial = DATA_STREAM_PREAMBLE + table + b"\0" * 59_000

    async def attack() -> tuple[int, list[HostileQuic]]:
        hostiles = [
            HostileQuic.for_tunnel(edge, tunnel, source=f"127.0.0.{5 + n % 2}", conn_index=n)
            for n in range(8)
        ]
        for hostile in hostiles:
            await hostile.open()
        rss = edge_probe.rss()
        opened = [
            (hostile, hostile.open_stream(partial))
            for hostile in hostiles
            for _ in range(SERVER_STREAMS - 1)
        ]
        await _until(
            lambda: all(s in h.refused or h.quic.stream_send_queued(s) == 0 for h, s in opened),
            30,
            "every stream sent or refused",
        )
        await asyncio.sleep(1)  # the last datagrams handled
        grown = edge_probe.rss() - rss
        for hostile in hostiles:
            await hostile.close()
        return grown, hostiles

    grown, hostiles = asyncio.run(attack())
    assert all(h.closed is None for h in hostiles)
    assert grown < 16 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB for 8 x 127 partial heads"
    _assert_no_bug(edge)


def test_more_streams_than_allowed_close_the_connection_and_the_log_says_why(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _attacker(edge, tmp_path)

    async def attack() -> HostileQuic:
        hostile = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE)
        await hostile.open()
        # The client ignores the edge's MAX_STREAMS (aioquic's own would wait for more).
        hostile.quic._remote_max_streams_bidi = 10 * SERVER_STREAMS
        for _ in range(SERVER_STREAMS + 8):
            hostile.open_stream(DATA_STREAM_PREAMBLE)
        await hostile.wait_ended(15)
        hostile.abandon()
        return hostile

    hostile = asyncio.run(attack())
    assert hostile.closed is not None and hostile.closed.error_code == STREAM_LIMIT_ERROR
    state = wait_state(edge, lambda s: s.sessions == 0, what="the connection freed")
    assert state.per_ip == {} and state.routes == 0, state
    lines = _lost_lines(edge, SOURCE)
    assert lines and "Too many streams open" in lines[-1], lines
    _assert_no_bug(edge)


def _no_datagrams(config: TunnelQuicConfiguration) -> None:
    config.max_datagram_frame_size = None


def _big_packets(config: TunnelQuicConfiguration) -> None:
    config.max_datagram_size = 30_000


def test_datagram_frames_never_negotiated_or_oversized(edge: Edge, tmp_path: Path) -> None:
    tunnel = _attacker(edge, tmp_path)
    edge_probe = probe(edge.proc)

    async def attack() -> tuple[bool, tuple[int, bytes], HostileQuic, int]:
        # A client that did not offer DATAGRAM support sends them anyway (the edge offered
        # it, so it takes them: RFC 9221 lets the side that advertised receive), thousands.
        quiet = HostileQuic.for_tunnel(
            edge, tunnel, source=SOURCE, configure=_no_datagrams, answer=ok(b"quiet")
        )
        await quiet.open()
        for n in range(5000):
            quiet.quic.send_datagram_frame(n.to_bytes(4, "big") * 200)
            if n % 50 == 49:
                quiet.flush()
                await asyncio.sleep(0.005)
        quiet.flush()
        answered = await _get(edge, ATTACKER, "/datagrams")
        alive = quiet.closed is None
        await quiet.close()
        # One larger than the 16383 bytes the edge offered, in one 20 kB UDP datagram.
        big = HostileQuic.for_tunnel(
            edge, tunnel, source=SOURCE, conn_index=1, configure=_big_packets
        )
        await big.open()
        big.quic._max_datagram_size = 30_000
        big.quic.send_datagram_frame(b"d" * 17_000)
        big.flush()
        port = big.local_address[1]
        await big.wait_ended(15)
        big.abandon()
        return alive, answered, big, port

    rss = edge_probe.rss()
    alive, answered, big, port = asyncio.run(attack())
    grown = edge_probe.rss() - rss
    assert alive and answered == (200, b"quiet"), answered
    assert big.closed is not None and big.closed.error_code == PROTOCOL_VIOLATION, big.closed
    state = wait_state(edge, lambda s: s.sessions == 0, what="the connections freed")
    assert state.per_ip == {}, state
    lines = _lost_lines(edge, f"{SOURCE}:{port}")
    assert lines and "Unexpected DATAGRAM frame" in lines[0], lines
    assert grown < 32 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB"
    _assert_no_bug(edge)


def test_a_huge_connect_response_head_fails_its_request_not_the_connection(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _attacker(edge, tmp_path)

    def huge_then_ok(client: HostileQuic, stream_id: int, request: ConnectRequest) -> None:
        if "/huge" not in request.dest:
            ok(b"fine")(client, stream_id, request)
            return
        # A one-segment capnp message of 2^20 words (8 MiB) is announced; 256 KiB of it sent.
        table = (0).to_bytes(4, "little") + (1 << 20).to_bytes(4, "little")
        client.send(stream_id, DATA_STREAM_PREAMBLE + table + b"\0" * (256 * 1024))

    async def attack() -> tuple[tuple[int, bytes], tuple[int, bytes], bool]:
        hostile = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE, answer=huge_then_ok)
        await hostile.open()
        try:
            huge = await _get(edge, ATTACKER, "/huge")
            after = await _get(edge, ATTACKER, "/after")
            return huge, after, hostile.closed is None
        finally:
            await hostile.close()

    huge, after, alive = asyncio.run(attack())
    assert huge[0] == 502, huge
    assert alive and after == (200, b"fine"), after
    failed = [line for line in edge.proc.text().splitlines() if "tunnel stream failed" in line]
    assert failed and "bad stream head" in failed[-1], failed
    _assert_no_bug(edge)


def _small_windows(config: TunnelQuicConfiguration) -> None:
    config.max_stream_data = 64 * 1024
    config.max_data = 256 * 1024


def _upload(edge: Edge, size: int) -> str:
    """POST ``size`` bytes to the attacker's hostname; how it ended."""
    host, port = split_hostport(edge.http)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest("POST", "/upload", skip_host=True)
        conn.putheader("Host", ATTACKER)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        block = b"u" * MIB
        for _ in range(size // MIB):
            conn.send(block)
        return "sent"
    except OSError as exc:
        return repr(exc)
    finally:
        conn.close()


def test_a_connector_that_never_reads_cannot_make_the_edge_buffer_uploads(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _attacker(edge, tmp_path)
    edge_probe = probe(edge.proc)

    def answer_and_ignore(client: HostileQuic, stream_id: int, request: ConnectRequest) -> None:
        metadata = http_response_metadata(200, [("Content-Type", "text/plain")])
        client.respond(stream_id, ConnectResponse(metadata=metadata), b"", end=False)

    async def attack() -> tuple[int, dict[int, int], list[str]]:
        hostile = HostileQuic.for_tunnel(
            edge, tunnel, source=SOURCE, answer=answer_and_ignore, configure=_small_windows
        )
        hostile.consume = False  # never gives the edge more window
        await hostile.open()
        rss = edge_probe.rss()
        uploads = [
            asyncio.ensure_future(asyncio.to_thread(_upload, edge, 200 * MIB)) for _ in range(4)
        ]
        await _until(lambda: len(hostile.incoming) == 4, 15, "four uploads reach the connector")
        # The edge takes as much as it may buffer, then stops reading the eyeballs.
        await asyncio.sleep(3)
        grown = edge_probe.rss() - rss
        received = {s: len(i.body) for s, i in hostile.incoming.items()}
        await hostile.close()
        return grown, received, await asyncio.gather(*uploads)

    grown, received, outcomes = asyncio.run(attack())
    # The connector got its window, no more; the edge held at most a write buffer per stream.
    assert sum(received.values()) <= 256 * 1024, received
    assert grown < 32 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB for 800 MiB offered"
    assert "sent" not in outcomes, outcomes
    _assert_no_bug(edge)


def _ignore_the_edges_windows(client: HostileQuic) -> None:
    client.quic._remote_max_data = 1 << 40
    client.quic._remote_max_stream_data_bidi_remote = 1 << 40


def test_a_connector_that_ignores_the_edges_window_is_closed_at_a_window(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _attacker(edge, tmp_path)
    edge_probe = probe(edge.proc)

    def flood_the_response(client: HostileQuic, stream_id: int, request: ConnectRequest) -> None:
        stream = client.quic._streams[stream_id]
        stream.max_stream_data_remote = 1 << 40
        metadata = http_response_metadata(200, [("Content-Type", "application/octet-stream")])
        client.respond(stream_id, ConnectResponse(metadata=metadata), b"x" * (64 * MIB), end=True)

    def eyeball_that_never_reads() -> socket.socket:
        sock = socket.create_connection(split_hostport(edge.http), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /big HTTP/1.1\r\nHost: {ATTACKER}\r\n\r\n".encode())
        return sock

    async def attack() -> tuple[int, HostileQuic]:
        hostile = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE, answer=flood_the_response)
        await hostile.open()
        _ignore_the_edges_windows(hostile)
        rss = edge_probe.rss()
        eyeball = await asyncio.to_thread(eyeball_that_never_reads)
        try:
            await hostile.wait_ended(30)
            return edge_probe.rss() - rss, hostile
        finally:
            eyeball.close()
            hostile.abandon()

    grown, hostile = asyncio.run(attack())
    assert hostile.closed is not None and hostile.closed.error_code == FLOW_CONTROL_ERROR, (
        hostile.closed
    )
    # What it could send: a stream window (6 MiB), not the 64 MiB it tried.
    assert grown < 32 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB"
    wait_state(edge, lambda s: s.sessions == 0, what="the connection freed")
    lines = _lost_lines(edge, SOURCE)
    assert lines and "data limit" in lines[-1], lines
    _assert_no_bug(edge)


def test_a_connector_that_stops_answering_loses_its_requests_to_the_other_connection(
    edge: Edge, tmp_path: Path
) -> None:
    tunnel = _attacker(edge, tmp_path)

    async def scenario() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], str]:
        silent = HostileQuic.for_tunnel(edge, tunnel, source=SOURCE, answer=ok(b"silent"))
        await silent.open()
        other = HostileQuic.for_tunnel(
            edge, tunnel, source="127.0.0.6", conn_index=1, answer=ok(b"other")
        )
        await other.open()
        try:
            port = silent.local_address[1]
            silent.vanish()  # no more ACKs, PING answers, anything
            unresponsive = re.compile(rf"from {SOURCE}:{port} does not answer PINGs")
            await _until(
                lambda: bool(unresponsive.search(edge.proc.text())), 15, "seen unresponsive"
            )
            # From now on nothing new goes to the silent connection.
            meanwhile = [await _get(edge, ATTACKER, f"/meanwhile/{n}") for n in range(10)]
            await _until(lambda: bool(_lost_lines(edge, SOURCE)), 20, "the silent one closed")
            after = [await _get(edge, ATTACKER, f"/after/{n}") for n in range(10)]
            return meanwhile, after, _lost_lines(edge, SOURCE)[-1]
        finally:
            silent.abandon()
            await other.close()

    meanwhile, after, lost = asyncio.run(scenario())
    assert meanwhile == [(200, b"other")] * 10, meanwhile
    assert after == [(200, b"other")] * 10, after
    assert "Idle timeout" in lost or "no answer from the peer" in lost, lost
    state = quic_state(edge)
    assert SOURCE not in state.per_ip, state
    _assert_no_bug(edge)
