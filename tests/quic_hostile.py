"""Tools for tests that attack the edge's QUIC listener: raw datagrams and a scripted client.

:class:`HostileQuic` is a QUIC client of the tunnel listener built on aioquic (with adit's
connector settings, so the edge sees what adit's connector would offer): the handshake and,
if asked, a real registration on stream 0 use the same code as adit's connector; after that
the test decides every move (streams without a preamble, too many streams, DATAGRAM frames,
answers to the edge's request streams, silence). :func:`quic_state` reads the edge's QUIC
listener state through the ``ADIT_TEST_QUIC_STATE`` seam (tests/seams/sitecustomize.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    PACKET_FIXED_BIT,
    PACKET_LONG_HEADER,
    QuicPacketType,
    pull_quic_header,
)

from adit.credentials.tunnel_credentials import TunnelCredentials, load_credentials_file
from adit.protocol.quic_capnp import ConnectRequest, ConnectResponse
from adit.protocol.quic_engine import TunnelQuicConfiguration, TunnelQuicConnection
from adit.protocol.quic_metadata import StreamHeadReader, encode_data_stream_head
from adit.protocol.quic_tls import PostQuantum
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    TunnelAuth,
)
from adit.protocol.rpc_client import RegistrationClientSession
from adit.protocol.rpc_events import RegistrationFailed, RegistrationReturned
from adit.workers.quic_dial import connector_quic_configuration
from adversary import split_hostport
from harness import Edge, Tunnel, seam_env

#: The seam's environment variable: where the edge writes its QUIC listener state on SIGUSR1.
STATE_SEAM = "ADIT_TEST_QUIC_STATE"
#: The seam's environment variable: the lifetime of the edge's Retry tokens (seconds).
TOKEN_LIFETIME_SEAM = "ADIT_TEST_QUIC_TOKEN_LIFETIME"

# --- raw datagrams -----------------------------------------------------------------------------


def udp_socket(source: str = "127.0.0.1") -> socket.socket:
    """A UDP socket bound to an ephemeral port of ``source`` (any 127.0.0.0/8 address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    return sock


def packet_type(datagram: bytes) -> QuicPacketType | None:
    """The type of the first packet of a datagram the edge sent (None: not QUIC)."""
    try:
        return pull_quic_header(Buffer(data=datagram), host_cid_length=8).packet_type
    except ValueError:
        return None


def long_header(
    version: int, dcid: bytes, scid: bytes, *, first: int = 0xC0, rest: bytes = b""
) -> bytes:
    """A long-header packet: ``first`` byte, version, connection ids, then ``rest``."""
    return (
        bytes([first | PACKET_LONG_HEADER | PACKET_FIXED_BIT])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + rest
    )


def parse_version_negotiation(datagram: bytes) -> tuple[bytes, bytes, list[int]]:
    """(destination cid, source cid, versions) of a Version Negotiation packet (RFC 8999 §6)."""
    assert datagram[0] & 0x80, datagram[:8].hex()
    assert datagram[1:5] == b"\0\0\0\0", datagram[:8].hex()
    at = 5
    dcid = datagram[at + 1 : at + 1 + datagram[at]]
    at += 1 + datagram[at]
    scid = datagram[at + 1 : at + 1 + datagram[at]]
    at += 1 + datagram[at]
    rest = datagram[at:]
    assert len(rest) % 4 == 0 and rest, datagram.hex()
    versions = [int.from_bytes(rest[i : i + 4], "big") for i in range(0, len(rest), 4)]
    return dcid, scid, versions


def first_flight(edge_address: str, ca_pem: str) -> bytes:
    """A real client's first datagram (a padded Initial with the start of its ClientHello)."""
    quic = TunnelQuicConnection(configuration=connector_quic_configuration(ca_pem))
    quic.connect(split_hostport(edge_address), now=time.monotonic())
    datagrams = quic.datagrams_to_send(now=time.monotonic())
    assert datagrams, "aioquic sent no Initial"
    return datagrams[0][0]


#: A version no QUIC implementation uses (the 0x?a?a?a?a pattern is reserved for greasing).
UNKNOWN_VERSION = 0x1A2A3A4A
#: What a client's Initial must fill (RFC 9000 §14.1), and what a packet of an unknown version
#: must fill to be answered (§5.2.2).
FULL_SIZE = 1200


def varint2(value: int) -> bytes:
    """``value`` (< 16384) as a two-byte QUIC variable-length integer."""
    return (0x4000 | value).to_bytes(2, "big")


def unknown_version_packet(size: int, dcid: bytes = b"", scid: bytes = b"") -> bytes:
    """A packet of an unknown version whose bytes also parse as a version 1 Handshake packet
    (so that an edge reading every header as version 1 answers it too)."""
    head = long_header(UNKNOWN_VERSION, dcid or os.urandom(8), scid or os.urandom(8), first=0xE0)
    rest = size - len(head) - 2
    return head + varint2(rest) + os.urandom(rest)


def answers_until_marker(
    sock: socket.socket, edge: Edge, datagrams: list[bytes], timeout: float = 15.0
) -> list[bytes]:
    """Send ``datagrams`` from ``sock``, then return everything the edge answered to them,
    known for sure without waiting for a silence: a packet that gets a Version Negotiation
    follows them from the same socket, and the edge handles (and answers) one socket's
    datagrams in order."""
    address = split_hostport(edge.tunnel[0])
    marker = os.urandom(8)
    for datagram in datagrams:
        sock.sendto(datagram, address)
    sock.sendto(unknown_version_packet(FULL_SIZE, marker, b"marker!!"), address)
    sock.settimeout(timeout)
    got: list[bytes] = []
    for _ in range(100):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no answer to the marker; got {got}") from None
        if data[1:5] == b"\0\0\0\0" and parse_version_negotiation(data)[:2] == (
            b"marker!!",
            marker,
        ):
            return got
        got.append(data)
    raise AssertionError(f"the marker's answer never came: {len(got)} other datagrams")


def raw_client(edge: Edge, *, post_quantum: bool = True) -> TunnelQuicConnection:
    """A client connection to ``edge`` (adit's connector settings; ``post_quantum`` off: a
    classical ClientHello, one datagram) driven by hand: what it sends may be replayed from
    anywhere."""
    configuration = connector_quic_configuration(edge.ca.read_text())
    if not post_quantum:
        configuration.post_quantum = PostQuantum.OFF
    quic = TunnelQuicConnection(configuration=configuration)
    quic.connect(split_hostport(edge.tunnel[0]), now=time.monotonic())
    return quic


def to_send(quic: TunnelQuicConnection) -> list[bytes]:
    """The datagrams ``quic`` has to send now."""
    return [data for data, _ in quic.datagrams_to_send(now=time.monotonic())]


def initial_close_code(datagram: bytes, destination_cid: bytes) -> int | None:
    """The error code of the CONNECTION_CLOSE in a server's Initial packet sent in answer to
    a client Initial addressed to ``destination_cid`` (decrypted with that id's Initial keys,
    as the client would); None if there is none."""
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf, host_cid_length=8)
    if header.packet_type is not QuicPacketType.INITIAL:
        return None
    crypto = CryptoPair()
    crypto.setup_initial(cid=destination_cid, is_client=True, version=header.version or 1)
    _, payload, _ = crypto.decrypt_packet(datagram[: header.packet_length], buf.tell(), 0)
    frames = Buffer(data=payload)
    while not frames.eof():
        frame_type = frames.pull_uint_var()
        if frame_type == 0x00:
            continue  # PADDING
        if frame_type == 0x1C:
            return int(frames.pull_uint_var())
        return None
    return None


# --- the edge's QUIC state (test seam) ----------------------------------------------------------


@dataclass
class QuicState:
    """One snapshot of the edge's QUIC listener (summed over its listeners)."""

    sessions: int
    #: Sessions not registered yet (in their handshake, or waiting for a registration).
    unregistered: int
    routes: int
    #: Connection ids the listener keeps for its sessions (to unroute them at their end).
    tracked_ids: int
    per_ip: dict[str, int]
    #: How many sessions the listener created since it started.
    created: int
    #: Retry packets sent since it started.
    retries: int


def quic_state(edge: Edge, timeout: float = 10.0) -> QuicState:
    """Ask the edge for its QUIC listener state (SIGUSR1; the seam writes it to a file)."""
    path = _state_path(edge)
    marker = path.with_suffix(".seq")
    seq = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(seq))
    os.kill(edge.proc.popen.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with contextlib.suppress(ValueError):
                data = json.loads(path.read_text())
                if data.get("seq") == seq:
                    return QuicState(**{k: v for k, v in data.items() if k != "seq"})
        time.sleep(0.02)
    raise AssertionError(f"the edge did not write its QUIC state; log:\n{edge.proc.text()}")


def _state_path(edge: Edge) -> Path:
    return edge.state_dir.parent / f"{edge.proc.name}-quic-state.json"


def quic_seam_env(processes_tmp: Path, name: str = "edge", **extra: str) -> dict[str, str]:
    """The environment that turns the QUIC state seam on for the edge called ``name``."""
    return seam_env(**{STATE_SEAM: str(processes_tmp / f"{name}-quic-state.json"), **extra})


def wait_state(
    edge: Edge, predicate: Callable[[QuicState], bool], timeout: float = 30.0, what: str = ""
) -> QuicState:
    """Poll :func:`quic_state` until ``predicate`` holds (bounded); fail with the last one."""
    deadline = time.monotonic() + timeout
    state = quic_state(edge)
    while not predicate(state):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or predicate} not reached within {timeout}s: {state}")
        time.sleep(0.2)
        state = quic_state(edge)
    return state


# --- a scripted QUIC client --------------------------------------------------------------------

#: Answers one request stream the edge opened: gets the client, the stream and its request.
QuicAnswer = Callable[["HostileQuic", int, ConnectRequest], None]


@dataclass
class Closed:
    """How the connection ended, as the client saw it."""

    error_code: int
    reason: str
    frame_type: int | None


@dataclass
class _Incoming:
    reader: StreamHeadReader[ConnectRequest] = field(
        default_factory=lambda: StreamHeadReader(ConnectRequest)
    )
    request: ConnectRequest | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: bool = False


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: HostileQuic) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.owner._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


class HostileQuic:
    """A QUIC client of the tunnel listener that registers as adit's connector does, then does
    what the test says.

    ``configure`` may change the client's configuration before the connection is made (no
    DATAGRAM support, larger packets...). Whatever the edge sends is processed (ACKs, the
    edge's PINGs, flow control) unless :meth:`vanish` was called; received stream data is
    credited back to the edge only while ``consume`` is true.
    """

    def __init__(
        self,
        address: str,
        ca_pem: str,
        credentials: TunnelCredentials | None = None,
        *,
        source: str = "127.0.0.1",
        conn_index: int = 0,
        answer: QuicAnswer | None = None,
        configure: Callable[[TunnelQuicConfiguration], None] | None = None,
    ) -> None:
        self.address = address
        self.source = source
        self.credentials = credentials
        self.conn_index = conn_index
        self.answer = answer
        configuration = connector_quic_configuration(ca_pem)
        if configure is not None:
            configure(configuration)
        self.quic = TunnelQuicConnection(configuration=configuration)
        self.rpc = RegistrationClientSession()
        self.registered: ConnectionDetails | None = None
        self.closed: Closed | None = None
        self.ended = asyncio.Event()
        self.handshake = asyncio.Event()
        #: Request streams the edge opened, by stream id.
        self.incoming: dict[int, _Incoming] = {}
        #: Streams we opened that the edge reset or stopped.
        self.refused: set[int] = set()
        #: Whether received stream data is credited back (False: a connector that never reads).
        self.consume = True
        #: A Retry packet came before the handshake.
        self.retried = False
        #: Move to the first connection id the edge issues as soon as it comes, before
        #: answering anything (RFC 9000 §5.1.1 allows it), and lose every packet between the
        #: handshake's last one and that move (as a lossy path may): after the handshake the
        #: edge receives nothing addressed to the ids it knew then.
        self.switch_at_once = False
        self.switched = asyncio.Event()
        self._finished_sent = False
        self._vanished = False
        self._registration: asyncio.Future[object] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer: NetworkAddress = ("", 0)

    @classmethod
    def for_tunnel(cls, edge: Edge, tunnel: Tunnel | None = None, **kwargs: Any) -> HostileQuic:
        """A client dialling ``edge``'s first tunnel address, holding ``tunnel``'s credentials
        (none: it cannot register)."""
        credentials = load_credentials_file(tunnel.credentials) if tunnel is not None else None
        return cls(edge.tunnel[0], edge.ca.read_text(), credentials, **kwargs)

    # -- the connection ------------------------------------------------------------------------

    async def open(self, *, register: bool = True, timeout: float = 15.0) -> None:
        """The handshake and (by default) the registration on stream 0."""
        loop = asyncio.get_running_loop()
        host, port = split_hostport(self.address)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self), local_addr=(self.source, 0)
        )
        self._transport = transport
        self._peer = (host, port)
        self.quic.connect(self._peer, now=loop.time())
        self.flush()
        waiting = asyncio.ensure_future(self.handshake.wait())
        ending = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({waiting, ending}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            waiting.cancel()
            ending.cancel()
        if not self.handshake.is_set():
            raise ConnectionError(f"QUIC handshake did not complete: {self.closed}")
        if register:
            await self.register(timeout=timeout)

    async def register(self, timeout: float = 15.0) -> None:
        """registerConnection on stream 0, as adit's connector sends it."""
        creds = self.credentials
        assert creds is not None, "no credentials to register with"
        self._registration = asyncio.get_running_loop().create_future()
        client = ClientInfo(
            client_id=uuid.uuid4(), features=(), version="hostile-quic", arch="linux_amd64"
        )
        self.rpc.register(
            TunnelAuth(creds.account_tag, creds.tunnel_secret),
            creds.tunnel_id,
            self.conn_index,
            ConnectionOptions(client=client),
        )
        self._send_rpc()
        result = await asyncio.wait_for(self._registration, timeout)
        if not isinstance(result, ConnectionDetails):
            raise AssertionError(f"registration refused: {result!r}")
        self.registered = result

    def flush(self) -> None:
        """Send what aioquic has to send now, and arm its timer."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._vanished:
            return
        loop = asyncio.get_running_loop()
        lost = self.switch_at_once and self._finished_sent and not self.switched.is_set()
        for data, addr in self.quic.datagrams_to_send(now=loop.time()):
            if not lost:
                with contextlib.suppress(OSError):
                    transport.sendto(data, addr)
        if self.handshake.is_set():
            self._finished_sent = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.quic.get_timer()
        if at is not None:
            self._timer = loop.call_at(at, self._on_timer)

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._transport is not None
        return cast(tuple[str, int], self._transport.get_extra_info("sockname"))

    def vanish(self) -> None:
        """From now on receive nothing and send nothing: the peer is gone (no CONNECTION_CLOSE)."""
        self._vanished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def close(self, error_code: int = 0, reason: str = "") -> None:
        """CONNECTION_CLOSE (application), then drop the socket."""
        if not self._vanished and self.closed is None:
            self.quic.close(error_code=error_code, reason_phrase=reason)
            self.flush()
        self.abandon()

    def abandon(self) -> None:
        """Drop the socket without a word."""
        self.vanish()
        if self._transport is not None:
            self._transport.close()

    async def wait_ended(self, timeout: float) -> bool:
        """Whether the edge ended the connection within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), timeout)
        return self.ended.is_set()

    # -- streams ---------------------------------------------------------------------------------

    def open_stream(self, data: bytes, *, end: bool = False, uni: bool = False) -> int:
        """A new stream of ours carrying ``data``."""
        stream_id = self.quic.get_next_available_stream_id(is_unidirectional=uni)
        self.quic.send_stream_data(stream_id, data, end)
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end)
        self.flush()

    def respond(
        self, stream_id: int, response: ConnectResponse, body: bytes = b"", *, end: bool = True
    ) -> None:
        """Answer a request stream: preamble, ``response``, ``body``."""
        self.send(stream_id, encode_data_stream_head(response) + body, end=end)

    # -- what comes in ---------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self._vanished:
            return
        self.quic.handle_timer(now=asyncio.get_running_loop().time())
        self._events()
        self.flush()

    def _datagram(self, data: bytes, addr: NetworkAddress) -> None:
        if self._vanished:
            return
        if not self.handshake.is_set() and packet_type(data) is QuicPacketType.RETRY:
            self.retried = True
        self.quic.receive_datagram(data, addr, now=asyncio.get_running_loop().time())
        if self.switch_at_once and not self.switched.is_set() and self.quic._peer_cid_available:
            self.quic.change_connection_id()
            self.switched.set()
        self._events()
        self.flush()

    def _events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted):
                self.handshake.set()
            elif isinstance(event, events.ConnectionTerminated):
                self.closed = Closed(event.error_code, event.reason_phrase, event.frame_type)
                self.ended.set()
                if self._registration is not None and not self._registration.done():
                    self._registration.set_result(self.closed)
            elif isinstance(event, events.StreamDataReceived):
                self._stream_data(event)
            elif isinstance(event, events.StreamReset | events.StopSendingReceived):
                self.refused.add(event.stream_id)
                incoming = self.incoming.get(event.stream_id)
                if incoming is not None:
                    incoming.reset = True

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        if stream_id == 0:
            self._credit(stream_id, len(event.data))
            for answer in self.rpc.receive_data(event.data):
                waiting = self._registration
                if waiting is None or waiting.done():
                    continue
                if isinstance(answer, RegistrationReturned):
                    waiting.set_result(answer.result)
                elif isinstance(answer, RegistrationFailed):
                    waiting.set_result(answer)
            self._send_rpc()
            return
        incoming = self.incoming.setdefault(stream_id, _Incoming())
        data = event.data
        if incoming.request is None:
            head = incoming.reader.feed(data)
            if head is None:
                self._credit(stream_id, len(data))
                return
            assert isinstance(head.message, ConnectRequest)
            incoming.request = head.message
            self._credit(stream_id, len(data) - len(head.rest))
            data = head.rest
            if self.answer is not None:
                self.answer(self, stream_id, head.message)
        incoming.body += data
        incoming.ended = incoming.ended or event.end_stream
        self._credit(stream_id, len(data))

    def _credit(self, stream_id: int, length: int) -> None:
        if self.consume and length:
            with contextlib.suppress(ValueError):
                self.quic.consumed(stream_id, length)

    def _send_rpc(self) -> None:
        out = self.rpc.data_to_send()
        if out:
            self.quic.send_stream_data(0, out)
            self.flush()
