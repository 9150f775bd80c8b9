"""The private flow endpoints (``adit.edge.private_flows``) over a real store and registry.

Admission is checked request by request (each refusal's status and words, in the order the
module docstring gives); carrying runs a real ``Http1Connection`` over a stand-in transport,
a client WebSocket written by the test, and a stand-in tunnel stream, so every way a flow
ends is seen from the client's side: the destination's close, the connector's 502, a text
message, the idle deadline, the edge shutting down, the client's half-close and its Close;
and for UDP, a message a datagram each way, the connector's end and refusal, drops counted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from adit.edge.http1 import Http1Connection, Request
from adit.edge.limits import ConnectionTracker, Limits
from adit.edge.private_flows import MAX_MESSAGE, FlowLimits, OpensUdp, PrivateFlows, flow_path
from adit.edge.quic_listener import QuicTunnelSession
from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import Store
from adit.edge.tunnel_session import EdgeIdentity, RequestStream, TunnelSession
from adit.edge.udp_flows import UdpFlow, UdpFlowClosed, UdpFlowError
from adit.protocol.cidr import IPAddress
from adit.protocol.headers import RequestType, ResponseMeta
from adit.protocol.http2 import ResponseReceived
from adit.protocol.websocket import Frame, Opcode, Role, WebSocketConnection, encode_frame
from adit.tunnelio import StreamClosedError
from asynctests import uvloop_test

KEY = base64.b64encode(b"0123456789abcdef").decode()


# -- a store with one account, its token, a tunnel and a route ----------------------------------


class World:
    def __init__(self, tmp: Path) -> None:
        self.store = Store.open_in(tmp / "state")
        self.account = self.store.create_account("acme").tag
        self.token = self.store.create_api_token(self.account).token
        self.tunnel = self.store.create_tunnel(self.account, "t").id
        self.store.private.add_route(self.account, "10.1.0.0/16", self.tunnel)
        self.registry = ConnectionRegistry()
        self.sessions: list[_Session] = []

    def connect(self, protocol: str = "http2") -> _Session:
        """A live connection of the tunnel, over ``protocol``."""
        session = _Session(self)
        live = LiveConnection(
            tunnel_id=self.tunnel,
            account_tag=self.account,
            connection_id=uuid.uuid4(),
            client_id=uuid.uuid4(),
            conn_index=len(self.sessions),
            location="tst",
            origin_ip="127.0.0.1",
            opened_at=datetime.datetime.now(datetime.UTC),
            client_version="test",
            arch="test",
            features=(),
            handle=session,
            protocol=protocol,
        )
        session.live = live
        self.registry.add(live)
        self.sessions.append(session)
        return session

    def flows(self, limits: FlowLimits | None = None) -> PrivateFlows:
        def authenticate(headers: list[tuple[bytes, bytes]]) -> str:
            from adit.edge.api import EdgeInfo, ManagementApi

            api = ManagementApi(self.store, self.registry, EdgeInfo((), ""))
            return api.authenticate(headers)

        return PrivateFlows(self.store, self.registry, authenticate, limits, location="tst")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.store.close()


# -- stand-ins: the tunnel stream, its session, the client's transport ---------------------------


class _Channel:
    def __init__(self) -> None:
        self.received = bytearray()
        self.ended = False
        self.inbound: asyncio.Queue[bytes | StreamClosedError] = asyncio.Queue()
        self.wrote = asyncio.Event()
        self.stream_id = 1

    async def read(self) -> bytes:
        item = await self.inbound.get()
        if isinstance(item, StreamClosedError):
            raise item
        return item

    async def write(self, data: bytes) -> None:
        self.received += data
        self.wrote.set()

    def end(self) -> None:
        self.ended = True
        self.wrote.set()


class _Stream:
    def __init__(self, session: _Session) -> None:
        self.session = session
        self.channel = _Channel()
        self.answer: asyncio.Future[ResponseReceived] = asyncio.get_running_loop().create_future()

    async def response(self) -> ResponseReceived:
        return await self.answer

    def connect(self) -> None:
        self.answer.set_result(ResponseReceived(1, 200, (), ResponseMeta.ORIGIN, False))

    def refuse(self, reason: bytes) -> None:
        self.answer.set_result(ResponseReceived(1, 502, (), ResponseMeta.CONNECTOR, False))
        self.channel.inbound.put_nowait(reason)
        self.channel.inbound.put_nowait(b"")


class _Session(TunnelSession):
    """A tunnel connection that records the streams opened on it."""

    def __init__(self, world: World) -> None:
        super().__init__(world.store, world.registry, EdgeIdentity("tst"))
        self.opened: list[tuple[str, str, RequestType]] = []
        self.streams: list[_Stream] = []
        self.finished_streams: list[_Stream] = []

    def open_request(  # type: ignore[override]  # the stand-in's stream, not a RequestStream
        self,
        method: str,
        path: str,
        authority: str,
        headers: list[tuple[str, str]],
        *,
        request_type: RequestType,
        end_stream: bool,
    ) -> RequestStream:
        self.opened.append((method, authority, request_type))
        stream = _Stream(self)
        self.streams.append(stream)
        return cast(RequestStream, stream)

    def finished(self, request: RequestStream) -> None:
        self.finished_streams.append(cast(_Stream, request))


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.protocol: Http1Connection | None = None
        self.written = asyncio.Event()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("192.0.2.7", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out += data
        self.written.set()

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Client:
    """The client end: a connection to the API listener, its upgrade request, a WebSocket."""

    def __init__(self, flows: PrivateFlows) -> None:
        self.flows = flows
        tracker = ConnectionTracker(Limits())
        self.conn = Http1Connection(self._handle, self._error, tracker=tracker)
        self.transport = _Transport()
        self.transport.protocol = self.conn
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.ws = WebSocketConnection(Role.CLIENT)
        self.read = 0
        self.pending: list[Frame] = []
        self.served: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def _handle(self, conn: Http1Connection, request: Request) -> bool:
        named = flow_path(request.target)
        assert named is not None
        keep = await self.flows.serve(conn, request, *named)
        self.served.set_result(keep)
        return keep

    async def _error(self, conn: Http1Connection, exc: Exception) -> None:
        raise AssertionError(f"bad request: {exc}")

    def ask(self, target: str, headers: list[tuple[str, str]]) -> None:
        lines = [f"GET {target} HTTP/1.1", "Host: localhost", *(f"{n}: {v}" for n, v in headers)]
        self.conn.data_received(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def answer(self) -> tuple[int, dict[str, object]]:
        """A refusal: its status and JSON body (the connection closes after it)."""
        await asyncio.wait_for(self.served, 10)
        head, _, body = bytes(self.transport.out).partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), json.loads(body)

    async def upgraded(self) -> None:
        while b"\r\n\r\n" not in self.transport.out:
            self.transport.written.clear()
            await asyncio.wait_for(self.transport.written.wait(), 10)
        head, _, _ = bytes(self.transport.out).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        self.read = len(head) + 4

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    async def frames(self, count: int = 1) -> list[Frame]:
        """The next ``count`` frames from the edge."""
        while len(self.pending) < count:
            fresh = bytes(self.transport.out[self.read :])
            self.read = len(self.transport.out)
            if fresh:
                self.pending += self.ws.receive(fresh)
                continue
            self.transport.written.clear()
            await asyncio.wait_for(self.transport.written.wait(), 10)
        got, self.pending = self.pending[:count], self.pending[count:]
        return got

    async def closed_with(self) -> tuple[int, str]:
        (frame,) = await self.frames()
        assert frame.opcode == Opcode.CLOSE, frame
        return struct.unpack("!H", frame.payload[:2])[0], frame.payload[2:].decode()


def _headers(world: World, *, token: str | None = None) -> list[tuple[str, str]]:
    return [
        ("Authorization", f"Bearer {token if token is not None else world.token}"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ]


def _target(world: World, kind: str = "tcp", query: str = "destination=10.1.2.3:22") -> str:
    return f"/client/v4/accounts/{world.account}/private/{kind}?{query}"


# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "found"),
    [
        (b"/client/v4/accounts/abc/private/tcp?destination=1.2.3.4:5", ("abc", "tcp")),
        (b"/accounts/abc/private/udp", ("abc", "udp")),
        (b"/client/v4/accounts/abc/private/icmp", None),
        (b"/client/v4/accounts/abc/private/tcp/extra", None),
        (b"/client/v4/accounts/abc/cfd_tunnel", None),
        (b"/client/v4/zones/abc/private/tcp", None),
    ],
)
def test_flow_paths_are_told_from_the_rest_of_the_api(
    target: bytes, found: tuple[str, str] | None
) -> None:
    assert flow_path(target) == found


# -- admission --------------------------------------------------------------------------------


async def _refusal(
    flows: PrivateFlows, target: str, headers: list[tuple[str, str]]
) -> tuple[int, str]:
    client = Client(flows)
    client.ask(target, headers)
    status, body = await client.answer()
    assert client.transport.closed or b"Connection: close" in client.transport.out
    errors = cast(list[dict[str, object]], body["errors"])
    return status, str(errors[0]["message"])


@uvloop_test
async def test_each_refusal_says_why_in_cloudflares_envelope(world: World) -> None:
    flows = world.flows()
    good = _headers(world)
    assert await _refusal(flows, _target(world), _headers(world, token="adit.x.y")) == (
        401,
        "Authentication error",
    )
    other = world.store.create_account("other")
    assert (await _refusal(flows, f"/accounts/{other.tag}/private/tcp?x=1", good))[0] == 403
    plain = [h for h in good if h[0] not in ("Connection", "Upgrade")]
    assert (await _refusal(flows, _target(world), plain))[0] == 426
    assert await _refusal(flows, _target(world, query=""), good) == (
        400,
        "destination is required: IP:PORT",
    )
    status, message = await _refusal(flows, _target(world, query="destination=db.corp:22"), good)
    assert status == 400 and "names are not resolved" in message
    status, message = await _refusal(
        flows, _target(world, query="destination=10.1.2.3:22&virtual_network_id=nope"), good
    )
    assert status == 400 and "virtual_network_id" in message
    status, message = await _refusal(flows, _target(world, query="destination=10.2.0.1:22"), good)
    assert status == 404
    assert message.startswith("no route for 10.2.0.1 in virtual network default (")
    vnet = uuid.uuid4()
    assert await _refusal(
        flows, _target(world, query=f"destination=10.1.2.3:22&virtual_network_id={vnet}"), good
    ) == (404, f"no route for 10.1.2.3 in virtual network {vnet}")
    status, message = await _refusal(flows, _target(world), good)
    assert status == 503 and "is down" in message
    world.connect("http2")
    status, message = await _refusal(flows, _target(world, "udp"), good)
    assert status == 503 and "no QUIC connection" in message and "--protocol quic" in message


@uvloop_test
async def test_another_accounts_routes_are_invisible(world: World) -> None:
    other = world.store.create_account("other")
    token = world.store.create_api_token(other.tag).token
    world.connect()
    status, message = await _refusal(
        world.flows(),
        f"/client/v4/accounts/{other.tag}/private/tcp?destination=10.1.2.3:22",
        _headers(world, token=token),
    )
    assert status == 404 and message.startswith("no route for 10.1.2.3")


# -- carrying TCP -----------------------------------------------------------------------------


async def _open(world: World, flows: PrivateFlows) -> tuple[Client, _Stream]:
    session = world.sessions[0] if world.sessions else world.connect()
    client = Client(flows)
    client.ask(_target(world), _headers(world))
    await client.upgraded()
    assert session.opened[-1] == ("CONNECT", "10.1.2.3:22", RequestType.TCP)
    return client, session.streams[-1]


@uvloop_test
async def test_bytes_both_ways_the_clients_end_passed_on_and_the_destinations_close(
    world: World,
) -> None:
    flows = world.flows()
    client, stream = await _open(world, flows)
    # The client speaks before the connector answered: its bytes go out with the connect.
    client.send(client.ws.send_data(b"SSH-2.0-client\r\n"))
    await asyncio.wait_for(stream.channel.wrote.wait(), 10)
    assert bytes(stream.channel.received) == b"SSH-2.0-client\r\n"
    assert flows.active(world.account) == 1
    stream.connect()
    big = bytes(range(256)) * 160  # 40 KiB: three messages of 16 KiB at most
    stream.channel.inbound.put_nowait(big)
    frames = await client.frames(3)
    assert [len(f.payload) for f in frames] == [
        MAX_MESSAGE,
        MAX_MESSAGE,
        len(big) - 2 * MAX_MESSAGE,
    ]
    assert b"".join(f.payload for f in frames) == big
    client.send(client.ws.send_data(b""))  # the client's end of input
    while not stream.channel.ended:
        stream.channel.wrote.clear()
        await asyncio.wait_for(stream.channel.wrote.wait(), 10)
    stream.channel.inbound.put_nowait(b"last words")
    stream.channel.inbound.put_nowait(b"")
    (last,) = await client.frames()
    assert last.payload == b"last words"
    assert await client.closed_with() == (1000, "the destination closed the connection")
    client.send(client.ws.send_close(1000))
    assert await asyncio.wait_for(client.served, 10) is False
    assert world.sessions[0].finished_streams == [stream]
    assert flows.active(world.account) == 0


@uvloop_test
async def test_a_connector_that_cannot_reach_the_destination_closes_with_its_reason(
    world: World,
) -> None:
    client, stream = await _open(world, world.flows())
    stream.refuse(b"adit-origin-error: refused\ndial tcp 10.1.2.3:22: connection refused\nhint\n")
    code, reason = await client.closed_with()
    assert (code, reason) == (
        1014,
        "cannot reach 10.1.2.3:22: dial tcp 10.1.2.3:22: connection refused",
    )


@uvloop_test
async def test_cloudflareds_quic_reason_is_passed_on_as_it_is(world: World) -> None:
    client, stream = await _open(world, world.flows())
    stream.refuse(b"dial tcp 10.1.2.3:22: i/o timeout")
    assert await client.closed_with() == (
        1014,
        "cannot reach 10.1.2.3:22: dial tcp 10.1.2.3:22: i/o timeout",
    )


@uvloop_test
async def test_a_text_message_is_refused_with_1003(world: World) -> None:
    client, stream = await _open(world, world.flows())
    stream.connect()
    client.send(client.ws.send_data(b"hi", opcode=Opcode.TEXT))
    code, _ = await client.closed_with()
    assert code == 1003


@uvloop_test
async def test_a_broken_tunnel_stream_closes_with_1011(world: World) -> None:
    client, stream = await _open(world, world.flows())
    stream.connect()
    stream.channel.inbound.put_nowait(StreamClosedError("the tunnel connection closed"))
    code, reason = await client.closed_with()
    assert code == 1011 and "the tunnel connection closed" in reason


@uvloop_test
async def test_an_idle_flow_is_closed_with_1001(world: World) -> None:
    client, stream = await _open(world, world.flows(FlowLimits(tcp_idle_timeout=0.05)))
    stream.connect()
    assert await client.closed_with() == (1001, "idle for 0.05s")


@uvloop_test
async def test_the_edge_shutting_down_ends_every_flow(world: World) -> None:
    flows = world.flows()
    client, stream = await _open(world, flows)
    stream.connect()
    flows.drain()
    assert await client.closed_with() == (1001, "the edge is shutting down")


@uvloop_test
async def test_the_clients_close_ends_the_flow_at_once(world: World) -> None:
    flows = world.flows()
    client, stream = await _open(world, flows)
    stream.connect()
    client.send(client.ws.send_close(1000))
    assert await asyncio.wait_for(client.served, 10) is False
    assert await client.closed_with() == (1000, "")  # the edge's answer to it
    assert client.ws.closed
    assert world.sessions[0].finished_streams == [stream]


@uvloop_test
async def test_the_accounts_cap_counts_open_flows(world: World) -> None:
    flows = world.flows(FlowLimits(max_per_account=1))
    client, stream = await _open(world, flows)
    status, message = await _refusal(flows, _target(world), _headers(world))
    assert status == 429 and "limit" in message
    stream.connect()
    stream.channel.inbound.put_nowait(b"")
    await client.closed_with()
    client.send(client.ws.send_close(1000))
    await asyncio.wait_for(client.served, 10)
    await _open(world, flows)  # room again


@uvloop_test
async def test_a_reason_longer_than_a_close_frame_holds_keeps_its_innermost_part(
    world: World,
) -> None:
    client, stream = await _open(world, world.flows())
    stream.refuse(
        b"unable to dial tcp to origin 10.1.2.3:22: dial tcp 10.1.2.3:22: connect: "
        b"connection refused (and a long tail the log keeps: " + b"x" * 100 + b"): "
        b"connection refused"
    )
    assert await client.closed_with() == (1014, "cannot reach 10.1.2.3:22: connection refused")


# -- carrying UDP -----------------------------------------------------------------------------

#: QUIC tunnel connections are what UDP flows open on (checked by mypy, structurally).
_QUIC_OPENS_UDP: type[OpensUdp] = QuicTunnelSession


class _UdpFlow:
    """A UDP flow through the connector, in memory."""

    def __init__(self) -> None:
        self.session_id = uuid.uuid4()
        self.sent: list[bytes] = []
        self.refuse_sends = False
        self.inbound: asyncio.Queue[bytes | UdpFlowClosed] = asyncio.Queue()
        self.closed_with: str | None = None

    def send(self, payload: bytes) -> bool:
        if self.refuse_sends:
            return False
        self.sent.append(payload)
        return True

    async def receive(self) -> bytes:
        item = await self.inbound.get()
        if isinstance(item, UdpFlowClosed):
            raise item
        return item

    def close(self, reason: str = "") -> None:
        self.closed_with = reason

    @property
    def closed(self) -> bool:
        return self.closed_with is not None


class _QuicSession(_Session):
    """A QUIC tunnel connection: it opens UDP flows (or refuses with a reason)."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.udp_opened: list[tuple[str, int, float]] = []
        self.udp_flows: list[_UdpFlow] = []
        self.refusal: str | None = None

    async def open_udp(
        self, address: IPAddress, port: int, *, idle_timeout: float = 210.0
    ) -> UdpFlow:
        if self.refusal is not None:
            raise UdpFlowError(self.refusal)
        self.udp_opened.append((str(address), port, idle_timeout))
        flow = _UdpFlow()
        self.udp_flows.append(flow)
        return cast(UdpFlow, flow)


def _quic(world: World) -> _QuicSession:
    session = _QuicSession(world)
    live = LiveConnection(
        tunnel_id=world.tunnel,
        account_tag=world.account,
        connection_id=uuid.uuid4(),
        client_id=uuid.uuid4(),
        conn_index=0,
        location="tst",
        origin_ip="127.0.0.1",
        opened_at=datetime.datetime.now(datetime.UTC),
        client_version="test",
        arch="test",
        features=(),
        handle=session,
        protocol="quic",
    )
    session.live = live
    world.registry.add(live)
    world.sessions.append(session)
    return session


async def _open_udp(world: World, flows: PrivateFlows) -> tuple[Client, _UdpFlow]:
    session = _quic(world)
    client = Client(flows)
    client.ask(_target(world, "udp", "destination=10.1.2.53:53"), _headers(world))
    await client.upgraded()
    assert session.udp_opened == [("10.1.2.53", 53, 210.0)]
    return client, session.udp_flows[0]


@uvloop_test
async def test_a_message_is_a_datagram_both_ways(world: World) -> None:
    client, udp = await _open_udp(world, world.flows())
    client.send(client.ws.send_data(b"query one") + client.ws.send_data(b""))
    # A message in two frames is one datagram.
    client.send(
        encode_frame(Opcode.BINARY, b"query ", fin=False, mask=b"abcd")
        + encode_frame(Opcode.CONTINUATION, b"two", mask=b"efgh")
    )
    for _ in range(1000):  # the connection's task takes them in a few loop turns
        if len(udp.sent) == 3:
            break
        await asyncio.sleep(0)
    assert udp.sent == [b"query one", b"", b"query two"]
    for answer in (b"answer one", b"answer two"):
        udp.inbound.put_nowait(answer)
    assert [f.payload for f in await client.frames(2)] == [b"answer one", b"answer two"]
    client.send(client.ws.send_close(1000))
    assert await asyncio.wait_for(client.served, 10) is False
    assert udp.closed_with == "the client closed the flow"


@uvloop_test
async def test_the_connector_ending_the_flow_closes_with_its_reason(world: World) -> None:
    client, udp = await _open_udp(world, world.flows())
    udp.inbound.put_nowait(UdpFlowClosed("session idle for 3m30s"))
    assert await client.closed_with() == (1001, "the UDP flow ended: session idle for 3m30s")


@uvloop_test
async def test_a_message_larger_than_any_datagram_is_refused_with_1009(world: World) -> None:
    client, udp = await _open_udp(world, world.flows())
    piece = b"x" * 40_000
    client.send(
        encode_frame(Opcode.BINARY, piece, fin=False, mask=b"abcd")
        + encode_frame(Opcode.CONTINUATION, piece, mask=b"abcd")
    )
    code, reason = await client.closed_with()
    assert code == 1009 and "65507" in reason
    assert udp.sent == []


@uvloop_test
async def test_datagrams_the_tunnel_drops_are_counted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "adit.edge.private")
    client, udp = await _open_udp(world, world.flows())
    udp.refuse_sends = True
    client.send(client.ws.send_data(b"lost") + client.ws.send_close(1000))
    await asyncio.wait_for(client.served, 10)
    (closed,) = [r.getMessage() for r in caplog.records if "private flow closed" in r.getMessage()]
    assert "proto=udp" in closed and "datagrams up=1 down=0 dropped=1" in closed


@uvloop_test
async def test_a_flow_the_connector_cannot_open_is_a_502_with_its_reason(world: World) -> None:
    session = _quic(world)
    session.refusal = "the connector does not proxy UDP"
    client = Client(world.flows())
    client.ask(_target(world, "udp", "destination=10.1.2.53:53"), _headers(world))
    status, body = await client.answer()
    errors = cast(list[dict[str, object]], body["errors"])
    assert status == 502
    assert errors[0]["message"] == (
        "the connector opened no UDP flow to 10.1.2.53:53: the connector does not proxy UDP"
    )
