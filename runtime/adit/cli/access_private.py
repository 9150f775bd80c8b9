"""``adit access tcp|udp --destination IP:PORT`` (no ``--hostname``): private networks.

Cloudflare's users reach addresses behind a tunnel (``adit tunnel route ip add``) with the WARP
client; adit has none, so this is the client side. It asks the edge's API listener named in
cert.pem (``adit tunnel login`` wrote it) for a flow to ``IP:PORT`` with the account's API
token, trusting only the edge CA pinned in cert.pem, as the ``adit tunnel`` commands do; the
edge finds the account's route and carries the flow over the tunnel (see
:mod:`adit.edge.private_flows` for the endpoints and the wire convention).

* TCP: stdin/stdout carry one connection (ssh's ``ProxyCommand``), or ``--url`` listens and
  gives each accepted connection a flow of its own. The local side's end is sent as an empty
  message (the destination reads its end and may still answer); the edge's Close ends the
  flow, its reason printed when it is not a normal end.
* UDP: ``--listen`` binds a local UDP socket; each client address (a resolver's source port)
  gets a flow, one WebSocket message per datagram. A flow idle for ``--idle-timeout`` is
  closed, and past ``--max-flows`` the one idle longest makes room.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlencode, urlsplit

from adit.cli.access import (
    AccessError,
    EdgeTarget,
    HandshakeRefused,
    _LocalWriter,
    _split_host,
    _stdin_reader,
    open_websocket,
)
from adit.cli.access_frames import FrameSender, MessageTooLarge
from adit.cli.apiclient import ApiClient, ApiError
from adit.credentials import (
    CredentialsError,
    OriginCert,
    find_default_origin_cert,
    read_origin_cert,
)
from adit.credentials.search_path import ORIGIN_CERT_FILE, SEARCH_DIRECTORIES
from adit.protocol.cidr import InvalidDestination, parse_destination
from adit.protocol.hostnames import join_host_port
from adit.protocol.websocket import CloseCode, Opcode, Role, WebSocketConnection, WebSocketError
from adit.version import __version__

__all__ = [
    "FlowFailed",
    "PrivateAccount",
    "carry_private_tcp",
    "check_destination",
    "load_account",
    "private_target",
    "refusal_message",
    "resolve_vnet",
    "serve_private_tcp",
    "serve_udp",
]

log = logging.getLogger("adit.access")

_READ = 64 * 1024
_LOGIN = "run `adit tunnel login` first (or give --origincert)"
#: Datagrams that wait for a flow's WebSocket to open; more are dropped (UDP may lose them).
_PENDING = 256
#: How long a client address whose flow could not open has its datagrams dropped before the
#: next one tries again (a flood of datagrams costs one refused handshake per this long).
_RETRY_AFTER = 5.0
#: How long we wait for the edge's answer to our Close before the socket goes.
_CLOSE_WAIT = 5.0


class FlowFailed(AccessError):
    """The edge ended the flow with an error (its close code and reason)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        #: The edge's close code (0: the connection ended without one).
        self.code = code


@dataclass(frozen=True)
class PrivateAccount:
    """What a private flow needs from cert.pem: the API, its token, the account, the CA."""

    api_url: str
    api_token: str = field(repr=False)
    account_tag: str
    ca_pem: str = field(repr=False)

    def client(self) -> ApiClient:
        """The management API client (virtual network lookups)."""
        return ApiClient(self.api_url, self.api_token, self.account_tag, "", self.ca_pem)


def load_account(origincert: str | None, api_url: str | None) -> PrivateAccount:
    """cert.pem (given, or found where ``adit tunnel`` looks) as a :class:`PrivateAccount`;
    :class:`AccessError` saying what to do when there is none."""
    path = Path(os.path.expanduser(origincert)) if origincert else find_default_origin_cert()
    if path is None:
        raise AccessError(
            f"no origin certificate: no {ORIGIN_CERT_FILE} in {', '.join(SEARCH_DIRECTORIES)}; "
            + _LOGIN
        )
    if not path.is_file():
        raise AccessError(f"no origin certificate at {path}: {_LOGIN}")
    try:
        cert: OriginCert = read_origin_cert(path)
    except CredentialsError as exc:
        raise AccessError(f"cannot use the origin certificate {path}: {exc}; {_LOGIN}") from exc
    url = api_url or cert.api_url
    if not url or not cert.account_id:
        raise AccessError(
            f"the origin certificate {path} names no adit edge API or account "
            "(is it cloudflared's?): run `adit tunnel login` against your edge"
        )
    return PrivateAccount(url, cert.api_token, cert.account_id, cert.edge_ca_pem)


def resolve_vnet(account: PrivateAccount, ref: str) -> uuid.UUID:
    """``--vnet``: a virtual network ID, else the account's one live network of that name."""
    with contextlib.suppress(ValueError):
        return uuid.UUID(ref)
    if not ref:
        raise AccessError("--vnet needs a virtual network's name or ID")
    try:
        found = account.client().list_vnets({"is_deleted": "false", "name": ref})
    except ApiError as exc:
        raise AccessError(f"cannot look up virtual network {ref!r}: {exc}") from exc
    if len(found) != 1:
        raise AccessError(
            f"no virtual network named {ref!r} (adit tunnel vnet list)"
            if not found
            else f"{len(found)} virtual networks are named {ref!r}: give its ID"
        )
    return uuid.UUID(str(found[0].get("id")))


def check_destination(destination: str) -> None:
    """:class:`AccessError` unless ``destination`` is ``IP:PORT`` (the edge's own parser)."""
    try:
        parse_destination(destination)
    except InvalidDestination as exc:
        raise AccessError(str(exc)) from None


def private_target(
    account: PrivateAccount, kind: str, destination: str, vnet_id: uuid.UUID | None
) -> tuple[EdgeTarget, list[tuple[str, str]]]:
    """Where the flow's WebSocket goes and its headers (``destination`` checked as
    :func:`check_destination` does)."""
    try:
        address, port = parse_destination(destination)
    except InvalidDestination as exc:
        raise AccessError(str(exc)) from None
    parts = urlsplit(account.api_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise AccessError(f"the API URL {account.api_url!r} is not https://host:port")
    tls = parts.scheme == "https"
    host, api_port = _split_host(parts.netloc.rpartition("@")[2], 443 if tls else 80)
    base = parts.path.rstrip("/")
    if not base.endswith("/client/v4"):
        base += "/client/v4"
    query = {"destination": join_host_port(str(address), port)}
    if vnet_id is not None:
        query["virtual_network_id"] = str(vnet_id)
    path = f"{base}/accounts/{account.account_tag}/private/{kind}?{urlencode(query)}"
    bracketed = f"[{host}]" if ":" in host else host
    default_port = 443 if tls else 80
    host_header = bracketed if api_port == default_port else f"{bracketed}:{api_port}"
    target = EdgeTarget(
        host_header,
        path,
        host,
        api_port,
        tls,
        host,
        ca_pem=account.ca_pem,
        ca_source=ORIGIN_CERT_FILE,
    )
    headers = [
        ("Authorization", f"Bearer {account.api_token}"),
        ("User-Agent", f"adit/{__version__}"),
    ]
    return target, headers


def refusal_message(exc: HandshakeRefused) -> str:
    """What the edge said when it refused the flow, for a person to act on."""
    detail = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError, IndexError):
        detail = str(json.loads(exc.body)["errors"][0]["message"])
    if exc.status in (401, 403):
        return (
            f"the edge refused the API token in cert.pem ({exc.status}"
            f"{': ' + detail if detail else ''}): run `adit tunnel login` again"
        )
    return f"{detail} ({exc.status})" if detail else str(exc)


async def _open(
    target: EdgeTarget, headers: list[tuple[str, str]]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    try:
        return await open_websocket(target, headers)
    except HandshakeRefused as exc:
        raise AccessError(refusal_message(exc)) from None


def _closed_with(ws: WebSocketConnection, payload: bytes) -> FlowFailed | None:
    """None for a normal end (1000, or no code), else the error the edge's Close tells."""
    code = ws.close_code
    if code in (None, CloseCode.NORMAL, CloseCode.NO_STATUS):
        return None
    reason = payload[2:].decode("utf-8", "replace") or "no reason given"
    return FlowFailed(f"the flow ended: {reason} (close {code})", code)


# -- TCP --------------------------------------------------------------------------------------


async def carry_private_tcp(
    local_reader: asyncio.StreamReader,
    local_write: Callable[[bytes], Awaitable[None]],
    target: EdgeTarget,
    headers: list[tuple[str, str]],
) -> None:
    """One local connection ↔ one private flow, until the edge ends it (or the local side
    goes away). Raises :class:`FlowFailed` when the edge ended it with an error."""
    reader, writer, rest = await _open(target, headers)
    ws = WebSocketConnection(Role.CLIENT)
    sender = FrameSender(writer, ws)

    async def up() -> None:
        while data := await local_reader.read(_READ):
            await sender.send_stream(data)
        # Our end: the destination reads it and may still answer; the edge's Close ends all.
        await sender.send_message(b"")
        await asyncio.Future()  # only ``down`` ends the flow from here

    async def down() -> FlowFailed | None:
        data = rest
        while True:
            if data:
                try:
                    frames = ws.receive(data)
                finally:
                    await sender.flush()
                for frame in frames:
                    if frame.opcode in (Opcode.BINARY, Opcode.CONTINUATION):
                        await local_write(frame.payload)
                    elif frame.opcode == Opcode.CLOSE:
                        return _closed_with(ws, frame.payload)
            data = await reader.read(_READ)
            if not data:
                return FlowFailed("the edge closed the connection without a word")

    up_task = asyncio.ensure_future(up())
    down_task = asyncio.ensure_future(down())
    try:
        done, _ = await asyncio.wait({up_task, down_task}, return_when=asyncio.FIRST_COMPLETED)
        if up_task in done and up_task.exception() is not None:
            # The local side broke (reset): the flow goes with it.
            with contextlib.suppress(WebSocketError, OSError):
                await sender.send_close(CloseCode.GOING_AWAY, "the local connection failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({down_task}, timeout=_CLOSE_WAIT)
            return
        try:
            failure = down_task.result()
        except (WebSocketError, OSError) as exc:
            failure = FlowFailed(f"the connection to the edge failed: {exc}")
        if failure is not None:
            raise failure
    finally:
        for task in (up_task, down_task):
            task.cancel()
        for task in (up_task, down_task):
            with contextlib.suppress(BaseException):
                await task
        writer.close()


async def serve_private_tcp(
    listen: str | None, target: EdgeTarget, headers: list[tuple[str, str]]
) -> None:
    """stdin/stdout as one flow (``listen`` None), or a local listener, a flow a connection."""
    if listen is None:
        await carry_private_tcp(await _stdin_reader(), _LocalWriter(None), target, headers)
        return
    raw = listen if "://" in listen else f"tcp://{listen}"
    host, port = _split_host(urlsplit(raw).netloc, 0)
    if not port:
        raise AccessError(f"{listen}: a port is required (--url)")

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await carry_private_tcp(reader, _LocalWriter(writer), target, headers)
        except AccessError as exc:
            log.error("%s", exc.message)
        except (OSError, WebSocketError) as exc:
            log.error("private flow failed: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(accepted, host or "localhost", port)
    log.info("Start private TCP listener host=%s", join_host_port(host or "localhost", port))
    async with server:
        await server.serve_forever()


# -- UDP --------------------------------------------------------------------------------------

Address = tuple[str, int]


class _UdpFlow:
    """One client address's flow: its WebSocket, and the datagrams waiting for it."""

    def __init__(self, relay: _UdpRelay, peer: Address) -> None:
        self.relay = relay
        self.peer = peer
        self.pending: collections.deque[bytes] = collections.deque()
        self.wake = asyncio.Event()
        self.last = asyncio.get_running_loop().time()
        #: Set to make room for another address's flow: this one closes now.
        self.evicted = asyncio.Event()
        #: The flow could not open: its datagrams are dropped until it is forgotten.
        self.failed = False
        self.task: asyncio.Task[None] = asyncio.ensure_future(self._run())

    def push(self, datagram: bytes) -> None:
        if self.failed or len(self.pending) >= _PENDING:
            self.relay.dropped += 1
            return
        self.pending.append(datagram)
        self.wake.set()

    async def _run(self) -> None:
        try:
            await self._carry()
        except FlowFailed as exc:
            if exc.code == CloseCode.GOING_AWAY:
                # Idle at the edge or the connector, or the edge restarting: the client's next
                # datagram opens another flow.
                log.info("UDP flow for %s: %s", join_host_port(*self.peer), exc.message)
            else:
                self._failed(exc.message)
        except AccessError as exc:
            self._failed(exc.message)
        except (OSError, WebSocketError) as exc:
            self._failed(str(exc))
        finally:
            self.pending.clear()
            if not self.failed:
                self.relay.forget(self)

    def _failed(self, reason: str) -> None:
        log.error("UDP flow for %s: %s", join_host_port(*self.peer), reason)
        self.failed = True
        asyncio.get_running_loop().call_later(_RETRY_AFTER, self.relay.forget, self)

    async def _carry(self) -> None:
        relay = self.relay
        reader, writer, rest = await _open(relay.target, relay.headers)
        log.info("UDP flow for %s opened", join_host_port(*self.peer))
        ws = WebSocketConnection(Role.CLIENT, max_frame=65_535)
        sender = FrameSender(writer, ws)

        async def up() -> None:
            while True:
                while self.pending:
                    datagram = self.pending.popleft()
                    try:
                        await sender.send_message(datagram)
                    except MessageTooLarge as exc:
                        # The tunnel's datagrams are far smaller: it would be dropped there.
                        relay.dropped += 1
                        log.warning("UDP flow for %s: dropped: %s", join_host_port(*self.peer), exc)
                self.wake.clear()
                await self.wake.wait()

        async def down() -> FlowFailed | None:
            data = rest
            message = bytearray()
            while True:
                if data:
                    try:
                        frames = ws.receive(data)
                    finally:
                        await sender.flush()
                    for frame in frames:
                        if frame.opcode in (Opcode.BINARY, Opcode.CONTINUATION):
                            message += frame.payload
                            if frame.fin:
                                self.last = asyncio.get_running_loop().time()
                                relay.send_to(bytes(message), self.peer)
                                message.clear()
                        elif frame.opcode == Opcode.CLOSE:
                            return _closed_with(ws, frame.payload)
                data = await reader.read(_READ)
                if not data:
                    return FlowFailed("the edge closed the connection without a word")

        up_task = asyncio.ensure_future(up())
        down_task = asyncio.ensure_future(down())
        idle = asyncio.ensure_future(self._idle())
        try:
            await asyncio.wait({up_task, down_task, idle}, return_when=asyncio.FIRST_COMPLETED)
            if down_task.done():
                failure = down_task.result()
                if failure is not None:
                    raise failure
                return
            if up_task.done():
                up_task.result()
            # Idle (or evicted): we end the flow, and wait a moment for the edge's answer.
            why = "evicted for another client" if self.evicted.is_set() else "idle"
            # Out of the table before the closing handshake: the address's next datagram
            # opens another flow instead of going to this one.
            self.relay.forget(self)
            log.info("UDP flow for %s closed: %s", join_host_port(*self.peer), why)
            with contextlib.suppress(OSError):
                await sender.send_close(CloseCode.NORMAL, why)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({down_task}, timeout=_CLOSE_WAIT)
        finally:
            for task in (up_task, down_task, idle):
                task.cancel()
            for task in (up_task, down_task, idle):
                with contextlib.suppress(BaseException):
                    await task
            writer.close()

    async def _idle(self) -> None:
        """Returns once no datagram moved for the idle timeout, or the flow is evicted."""
        loop = asyncio.get_running_loop()
        timeout = self.relay.idle_timeout
        while (left := self.last + timeout - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.evicted.wait()
                    return

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()


class _UdpRelay(asyncio.DatagramProtocol):
    """The local UDP socket: datagrams to and from each client address's flow."""

    def __init__(
        self,
        target: EdgeTarget,
        headers: list[tuple[str, str]],
        idle_timeout: float,
        max_flows: int,
    ) -> None:
        self.target = target
        self.headers = headers
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.flows: dict[Address, _UdpFlow] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio's classes, only alike.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        peer = (str(addr[0]), int(addr[1]))
        flow = self.flows.get(peer)
        if flow is None:
            self._make_room()
            flow = self.flows[peer] = _UdpFlow(self, peer)
        flow.touch()
        flow.push(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP from a client gone away: its flow idles out.
        log.debug("UDP listener: %s", exc)

    def _make_room(self) -> None:
        live = [f for f in self.flows.values() if not f.failed and not f.evicted.is_set()]
        if len(live) >= self.max_flows:
            min(live, key=lambda f: f.last).evicted.set()  # the one idle longest closes

    def forget(self, flow: _UdpFlow) -> None:
        if self.flows.get(flow.peer) is flow:
            del self.flows[flow.peer]

    def send_to(self, datagram: bytes, peer: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(datagram, peer)

    async def close(self) -> None:
        flows = list(self.flows.values())
        for flow in flows:
            flow.task.cancel()
        for flow in flows:
            with contextlib.suppress(BaseException):
                await flow.task
        if self.transport is not None:
            self.transport.close()


async def serve_udp(
    listen: str,
    target: EdgeTarget,
    headers: list[tuple[str, str]],
    *,
    idle_timeout: float,
    max_flows: int,
) -> None:
    """Relay the local UDP socket ``listen`` through private flows until cancelled."""
    raw = listen if "://" in listen else f"udp://{listen}"
    host, port = _split_host(urlsplit(raw).netloc, 0)
    if not port:
        raise AccessError(f"{listen}: a port is required (--listen)")
    loop = asyncio.get_running_loop()
    try:
        _, relay = await loop.create_datagram_endpoint(
            lambda: _UdpRelay(target, headers, idle_timeout, max_flows),
            local_addr=(host or "127.0.0.1", port),
        )
    except OSError as exc:
        raise AccessError(f"cannot listen on {listen}: {exc}") from exc
    log.info("Start private UDP listener host=%s", join_host_port(host or "127.0.0.1", port))
    try:
        await asyncio.Future()
    finally:
        await relay.close()
