"""Garbage on the edge's QUIC port: only what RFC 9000 says comes back, and nothing is kept.

Anyone can send the tunnel listener's UDP port anything, from any (forged) address. What the
edge may answer is narrow: a Version Negotiation packet to a packet of another version that is
large enough to open a connection (RFC 9000 §5.2.2, §6.1; a smaller one MUST be dropped, or the
answer amplifies a forged datagram), never an answer to a Version Negotiation packet, nothing to
a packet of no connection it has. Nothing is kept for bytes that are not a client's Initial.
Meanwhile another tenant's requests over QUIC go on being answered.

Found here (each failed before its fix):

* a 26-byte packet of an unknown version got a Version Negotiation (MUST be dropped);
* a full-size packet of an unknown version was answered only if its bytes after the connection
  ids happened to parse as a version 1 Initial, and not at all with connection ids over 20
  bytes or the 0x40 bit clear (another version's header is read by RFC 8999's invariants);
* 1200 bytes with a version 1 Initial header and random payload became a connection (a tunnel
  session, a registration timer, a place in the per-address count) although nothing in them
  decrypted.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from adversary import SteadyLoad, probe, split_hostport, start_tenant
from harness import Edge, Origin, Processes, start_edge
from quic_hostile import (
    UNKNOWN_VERSION,
    answers_until_marker,
    first_flight,
    long_header,
    parse_version_negotiation,
    quic_seam_env,
    quic_state,
    udp_socket,
    unknown_version_packet,
    varint2,
)

pytestmark = pytest.mark.process

VICTIM = "victim.example.test"
UNKNOWN = UNKNOWN_VERSION
MIB = 1 << 20
#: What a client's Initial must fill, and what an unknown version's packet must fill to be
#: answered (RFC 9000 §14.1, §5.2.2).
FULL = 1200


@pytest.fixture
def edge(processes: Processes) -> Edge:
    """An edge whose QUIC listener state tests can read (tests/seams)."""
    return start_edge(processes, env=quic_seam_env(processes.tmp))


def _initial_lookalike(size: int = FULL) -> bytes:
    """A version 1 Initial header (fresh connection ids, no token) over random bytes."""
    head = long_header(1, os.urandom(8), os.urandom(8), first=0xC0)
    rest = size - len(head) - 1 - 2
    return head + b"\x00" + varint2(rest) + os.urandom(rest)


def _unknown(size: int, dcid: bytes, scid: bytes, *, first: int = 0xC0) -> bytes:
    head = long_header(UNKNOWN, dcid, scid, first=first)
    return head + os.urandom(max(0, size - len(head)))


def _answers_to(sock: socket.socket, edge: Edge, datagram: bytes) -> list[bytes]:
    return answers_until_marker(sock, edge, [datagram])


def _nothing_answered(edge: Edge) -> dict[str, bytes]:
    """Datagrams the edge must not answer (nor keep anything for)."""
    address = edge.tunnel[0]
    real = first_flight(address, edge.ca.read_text())
    cases: dict[str, bytes] = {
        "zero-length": b"",
        "one byte": b"\xc0",
        "unknown version, 26 bytes": unknown_version_packet(26),
        "unknown version, 1199 bytes": unknown_version_packet(FULL - 1),
        "unknown version, a truncated header": long_header(UNKNOWN, b"12345678", b"")[:9],
        "version negotiation, full size": long_header(0, os.urandom(8), os.urandom(8))
        + b"\0\0\0\1" * 300,
        "version negotiation, small": long_header(0, os.urandom(8), os.urandom(8)) + b"\0\0\0\1",
        "short header, unknown connection id": bytes([0x40]) + os.urandom(FULL),
        "short header, a few bytes": bytes([0x41, 0x02]),
        "version 1 handshake packet, unknown connection id": long_header(
            1, os.urandom(8), os.urandom(8), first=0xE0, rest=varint2(FULL) + os.urandom(FULL)
        ),
        "version 1 0-RTT packet, unknown connection id": long_header(
            1, os.urandom(8), os.urandom(8), first=0xD0, rest=varint2(FULL) + os.urandom(FULL)
        ),
        "version 1 initial, random payload": _initial_lookalike(),
        "version 1 initial, random payload, oversized": _initial_lookalike(1400),
        "version 1 initial, connection id of 21 bytes": long_header(
            1, os.urandom(21), os.urandom(8), rest=b"\x00" + varint2(FULL) + os.urandom(FULL)
        ),
        "a real client's initial, unpadded (truncated)": real[: FULL - 1],
    }
    for size in (1, 5, 6, 7, 20, 40, 100, 600):
        cases[f"a real client's initial cut at {size} bytes"] = real[:size]
    for size in (2, 50, 1199, 1500):
        first = os.urandom(1)[0] & 0x7F  # a short header: its first byte says nothing more
        cases[f"random bytes, {size}"] = bytes([first]) + os.urandom(size - 1)
    return cases


def test_each_kind_of_garbage_gets_only_what_rfc_9000_allows(edge: Edge) -> None:
    before = quic_state(edge)
    sock = udp_socket("127.0.0.2")
    try:
        for name, datagram in _nothing_answered(edge).items():
            assert _answers_to(sock, edge, datagram) == [], f"{name}: answered"
        negotiated: dict[str, tuple[bytes, bytes, bytes]] = {}
        for name, dcid, scid, first, size in (
            ("full size", os.urandom(8), os.urandom(8), 0xC0, FULL),
            ("0x40 bit clear", os.urandom(8), os.urandom(8), 0x80, FULL),
            ("empty connection ids", b"", b"", 0xC0, FULL),
            ("21-byte connection ids", os.urandom(21), os.urandom(21), 0xC0, FULL),
            ("255-byte connection ids", os.urandom(255), os.urandom(255), 0xC0, FULL),
            ("1500 bytes", os.urandom(8), os.urandom(8), 0xC0, 1500),
        ):
            negotiated[name] = (_unknown(size, dcid, scid, first=first), dcid, scid)
        dcid, scid = os.urandom(8), os.urandom(8)
        negotiated["shaped as a version 1 packet"] = (
            unknown_version_packet(FULL, dcid, scid),
            dcid,
            scid,
        )
        for name, (datagram, dcid, scid) in negotiated.items():
            got = _answers_to(sock, edge, datagram)
            assert len(got) == 1, f"unknown version, {name}: {len(got)} answers"
            # Addressed back to the sender's connection ids, the versions we speak, and no
            # larger than what provoked it.
            assert parse_version_negotiation(got[0]) == (scid, dcid, [1]), name
            assert len(got[0]) <= len(datagram), name
    finally:
        sock.close()
    after = quic_state(edge)
    assert after.created == before.created, f"garbage made connections: {before} -> {after}"
    assert after.sessions == 0 and after.per_ip == {}, after
    assert edge.proc.popen.poll() is None
    assert "Traceback" not in edge.proc.text(), edge.proc.text()


def _flood(edge: Edge, count: int) -> int:
    """Send ``count`` datagrams of every kind of garbage from many ports of several addresses
    (their answers are never read); returns the bytes sent."""
    address = split_hostport(edge.tunnel[0])
    kinds = list(_nothing_answered(edge).values())
    kinds += [_unknown(FULL, os.urandom(8), os.urandom(8)) for _ in range(8)]
    kinds += [_initial_lookalike() for _ in range(32)]
    sockets = [udp_socket(f"127.0.0.{2 + i % 8}") for i in range(64)]
    sent = 0
    try:
        for n in range(count):
            datagram = kinds[n % len(kinds)]
            try:
                sockets[n % len(sockets)].sendto(datagram, address)
            except BlockingIOError:
                time.sleep(0.001)
            sent += len(datagram)
            if n % 500 == 499:
                time.sleep(0.005)  # a little pacing: loopback drops what overflows the buffer
    finally:
        for sock in sockets:
            sock.close()
    return sent


def test_a_garbage_flood_leaves_the_edge_bounded_and_the_other_tenant_served(
    processes: Processes, edge: Edge, origin: Origin
) -> None:
    start_tenant(
        processes,
        edge,
        "victim",
        VICTIM,
        origin.url,
        extra=["--protocol", "quic", "--ha-connections", "1"],
    )
    assert "protocol=quic" in edge.proc.text()
    victim = quic_state(edge)
    edge_probe = probe(edge.proc)
    with SteadyLoad(edge, VICTIM, rate=20) as load:
        time.sleep(1.0)
        rss = edge_probe.rss()
        _flood(edge, 40_000)
        grown = edge_probe.rss() - rss
        time.sleep(1.0)
    assert load.failures() == [], load.failures()[:5]
    assert len(load.outcomes) > 20
    assert grown < 16 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB"
    after = quic_state(edge)
    assert after.created == victim.created, f"garbage made connections: {victim} -> {after}"
    assert after.sessions == victim.sessions, after
    assert set(after.per_ip) <= {"127.0.0.1"}, after
    assert edge.proc.popen.poll() is None
    assert "Traceback" not in edge.proc.text(), edge.proc.text()
