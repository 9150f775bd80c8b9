"""CPU cost of the QUIC tunnel transport alone: aioquic and adit's adapter, both roles in memory.

An edge and a connector (real aioquic connections, the edge's CA and leaf) joined by an
in-memory wire: no sockets, no event loop, no other process. The wire is driven as
``adit.quicio`` drives aioquic: a flush (``datagrams_to_send``, ``get_timer``) after each
wake-up's datagrams (``--batch`` of them; 1, the default, is a wake-up per datagram, as at low
rates), after every timer and after the application wrote. The clock is the real one, jumped
over the waits for a timer. Each side's calls are timed on the thread's CPU clock, so the
figures hold up on a busy machine.

- ``bulk``: one response body, connector → edge (the download direction; an upload is the
  same with the roles swapped), as fast as QUIC's congestion control lets it go: CPU seconds
  per GiB and µs per datagram of the sender and of the receiver.
- ``requests``: small exchanges, each on a new stream (the edge's ``ConnectRequest``, the
  connector's ``ConnectResponse`` and a 1 KiB body), one at a time: CPU µs per request on
  each side.

``--layer aioquic`` drives aioquic's ``QuicConnection`` (adit's ``TunnelQuicConnection``:
flow control by consumption, nothing per packet) with the least an application can do: what
this layer costs, no Python code above aioquic can win back. ``--layer tunnel`` adds adit's
adapter (``adit.protocol.quic_tunnel``: stream heads, events, credit). The asyncio part
(``adit.quicio``, sockets, timers) is measured by the bench's profiles instead.

    .venv/bin/python loadtests/quic_floor.py [--layer aioquic|tunnel] [--mib N]
        [--requests N] [--datagram-size N] [--batch N] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioquic._buffer import Buffer
from aioquic.quic import events as quic_events
from aioquic.quic.packet import pull_quic_header

from adit.edge.ca import EdgeCA
from adit.edge.quic_listener import edge_quic_configuration
from adit.protocol.http2 import DataReceived, RequestReceived, StreamEnded
from adit.protocol.quic_engine import TunnelQuicConnection
from adit.protocol.quic_metadata import (
    ConnectionType,
    ConnectRequest,
    ConnectResponse,
    encode_data_stream_head,
    http_request_metadata,
    http_response_metadata,
)
from adit.protocol.quic_tunnel import (
    ConnectorQuicConnection,
    EdgeQuicConnection,
)
from adit.workers.quic_dial import connector_quic_configuration

EDGE = ("127.0.0.1", 7844)
CONNECTOR = ("127.0.0.1", 50000)
#: Virtual time per step of the wire: both sides send what they may, then the clock moves.
STEP = 0.0001
_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Cf-Ray", "8a21a8154a245057-bench"),
]
_ORIGIN = [
    ("Server", "nginx/1.22.1"),
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", "1024"),
    ("ETag", '"6566a7b0-400"'),
]


@dataclass
class Side:
    """One end: its aioquic connection, its adapter (``tunnel`` layer), its CPU and counts."""

    name: str
    quic: TunnelQuicConnection
    tunnel: EdgeQuicConnection | ConnectorQuicConnection | None
    addr: tuple[str, int]
    cpu_ns: int = 0
    flush_ns: int = 0
    sent: int = 0
    received: int = 0
    flushes: int = 0
    events: list[Any] = field(default_factory=list)

    def timed(self, call: Callable[[], Any]) -> Any:
        started = time.thread_time_ns()
        try:
            return call()
        finally:
            self.cpu_ns += time.thread_time_ns() - started

    def receive(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.received += 1
        if self.tunnel is not None:
            tunnel = self.tunnel
            self.events += self.timed(lambda: tunnel.receive_datagram(data, addr, now))
        else:
            self.timed(lambda: self.quic.receive_datagram(data, addr, now))
            self.events += self.timed(self._drain_raw)

    def fire_timer(self, now: float) -> None:
        if self.tunnel is not None:
            tunnel = self.tunnel
            self.events += self.timed(lambda: tunnel.handle_timer(now))
        else:
            self.timed(lambda: self.quic.handle_timer(now))
            self.events += self.timed(self._drain_raw)

    def _drain_raw(self) -> list[quic_events.QuicEvent]:
        out = []
        while (event := self.quic.next_event()) is not None:
            out.append(event)
        return out

    def send(self, now: float) -> list[tuple[bytes, Any]]:
        """What ``QuicIO.flush`` asks of aioquic: the datagrams due now, then the timer."""

        def build() -> list[tuple[bytes, Any]]:
            datagrams = self.quic.datagrams_to_send(now)
            self.quic.get_timer()
            return datagrams

        before = self.cpu_ns
        datagrams: list[tuple[bytes, Any]] = self.timed(build)
        self.flush_ns += self.cpu_ns - before
        self.flushes += 1
        self.sent += len(datagrams)
        return datagrams

    def reset(self) -> None:
        self.cpu_ns = self.flush_ns = self.sent = self.received = self.flushes = 0
        self.events.clear()


@dataclass
class Wire:
    """Zero-latency wire, driven as adit's QuicIO drives aioquic: a flush after each wake-up's
    datagrams, after every timer and after the application wrote. The clock is the real one
    (work takes the time it takes), jumped forward over the idle waits for a timer."""

    edge: Side
    connector: Side
    #: Datagrams a side takes in before it flushes (QuicIO: those of one wake-up of the loop).
    batch: int = 1
    skew: float = 0.0
    in_flight: collections.deque[tuple[Side, bytes, tuple[str, int]]] = field(
        default_factory=collections.deque
    )

    def now(self) -> float:
        return time.monotonic() + self.skew

    def peer(self, side: Side) -> Side:
        return self.connector if side is self.edge else self.edge

    def flush(self, side: Side) -> None:
        for data, _ in side.send(self.now()):
            self.in_flight.append((self.peer(side), data, side.addr))

    def quiet(self) -> bool:
        """Nothing in flight, nothing unacknowledged, no ACK owed."""
        return not self.in_flight and _acked(self.edge) and _acked(self.connector)

    def run(self, done: Callable[[], bool]) -> None:
        """Deliver datagrams and fire timers until ``done()`` (the application's turn, called
        between any two of them) says so."""
        while not done():
            if self.in_flight:
                side, data, addr = self.in_flight.popleft()
                side.receive(data, addr, self.now())
                taken = 1
                while taken < self.batch and self.in_flight and self.in_flight[0][0] is side:
                    side, data, addr = self.in_flight.popleft()
                    side.receive(data, addr, self.now())
                    taken += 1
                self.flush(side)
                continue
            for side in (self.edge, self.connector):
                if side.quic._close_event is not None:
                    raise RuntimeError(f"{side.name}: closed: {side.quic._close_event}")
            timers = [(side.quic.get_timer(), side) for side in (self.edge, self.connector)]
            at, side = min((t, s) for t, s in timers if t is not None)
            wait = at - self.now()
            if wait > 0.5:
                raise RuntimeError(f"stuck: nothing in flight, next timer in {wait:.1f} s")
            self.skew += max(0.0, wait)
            side.fire_timer(self.now())
            self.flush(side)


def open_wire(state: Path, layer: str, datagram_size: int, batch: int = 1) -> Wire:
    ca = EdgeCA.load_or_create(state)
    leaf = ca.tunnel_leaf()
    server_config = edge_quic_configuration(leaf.cert_chain_pem, leaf.key_pem)
    client_config = connector_quic_configuration(ca.cert_pem)
    for config in (server_config, client_config):
        config.max_datagram_size = datagram_size
    client = TunnelQuicConnection(configuration=client_config)
    client.connect(EDGE, now=time.monotonic())
    first = client.datagrams_to_send(now=time.monotonic())
    header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
    server = TunnelQuicConnection(
        configuration=server_config, original_destination_connection_id=header.destination_cid
    )
    edge_tunnel = connector_tunnel = None
    if layer == "tunnel":
        edge_tunnel, connector_tunnel = EdgeQuicConnection(server), ConnectorQuicConnection(client)
        connector_tunnel.initiate()
        connector_tunnel.take_events()
        edge_tunnel.open_control_stream()
    wire = Wire(
        Side("edge", server, edge_tunnel, EDGE),
        Side("connector", client, connector_tunnel, CONNECTOR),
    )
    wire.batch = batch
    for data, _ in first:
        wire.in_flight.append((wire.edge, data, CONNECTOR))
    wire.run(lambda: bool(server._handshake_complete and client._handshake_complete))
    # Settle (HANDSHAKE_DONE, NEW_CONNECTION_ID and their ACKs), then count from zero.
    wire.run(wire.quiet)
    wire.edge.reset()
    wire.connector.reset()
    return wire


def _consume_all(side: Side) -> tuple[int, bool]:
    """What an application does with what arrived: credit it. Returns (bytes, ended)."""
    got, ended = 0, False
    events, side.events = side.events, []

    def credit() -> None:
        nonlocal got, ended
        for event in events:
            if side.tunnel is not None:
                if isinstance(event, DataReceived):
                    side.tunnel.acknowledge(event.stream_id, event.flow_controlled_length)
                    got += len(event.data)
                elif isinstance(event, StreamEnded):
                    ended = True
            elif isinstance(event, quic_events.StreamDataReceived):
                side.quic.consumed(event.stream_id, len(event.data))
                got += len(event.data)
                ended = ended or event.end_stream

    side.timed(credit)
    return got, ended


def bulk(wire: Wire, total: int) -> dict[str, float]:
    """``total`` bytes connector → edge on one stream."""
    edge, connector = wire.edge, wire.connector
    chunk = bytes(256 * 1024)
    if edge.tunnel is not None and connector.tunnel is not None:
        edge_tunnel, tunnel = edge.tunnel, connector.tunnel
        sid = edge_tunnel.send_request("GET", "/big.bin", "bench.example.test", [], end_stream=True)
        wire.flush(edge)
        wire.run(lambda: any(isinstance(e, RequestReceived) for e in connector.events))
        connector.events.clear()
        connector.timed(lambda: tunnel.send_response(sid, 200, _ORIGIN))

        def write() -> None:
            tunnel.send_data(sid, chunk)
    else:
        sid = connector.quic.get_next_available_stream_id()

        def write() -> None:
            connector.quic.send_stream_data(sid, chunk)

    edge.reset()
    connector.reset()
    queued = received = 0
    started = time.monotonic()

    def turn() -> bool:
        nonlocal queued, received
        if queued < total and connector.quic.stream_send_queued(sid) < len(chunk):
            connector.timed(write)
            queued += len(chunk)
            wire.flush(connector)
        if edge.events:
            got, _ = _consume_all(edge)
            received += got
        connector.events.clear()
        return received >= total

    wire.run(turn)
    wall = time.monotonic() - started
    gib = received / 2**30
    return {
        "mib": received >> 20,
        "datagrams_sent": connector.sent,
        "datagrams_per_flush": round(connector.sent / max(1, connector.flushes), 2),
        "acks_sent": edge.sent,
        "sender_cpu_s_per_gib": round(connector.cpu_ns / 1e9 / gib, 2),
        "receiver_cpu_s_per_gib": round(edge.cpu_ns / 1e9 / gib, 2),
        "sender_us_per_datagram": round(connector.cpu_ns / 1e3 / max(1, connector.sent), 2),
        "receiver_us_per_datagram": round(edge.cpu_ns / 1e3 / max(1, edge.received), 2),
        "receiver_flush_share": round(edge.flush_ns / max(1, edge.cpu_ns), 2),
        "sender_flush_share": round(connector.flush_ns / max(1, connector.cpu_ns), 2),
        "one_core_mb_per_s": round(received / max(wall, 1e-9) / 1e6, 1),
    }


def requests(wire: Wire, count: int) -> dict[str, float]:
    """``count`` small request/response exchanges, each on a new stream, one at a time."""
    edge, connector = wire.edge, wire.connector
    body = bytes(1024)
    head = encode_data_stream_head(
        ConnectRequest(
            dest="https://bench.example.test/1k.bin",
            type=ConnectionType.HTTP,
            metadata=http_request_metadata("GET", "bench.example.test", _HEADERS),
        )
    )
    answer = encode_data_stream_head(ConnectResponse(metadata=http_response_metadata(200, _ORIGIN)))
    edge.reset()
    connector.reset()
    for _ in range(count):
        if edge.tunnel is not None and connector.tunnel is not None:
            _exchange(wire, edge.tunnel, connector.tunnel, body)
        else:
            _exchange_raw(wire, head, answer + body)
        # The ACKs of this exchange land before the next request (each request comes alone,
        # as in the bench's fixed-rate scenario).
        wire.run(wire.quiet)
        _consume_all(edge)
        _consume_all(connector)
    return {
        "requests": count,
        "edge_us_per_request": round(edge.cpu_ns / 1e3 / count, 1),
        "connector_us_per_request": round(connector.cpu_ns / 1e3 / count, 1),
        "datagrams_per_request": round((edge.sent + connector.sent) / count, 2),
        "flushes_per_request": round((edge.flushes + connector.flushes) / count, 2),
    }


def _exchange(
    wire: Wire, edge: EdgeQuicConnection, connector: ConnectorQuicConnection, body: bytes
) -> None:
    """One GET through the adapter: ``send_request``, ``send_response`` with the body."""
    sid = wire.edge.timed(
        lambda: edge.send_request("GET", "/1k.bin", "bench.example.test", _HEADERS, end_stream=True)
    )
    wire.flush(wire.edge)
    wire.run(lambda: any(isinstance(e, RequestReceived) for e in wire.connector.events))
    wire.connector.events.clear()
    wire.connector.timed(
        lambda: connector.send_response(sid, 200, _ORIGIN, end_stream=True, body=body)
    )
    wire.flush(wire.connector)
    wire.run(lambda: any(isinstance(e, StreamEnded) for e in wire.edge.events))
    _consume_all(wire.edge)


def _exchange_raw(wire: Wire, head: bytes, answer: bytes) -> None:
    """The same bytes on aioquic alone: a stream, its head and FIN; the answer and FIN."""
    edge, connector = wire.edge.quic, wire.connector.quic
    sid = edge.get_next_available_stream_id()
    wire.edge.timed(lambda: edge.send_stream_data(sid, head, True))
    wire.flush(wire.edge)
    wire.run(lambda: bool(wire.connector.events))
    _consume_all(wire.connector)
    wire.connector.timed(lambda: connector.send_stream_data(sid, answer, True))
    wire.flush(wire.connector)
    ended = False

    def response_ended() -> bool:
        nonlocal ended
        ended = ended or _consume_all(wire.edge)[1]
        return ended

    wire.run(response_ended)


def _acked(side: Side) -> bool:
    """Nothing of ``side``'s is unacknowledged and it owes no ACK."""
    loss = side.quic._loss
    return loss.bytes_in_flight == 0 and all(space.ack_at is None for space in loss.spaces)


#: Where a profiled function's time goes, by module and name (first match wins).
_CATEGORIES = (
    ("crypto (C: AEAD, header protection)", ("_crypto.", "crypto.py", "aead")),
    ("packet building (packet_builder.py)", ("packet_builder.py",)),
    ("packet parsing, frames (packet.py, _buffer)", ("packet.py", "_buffer.")),
    ("loss recovery, congestion (recovery.py, congestion/)", ("recovery.py", "congestion")),
    ("ranges (rangeset.py)", ("rangeset.py",)),
    ("streams (stream.py)", ("stream.py",)),
    ("connection (connection.py)", ("aioquic/quic/connection.py",)),
    ("Enum.__hash__ (aioquic's Enum dict keys)", ("enum.py",)),
    ("adit quic_engine", ("quic_engine.py",)),
    (
        "adit quic_tunnel, quic_metadata, quic_capnp",
        ("quic_tunnel.py", "quic_metadata.py", "quic_capnp.py", "headers.py"),
    ),
    ("this benchmark", ("quic_floor.py",)),
    ("builtins (len, min, isinstance, ...)", ("built-in", "{method")),
)


def profile_summary(profile: cProfile.Profile) -> dict[str, float]:
    """Self time per category, percent of the whole."""
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: collections.Counter[str] = collections.Counter()
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        where = f"{filename}:{name}"
        if "<built-in method" in where or filename == "~":
            where = name
        category = next(
            (label for label, keys in _CATEGORIES if any(k in where for k in keys)), "other"
        )
        totals[category] += tottime
    whole = sum(totals.values()) or 1.0
    return {k: round(100 * v / whole, 1) for k, v in totals.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", choices=("aioquic", "tunnel"), default="tunnel")
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--datagram-size", type=int, default=1232)
    parser.add_argument(
        "--batch", type=int, default=1, help="datagrams per wake-up, one flush for them all"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile: categories, top 30")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quic-floor-") as scratch:
        out: dict[str, Any] = {
            "layer": args.layer,
            "datagram_size": args.datagram_size,
            "batch": args.batch,
        }
        runs: list[tuple[str, Callable[[Wire], dict[str, float]]]] = []
        if args.mib:
            runs.append(("bulk", lambda wire: bulk(wire, args.mib << 20)))
        if args.requests:
            runs.append(("requests", lambda wire: requests(wire, args.requests)))
        for name, run in runs:
            wire = open_wire(Path(scratch), args.layer, args.datagram_size, args.batch)
            profile = cProfile.Profile() if args.profile else None
            if profile is not None:
                profile.enable()
            out[name] = run(wire)
            if profile is not None:
                profile.disable()
                out[f"{name}_profile_self_percent"] = profile_summary(profile)
                print(f"== {name}: cProfile, top self time")
                pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
