"""The tunnel's QUIC engine, both roles, in memory: hybrid post-quantum TLS, flow control by
consumption, datagrams, ALPN. Datagrams are handed across by hand with an explicit ``now``."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import aioquic
import pytest
from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, pull_quic_header
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from adit.protocol import quic_counters, quic_engine, quic_tls
from adit.protocol.quic_counters import (
    CONGESTION_APPLICATION_LIMITED,
    FRAME_LABELS,
    FRAME_TYPE_SLOTS,
    LOSS_REORDERING,
    LOSS_TIME,
    frames_by_label,
)
from adit.protocol.quic_engine import (
    ALPN,
    MAX_DATAGRAM_FRAME_SIZE,
    SERVER_NAME,
    STREAM_RECEIVE_WINDOW,
    PostQuantum,
    TunnelQuicConfiguration,
    TunnelQuicConnection,
    quic_configuration,
)
from adit.protocol.quic_tls import CLIENT_SHARE_SIZE, X25519MLKEM768, TunnelTlsContext
from quic_pki import Pki, make_pki

CLIENT_ADDR = ("192.0.2.1", 40000)
SERVER_ADDR = ("192.0.2.2", 7844)
SECP256R1 = 0x0017
X25519 = 0x001D
MiB = 1 << 20
HANDSHAKE_FAILURE = QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.handshake_failure
NO_APPLICATION_PROTOCOL = QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.no_application_protocol


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def client_config(pki: Pki, mode: PostQuantum) -> TunnelQuicConfiguration:
    return quic_configuration(is_client=True, post_quantum=mode, cadata=pki.ca_pem)


def server_config(
    pki: Pki,
    mode: PostQuantum,
    stream_window: int = STREAM_RECEIVE_WINDOW,
    connection_window: int = quic_engine.CONNECTION_RECEIVE_WINDOW,
) -> TunnelQuicConfiguration:
    return quic_configuration(
        is_client=False,
        post_quantum=mode,
        certificate=pki.leaf,
        private_key=pki.key,
        stream_window=stream_window,
        connection_window=connection_window,
    )


def plain_client_config(pki: Pki, alpn: list[str] | None = None) -> QuicConfiguration:
    """aioquic as it comes: classical groups only."""
    return QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN] if alpn is None else alpn or None,
        server_name=SERVER_NAME,
        cadata=pki.ca_pem,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
    )


def plain_server_config(pki: Pki) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE
    )
    config.certificate, config.private_key = pki.leaf, pki.key
    return config


@dataclass
class Link:
    """A client and a server joined by an in-memory wire; time moves only when told to."""

    client: QuicConnection
    server: QuicConnection
    now: float = 0.0
    client_events: list[events.QuicEvent] = field(default_factory=list)
    server_events: list[events.QuicEvent] = field(default_factory=list)
    #: Stream bytes each side's application has been handed (and not consumed, unless it did).
    received: dict[tuple[bool, int], int] = field(default_factory=dict)
    #: Bytes the server application reported consumed, per stream.
    consumed: dict[int, int] = field(default_factory=dict)
    drop_to_client: bool = False

    @classmethod
    def connect(
        cls, client: QuicConnection, make_server: Callable[[bytes], QuicConnection]
    ) -> Link:
        client.connect(SERVER_ADDR, now=0.0)
        first = client.datagrams_to_send(now=0.0)
        odcid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
        link = cls(client, make_server(odcid))
        for data, _ in first:
            link.server.receive_datagram(data, CLIENT_ADDR, 0.0)
        return link

    def step(self, dt: float = 0.002) -> int:
        """Advance time, fire due timers, move every datagram both ways; how many moved."""
        self.now += dt
        moved = 0
        for src, dst, addr in (
            (self.client, self.server, CLIENT_ADDR),
            (self.server, self.client, SERVER_ADDR),
        ):
            timer = src.get_timer()
            if timer is not None and timer <= self.now:
                src.handle_timer(self.now)
            for data, _ in src.datagrams_to_send(self.now):
                moved += 1
                if not (dst is self.client and self.drop_to_client):
                    dst.receive_datagram(data, addr, self.now)
        self._collect(self.client, self.client_events)
        self._collect(self.server, self.server_events)
        return moved

    def _collect(self, conn: QuicConnection, into: list[events.QuicEvent]) -> None:
        while (event := conn.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                key = (conn is self.client, event.stream_id)
                self.received[key] = self.received.get(key, 0) + len(event.data)
            else:
                into.append(event)

    def consume_all(self) -> None:
        """The server application catches up: everything delivered so far is consumed."""
        assert isinstance(self.server, TunnelQuicConnection)
        for (to_client, stream_id), delivered in self.received.items():
            if not to_client:
                self.server.consumed(stream_id, delivered - self.consumed.get(stream_id, 0))
                self.consumed[stream_id] = delivered

    def run(self, seconds: float = 0.5, until: Callable[[], bool] | None = None) -> None:
        """Run for ``seconds`` of wire time, or until ``until()``, or until the wire is quiet."""
        end, quiet = self.now + seconds, 0
        while self.now < end and not (until is not None and until()):
            quiet = 0 if self.step() else quiet + 1
            if until is None and quiet > 50:
                return

    def handshake(self) -> None:
        self.run(2.0, until=lambda: self.completed(self.client) and self.completed(self.server))
        assert self.completed(self.client) and self.completed(self.server)

    def completed(self, side: QuicConnection) -> bool:
        found = self.client_events if side is self.client else self.server_events
        return any(isinstance(e, events.HandshakeCompleted) for e in found)

    def terminated(self, side: QuicConnection) -> events.ConnectionTerminated:
        self.run(2.0, until=lambda: self._terminated(side) is not None)
        event = self._terminated(side)
        assert event is not None, "the connection did not terminate"
        return event

    def _terminated(self, side: QuicConnection) -> events.ConnectionTerminated | None:
        found = self.client_events if side is self.client else self.server_events
        ended = [e for e in found if isinstance(e, events.ConnectionTerminated)]
        return ended[0] if ended else None


def tunnel_server(config: QuicConfiguration) -> Callable[[bytes], QuicConnection]:
    assert isinstance(config, TunnelQuicConfiguration)
    return lambda odcid: TunnelQuicConnection(
        configuration=config, original_destination_connection_id=odcid
    )


def plain_server(config: QuicConfiguration) -> Callable[[bytes], QuicConnection]:
    return lambda odcid: QuicConnection(
        configuration=config, original_destination_connection_id=odcid
    )


def group_of(conn: QuicConnection) -> int | None:
    assert isinstance(conn, TunnelQuicConnection)
    return conn.key_exchange_group


# (i) and (ii): the hybrid key exchange


@pytest.mark.parametrize("client_mode", [PostQuantum.PREFER, PostQuantum.STRICT])
@pytest.mark.parametrize("server_mode", [PostQuantum.PREFER, PostQuantum.STRICT])
def test_post_quantum_peers_agree_on_x25519mlkem768(
    pki: Pki, client_mode: PostQuantum, server_mode: PostQuantum
) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, client_mode))
    link = Link.connect(client, tunnel_server(server_config(pki, server_mode)))
    link.handshake()
    assert group_of(link.client) == group_of(link.server) == X25519MLKEM768
    completed = [e for e in link.client_events if isinstance(e, events.HandshakeCompleted)]
    assert completed[0].alpn_protocol == ALPN
    # 1-RTT keys agree: application data crosses both ways.
    link.client.send_stream_data(0, b"ping", end_stream=True)
    link.run()
    link.server.send_stream_data(0, b"pong", end_stream=True)
    link.run()
    assert link.received == {(False, 0): 4, (True, 0): 4}


class CloudflaredOffer(TunnelTlsContext):
    """Go crypto/tls with cloudflared's prefer curves, as captured on the wire: one key share,
    X25519MLKEM768, and supported_groups [X25519MLKEM768, secp256r1] (PROTOCOL.md §1.4)."""

    hello: bytes = b""

    def offered_key_shares(self) -> list[int]:
        return [X25519MLKEM768]

    def offered_groups(self) -> list[int]:
        return [X25519MLKEM768, SECP256R1]

    def _client_send_hello(self, output_buf: Buffer) -> None:
        start = output_buf.tell()
        super()._client_send_hello(output_buf)
        self.hello = output_buf.data_slice(start, output_buf.tell())


class CloudflaredLikeClient(TunnelQuicConnection):
    tls_context_class = CloudflaredOffer


@pytest.mark.parametrize("server_mode", [PostQuantum.PREFER, PostQuantum.STRICT])
def test_a_client_offering_only_the_hybrid_share_like_cloudflared_completes(
    pki: Pki, server_mode: PostQuantum
) -> None:
    client = CloudflaredLikeClient(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, server_mode)))
    link.handshake()
    assert isinstance(link.client.tls, CloudflaredOffer)
    hello = tls.pull_client_hello(Buffer(data=link.client.tls.hello))
    assert hello.key_share is not None
    assert [(group, len(share)) for group, share in hello.key_share] == [
        (X25519MLKEM768, CLIENT_SHARE_SIZE)
    ]
    assert hello.supported_groups == [X25519MLKEM768, SECP256R1]
    assert group_of(link.server) == X25519MLKEM768


def test_prefer_offers_the_hybrid_first_and_x25519_as_a_fallback(pki: Pki) -> None:
    class Recording(CloudflaredOffer):
        offered_key_shares = TunnelTlsContext.offered_key_shares
        offered_groups = TunnelTlsContext.offered_groups

    class Client(TunnelQuicConnection):
        tls_context_class = Recording

    client = Client(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    assert isinstance(link.client.tls, Recording)
    hello = tls.pull_client_hello(Buffer(data=link.client.tls.hello))
    assert hello.key_share is not None
    shares = dict(hello.key_share)
    assert list(shares) == hello.supported_groups == [X25519MLKEM768, X25519]
    # One X25519 key for both shares, as Go does.
    assert shares[X25519MLKEM768][-32:] == shares[X25519]


# The hybrid's wire layout and secret, pinned against a hand-run peer (not our other role)


def tls_buffers() -> dict[tls.Epoch, Buffer]:
    return {
        epoch: Buffer(capacity=16384)
        for epoch in (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE, tls.Epoch.ONE_RTT)
    }


def keys_of(context: tls.Context) -> dict[tuple[tls.Direction, tls.Epoch], bytes]:
    keys: dict[tuple[tls.Direction, tls.Epoch], bytes] = {}

    def record(
        direction: tls.Direction, epoch: tls.Epoch, suite: tls.CipherSuite, secret: bytes
    ) -> None:
        keys[(direction, epoch)] = secret

    context.update_traffic_key_cb = record
    return keys


def handshake_secret(
    client_hello: bytes, server_hello: bytes, shared: bytes, label: bytes
) -> bytes:
    """RFC 8446 §7.1 up to the handshake traffic secrets, SHA-256 suite."""
    schedule = tls.KeySchedule(tls.CipherSuite.AES_128_GCM_SHA256)
    schedule.extract(None)
    schedule.update_hash(client_hello)
    schedule.update_hash(server_hello)
    schedule.extract(shared)
    return schedule.derive_secret(label)


def test_the_server_answers_a_hybrid_share_with_ciphertext_then_x25519(pki: Pki) -> None:
    server = TunnelTlsContext.adopt(
        tls.Context(is_client=False, alpn_protocols=[ALPN]), PostQuantum.PREFER
    )
    server.certificate, server.certificate_private_key = pki.leaf, pki.key
    keys = keys_of(server)
    kem_key, x_key = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    share = kem_key.public_key().public_bytes_raw() + x_key.public_key().public_bytes_raw()
    hello = tls.ClientHello(
        random=bytes(32),
        legacy_session_id=b"",
        cipher_suites=[tls.CipherSuite.AES_128_GCM_SHA256],
        legacy_compression_methods=[0],
        alpn_protocols=[ALPN],
        key_share=[(X25519MLKEM768, share)],
        signature_algorithms=[tls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256],
        supported_groups=[X25519MLKEM768, SECP256R1],
        supported_versions=[tls.TLS_VERSION_1_3],
    )
    buf = Buffer(capacity=4096)
    tls.push_client_hello(buf, hello)
    client_hello, out = buf.data, tls_buffers()
    server.handle_message(client_hello, out)

    server_hello = out[tls.Epoch.INITIAL].data
    reply = tls.pull_server_hello(Buffer(data=server_hello))
    assert reply.key_share is not None
    group, server_share = reply.key_share
    assert (group, len(server_share)) == (X25519MLKEM768, 1088 + 32)
    kem_secret = kem_key.decapsulate(server_share[:1088])
    x_secret = x_key.exchange(x25519.X25519PublicKey.from_public_bytes(server_share[1088:]))
    expected = handshake_secret(client_hello, server_hello, kem_secret + x_secret, b"s hs traffic")
    assert keys[(tls.Direction.ENCRYPT, tls.Epoch.HANDSHAKE)] == expected


def test_the_client_derives_ml_kem_then_x25519_from_a_hybrid_server_share() -> None:
    client = TunnelTlsContext.adopt(
        tls.Context(is_client=True, alpn_protocols=[ALPN], server_name=SERVER_NAME),
        PostQuantum.STRICT,
    )
    keys = keys_of(client)
    out = tls_buffers()
    client.handle_message(b"", out)
    client_hello = out[tls.Epoch.INITIAL].data
    hello = tls.pull_client_hello(Buffer(data=client_hello))
    assert hello.key_share is not None and hello.supported_groups == [X25519MLKEM768]
    [(group, share)] = hello.key_share
    assert (group, len(share)) == (X25519MLKEM768, 1184 + 32)

    kem_secret, ciphertext = mlkem.MLKEM768PublicKey.from_public_bytes(share[:1184]).encapsulate()
    x_key = x25519.X25519PrivateKey.generate()
    x_secret = x_key.exchange(x25519.X25519PublicKey.from_public_bytes(share[1184:]))
    reply = tls.ServerHello(
        random=bytes(32),
        legacy_session_id=b"",
        cipher_suite=tls.CipherSuite.AES_128_GCM_SHA256,
        compression_method=0,
        key_share=(X25519MLKEM768, ciphertext + x_key.public_key().public_bytes_raw()),
        supported_version=tls.TLS_VERSION_1_3,
    )
    buf = Buffer(capacity=4096)
    tls.push_server_hello(buf, reply)
    client.handle_message(buf.data, tls_buffers())
    expected = handshake_secret(client_hello, buf.data, kem_secret + x_secret, b"s hs traffic")
    assert keys[(tls.Direction.DECRYPT, tls.Epoch.HANDSHAKE)] == expected
    assert client.key_exchange_group == X25519MLKEM768


# (iii) strict mode refuses classical peers, and says why on both sides


def test_a_strict_server_refuses_a_classical_client_naming_the_group(pki: Pki) -> None:
    client = QuicConnection(configuration=plain_client_config(pki))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.STRICT)))
    for side in (link.server, link.client):
        ended = link.terminated(side)
        assert ended.error_code == HANDSHAKE_FAILURE
        assert "X25519MLKEM768 (0x11ec)" in ended.reason_phrase
        assert "secp256r1 (0x0017)" in ended.reason_phrase  # what the client offered instead
    assert not link.completed(link.client)


def test_a_strict_client_refused_by_a_server_without_post_quantum_says_why(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.STRICT))
    link = Link.connect(client, plain_server(plain_server_config(pki)))
    server_side = link.terminated(link.server)
    assert (server_side.error_code, server_side.reason_phrase) == (
        HANDSHAKE_FAILURE,
        "No supported key share",
    )
    client_side = link.terminated(link.client)
    assert client_side.error_code == HANDSHAKE_FAILURE
    assert (
        "post-quantum strict mode offered only X25519MLKEM768 (0x11ec)" in client_side.reason_phrase
    )


def test_a_strict_client_and_a_server_with_post_quantum_off_both_name_the_group(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.STRICT))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.OFF)))
    for side in (link.server, link.client):
        ended = link.terminated(side)
        assert ended.error_code == HANDSHAKE_FAILURE
        assert "the client offered X25519MLKEM768 (0x11ec)" in ended.reason_phrase


# (iv) OFF is aioquic's own behaviour; PREFER still talks to classical peers


@pytest.mark.parametrize(
    ("client_mode", "server_mode"),
    [
        (PostQuantum.OFF, None),
        (PostQuantum.PREFER, None),
        (None, PostQuantum.OFF),
        (None, PostQuantum.PREFER),
        (PostQuantum.OFF, PostQuantum.PREFER),
        (PostQuantum.PREFER, PostQuantum.OFF),
    ],
)
def test_classical_key_exchange_with_plain_aioquic(
    pki: Pki, client_mode: PostQuantum | None, server_mode: PostQuantum | None
) -> None:
    client = (
        QuicConnection(configuration=plain_client_config(pki))
        if client_mode is None
        else TunnelQuicConnection(configuration=client_config(pki, client_mode))
    )
    make_server = (
        plain_server(plain_server_config(pki))
        if server_mode is None
        else tunnel_server(server_config(pki, server_mode))
    )
    link = Link.connect(client, make_server)
    link.handshake()
    for side in (link.client, link.server):
        if isinstance(side, TunnelQuicConnection):
            assert side.key_exchange_group in (SECP256R1, X25519)


# (v) flow control follows what the application consumed


def transfer(link: Link, stream_ids: list[int], size: int) -> None:
    payload = bytes(size)
    for stream_id in stream_ids:
        link.client.send_stream_data(stream_id, payload, end_stream=True)


def test_a_reader_that_never_consumes_holds_at_most_one_stream_window(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    assert isinstance(link.client, TunnelQuicConnection)
    assert isinstance(link.server, TunnelQuicConnection)
    transfer(link, [0], 20 * MiB)
    link.run(5.0)
    held = link.received[(False, 0)]
    # The sender stalls at the window (aioquic alone would have let all 20 MiB through).
    assert STREAM_RECEIVE_WINDOW - 64 * 1024 <= held <= STREAM_RECEIVE_WINDOW
    assert link.client.stream_send_queued(0) == 20 * MiB - held
    assert not link.client.stream_send_queue_below(0, 1 * MiB)

    # Consuming lets the rest through, never more than a window ahead of the reader.
    while link.received[(False, 0)] < 20 * MiB:
        link.consume_all()
        for _ in range(20):
            link.step()
            assert link.received[(False, 0)] - link.consumed[0] <= STREAM_RECEIVE_WINDOW
        assert link.now < 60, "the transfer stalled"
    assert link.client.stream_send_queued(0) == 0
    assert link.client.stream_send_queue_below(0, 1)


def test_the_connection_window_bounds_what_all_streams_together_hold(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    config = server_config(
        pki, PostQuantum.PREFER, stream_window=1 * MiB, connection_window=2 * MiB
    )
    link = Link.connect(client, tunnel_server(config))
    link.handshake()
    assert isinstance(link.server, TunnelQuicConnection)
    streams = [0, 4, 8, 12]
    transfer(link, streams, 2 * MiB)
    link.run(3.0)
    held = [link.received.get((False, s), 0) for s in streams]
    assert 2 * MiB - 64 * 1024 <= sum(held) <= 2 * MiB
    assert max(held) <= 1 * MiB

    while sum(link.received.get((False, s), 0) for s in streams) < 8 * MiB:
        link.consume_all()
        for _ in range(20):
            link.step()
            unconsumed = sum(
                link.received.get((False, s), 0) - link.consumed.get(s, 0) for s in streams
            )
            assert unconsumed <= 2 * MiB
        assert link.now < 60, "the transfer stalled"
    link.consume_all()
    assert link.server.consumed_total == 8 * MiB


def test_consuming_more_than_was_delivered_is_refused(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    assert isinstance(link.server, TunnelQuicConnection)
    link.client.send_stream_data(0, b"x" * 100)
    link.run()
    with pytest.raises(ValueError, match=r"delivered|received"):
        link.server.consumed(0, 101)
    with pytest.raises(ValueError, match="negative"):
        link.server.consumed(0, -1)
    link.server.consumed(0, 100)


def test_bytes_a_reset_stream_never_delivered_are_credited_to_the_connection(pki: Pki) -> None:
    window = 4096
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    config = server_config(pki, PostQuantum.PREFER, stream_window=1 * MiB, connection_window=window)
    link = Link.connect(client, tunnel_server(config))
    link.handshake()
    assert isinstance(link.client, TunnelQuicConnection)
    assert isinstance(link.server, TunnelQuicConnection)
    # Stream data leaves the client and is lost; then the client resets the stream, so the
    # server learns its final size but its application never sees a byte of it.
    link.client.send_stream_data(0, bytes(64 * 1024))
    link.client.datagrams_to_send(link.now)
    lost = 64 * 1024 - link.client.stream_send_queued(0)
    assert window // 2 <= lost <= window
    link.client.reset_stream(0, 1)
    link.run()
    assert link.received.get((False, 0), 0) == 0
    assert link.server.consumed_total == lost
    # The connection window is whole again: a new stream gets all of it (without the credit,
    # only window - lost).
    link.client.send_stream_data(4, bytes(64 * 1024))
    link.run()
    assert link.received[(False, 4)] == window


# (vi) datagrams, ALPN, incoming streams, handshake deadline


def test_datagrams_flow_both_ways(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    link.client.send_datagram_frame(b"to the edge")
    link.server.send_datagram_frame(b"to the connector")
    link.run()
    got = {
        side: [e.data for e in found if isinstance(e, events.DatagramFrameReceived)]
        for side, found in (("client", link.client_events), ("server", link.server_events))
    }
    assert got == {"client": [b"to the connector"], "server": [b"to the edge"]}


@pytest.mark.parametrize("alpn", [[], ["h3"]])
def test_a_client_without_the_argotunnel_alpn_is_refused(pki: Pki, alpn: list[str]) -> None:
    client = QuicConnection(configuration=plain_client_config(pki, alpn=alpn))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    ended = link.terminated(link.client)
    assert ended.error_code == NO_APPLICATION_PROTOCOL
    assert not link.completed(link.server)


def test_the_peer_may_open_as_many_streams_as_configured(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    config = server_config(pki, PostQuantum.PREFER)
    config.max_incoming_streams = 2
    link = Link.connect(client, tunnel_server(config))
    link.handshake()
    for stream_id in (0, 4, 8):
        link.client.send_stream_data(stream_id, b"hello")
    link.run()
    assert sorted(sid for _, sid in link.received) == [0, 4]


def test_by_default_the_edge_opens_as_many_streams_as_cloudflared_allows(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    for stream_id in range(1, 4 * 300, 4):  # the edge's requests; aioquic alone allows 128
        link.server.send_stream_data(stream_id, b"x")
    for stream_id in range(0, 4 * 300, 4):  # the edge allows the connector aioquic's 128
        link.client.send_stream_data(stream_id, b"x")
    link.run()
    assert sum(1 for to_client, _ in link.received if to_client) == 300
    assert sum(1 for to_client, _ in link.received if not to_client) == 128


def test_a_handshake_kept_alive_but_never_completed_ends_at_the_deadline(pki: Pki) -> None:
    # A client whose handshake retries keep reaching the server (so its idle timer never
    # fires) while nothing comes back: the client's flights, replayed one every 3 s.
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    client.connect(SERVER_ADDR, now=0.0)
    flights, now = [[data for data, _ in client.datagrams_to_send(0.0)]], 0.0
    while len(flights) < 4 and now < 5.0:
        now += 0.01
        timer = client.get_timer()
        if timer is not None and timer <= now:
            client.handle_timer(now)
        if sent := [data for data, _ in client.datagrams_to_send(now)]:
            flights.append(sent)
    assert len(flights) == 4
    odcid = pull_quic_header(Buffer(data=flights[0][0]), host_cid_length=8).destination_cid
    server = TunnelQuicConnection(
        configuration=server_config(pki, PostQuantum.PREFER),
        original_destination_connection_id=odcid,
    )
    arrivals = dict(zip((0, 300, 600, 900), flights, strict=True))  # in hundredths of a second
    ended: list[events.ConnectionTerminated] = []
    for tick in range(1200):
        now = tick / 100
        for data in arrivals.get(tick, []):
            server.receive_datagram(data, CLIENT_ADDR, now)
        timer = server.get_timer()
        if timer is not None and timer <= now:
            server.handle_timer(now)
        server.datagrams_to_send(now)
        ended += [
            e for e in iter(server.next_event, None) if isinstance(e, events.ConnectionTerminated)
        ]
        if ended:
            break
    assert ended, "the server waited on"
    assert "handshake not complete after 10 s" in ended[0].reason_phrase
    assert now <= quic_engine.HANDSHAKE_TIMEOUT + 1.0


# configuration and the aioquic guard


def test_the_configuration_carries_cloudflareds_settings(pki: Pki) -> None:
    config = client_config(pki, PostQuantum.PREFER)
    assert config.alpn_protocols == ["argotunnel"]
    assert config.server_name == "quic.cftunnel.com"
    assert config.idle_timeout == 5.0
    assert config.max_datagram_frame_size == 16383
    assert config.max_datagram_size == 1232
    assert (config.max_data, config.max_stream_data) == (30 * MiB, 6 * MiB)
    with pytest.raises(ValueError, match="certificate"):
        quic_configuration(is_client=False, post_quantum=PostQuantum.PREFER)


def test_session_resumption_is_refused_with_post_quantum(pki: Pki) -> None:
    config = client_config(pki, PostQuantum.PREFER)
    config.session_ticket = tls.SessionTicket(
        age_add=0,
        cipher_suite=tls.CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=datetime.datetime.now(datetime.UTC),
        not_valid_before=datetime.datetime.now(datetime.UTC),
        resumption_secret=b"",
        server_name=SERVER_NAME,
        ticket=b"t",
    )
    with pytest.raises(ValueError, match="resumption"):
        TunnelQuicConnection(configuration=config)


def test_a_different_aioquic_fails_the_import_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioquic, "__version__", "1.8.0")
    monkeypatch.delattr(tls.Context, "_setup_traffic_protection")
    with pytest.raises(ImportError, match=r"version 1\.8\.0.*_setup_traffic_protection"):
        quic_tls._check_aioquic()
    monkeypatch.delattr(QuicConnection, "_write_stream_limits")
    with pytest.raises(ImportError, match="_write_stream_limits"):
        quic_engine._check_aioquic()


@pytest.mark.parametrize("module", [quic_engine, quic_tls, quic_counters])
def test_public_names_resolve(module: ModuleType) -> None:
    exported = module.__all__
    assert sorted(exported) == sorted(set(exported))
    assert all(hasattr(module, name) for name in exported)


# (vii) what a connection counts for cloudflared's quic_client_* metrics


def test_frames_and_bytes_are_counted_each_way(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    link.client.send_stream_data(0, b"x" * 5000, end_stream=True)
    link.client.send_datagram_frame(b"to the edge")
    link.run()
    assert isinstance(link.server, TunnelQuicConnection)
    sent = frames_by_label(client.counters.frames_sent)
    received = frames_by_label(link.server.counters.frames_received)
    # Every frame the client started reached the server (nothing was lost on this wire), bar
    # the server's first Initial which the link hands over before the server exists.
    assert sent["Stream"] == received["Stream"] >= 4
    assert sent["Datagram"] == received["Datagram"] == 1
    assert {"Crypto", "Ack"} <= sent.keys()
    assert "HandshakeDone" in frames_by_label(client.counters.frames_received)
    assert "Padding" not in sent and "Padding" not in received
    assert client.counters.bytes_sent == link.server.counters.bytes_received > 5000
    assert link.server.counters.bytes_sent == client.counters.bytes_received > 0
    assert client.counters.dropped == {}
    assert client.counters.lost == {LOSS_REORDERING: 0, LOSS_TIME: 0}


def test_path_stats_read_aioquics_rtt_window_and_the_peers_payload_limit(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    before = client.path_stats()
    assert before.min_rtt_ms is None and before.max_udp_payload is None
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    link.run()
    stats = client.path_stats()
    # The link moves datagrams every 2 ms of its clock: an RTT of a few milliseconds.
    assert stats.min_rtt_ms is not None and stats.smoothed_rtt_ms is not None
    assert 1 <= stats.min_rtt_ms <= stats.smoothed_rtt_ms <= 20
    assert stats.latest_rtt_ms is not None and stats.latest_rtt_ms >= 1
    assert stats.max_udp_payload == 65527  # aioquic's server sends the largest there is
    assert stats.mtu == quic_engine.INITIAL_PACKET_SIZE_IPV4
    assert stats.congestion_window == client._loss.congestion_window > 0
    # Nothing in flight on an idle connection: the window is not what limits it.
    assert stats.congestion_state == CONGESTION_APPLICATION_LIMITED


def test_packets_lost_on_the_wire_are_counted_by_trigger(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    assert isinstance(link.server, TunnelQuicConnection)
    stream_id = link.server.get_next_available_stream_id()
    link.server.send_stream_data(stream_id, bytes(200_000), end_stream=True)
    link.drop_to_client = True
    for _ in range(3):
        link.step()
    link.drop_to_client = False
    link.run(5.0)
    lost = link.server.counters.lost
    assert lost[LOSS_REORDERING] + lost[LOSS_TIME] > 0
    assert link.received[(True, stream_id)] == 200_000
    # A loss is a congestion event: the window was cut, and recovery ended since.
    assert link.server._loss._cc.ssthresh is not None


def test_duplicate_and_undecryptable_packets_are_counted_as_drops(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(server_config(pki, PostQuantum.PREFER)))
    link.handshake()
    link.run()
    assert isinstance(link.server, TunnelQuicConnection)
    client.send_ping(1)
    (datagram, _), *_ = client.datagrams_to_send(link.now)
    link.server.receive_datagram(datagram, CLIENT_ADDR, link.now)
    link.server.receive_datagram(datagram, CLIENT_ADDR, link.now)
    corrupt = datagram[:-1] + bytes([datagram[-1] ^ 0xFF])
    link.server.receive_datagram(corrupt, CLIENT_ADDR, link.now)
    assert link.server.counters.dropped == {
        ("1RTT", "duplicate"): len(datagram),
        ("1RTT", "payload_decrypt_error"): len(datagram),
    }


def test_a_handshake_packet_before_its_keys_is_dropped_as_key_unavailable(pki: Pki) -> None:
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    server = tunnel_server(server_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, server)
    # The server's first flight (Initial and Handshake packets) reaches the client without
    # the Initial: the Handshake keys are not known yet.
    flight = link.server.datagrams_to_send(link.now)
    held = [d for d, _ in flight if (d[0] & 0x30) == 0x20]  # long header, type Handshake
    for data in held:
        client.receive_datagram(data, SERVER_ADDR, link.now)
    dropped = client.counters.dropped
    assert held and sum(n for (kind, reason), n in dropped.items()) > 0
    assert {reason for _, reason in dropped} <= {"key_unavailable"}


def test_frame_labels_are_quic_gos_names() -> None:
    counts = [0] * FRAME_TYPE_SLOTS
    for frame_type in (0x02, 0x03, 0x08, 0x0F, 0x12, 0x13, 0x1C, 0x1D, 0x31):
        counts[frame_type] += 1
    assert frames_by_label(counts) == {
        "Ack": 2,
        "Stream": 2,
        "MaxStreams": 2,
        "ConnectionClose": 2,
        "Datagram": 1,
    }
    assert 0x00 not in FRAME_LABELS  # PADDING: quic-go reports none


def test_a_plain_aioquic_connection_still_works_with_the_noting_builder(pki: Pki) -> None:
    # aioquic's module builds packets with the frame-noting builder from now on (quic_engine).
    client = QuicConnection(configuration=plain_client_config(pki))
    link = Link.connect(client, plain_server(plain_server_config(pki)))
    link.handshake()


def test_a_connection_told_not_to_count_counts_no_frames(pki: Pki) -> None:
    # The edge's setting: the quic_client_* metrics are the connector's.
    config = server_config(pki, PostQuantum.PREFER)
    config.count_for_metrics = False
    client = TunnelQuicConnection(configuration=client_config(pki, PostQuantum.PREFER))
    link = Link.connect(client, tunnel_server(config))
    link.handshake()
    link.run()
    assert isinstance(link.server, TunnelQuicConnection)
    assert not any(link.server.counters.frames_sent)
    assert not any(link.server.counters.frames_received)
    assert any(client.counters.frames_received)
