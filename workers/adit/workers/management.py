"""The connector's management service: the internal rule for ``management.argotunnel.com``.

cloudflared serves it ahead of the user's ingress rules (``ingress.NewManagementRule``,
``management/service.go``): ``GET|HEAD /ping``, ``GET /host_details`` (``{"connector_id","ip",
"hostname"}``), ``GET /logs``, the WebSocket ``tail`` streams the connector's log over, and the
diagnostics ``GET /metrics`` (the supervisor's Prometheus text; Go's ``/debug/pprof`` has no
match here). Every path needs an ``access_token`` query parameter that parses as
cloudflared's ``ParseToken`` does: an ES256 JWS whose claims carry ``tun.id``,
``tun.account_tag`` and ``actor.id``. Its signature is the edge's to verify (cloudflared: "we
verify the token in the edge before it reaches cloudflared"); adit also refuses a token naming
another tunnel than its own.

The log stream carries the records of every process of the connector (supervisor and workers,
:mod:`adit.logs.live_stream`). Unlike cloudflared, which serves one streaming session at a time,
several ``tail`` clients may stream at once (up to :data:`MAX_SESSIONS` per worker), each with
its own filters; a slow one loses entries, counted, and never slows the connector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

from adit.logs.live_stream import METRICS_ADDRESS_FILE, LogSession, current_hub
from adit.protocol.management_logs import (
    STOP_STREAMING,
    InvalidManagementMessage,
    LogEntry,
    encode_logs,
    parse_client_event,
)
from adit.protocol.websocket import (
    CloseCode,
    Opcode,
    Role,
    WebSocketConnection,
    WebSocketError,
    accept_key,
)
from adit.workers.stream import ResponseSource, StreamKind, TunnelStream

__all__ = ["MANAGEMENT_HOSTNAME", "MAX_SESSIONS", "ManagementService"]

log = logging.getLogger("adit.workers.management")

#: The name the edge sends management requests under (cloudflared's default).
MANAGEMENT_HOSTNAME: Final = "management.argotunnel.com"
#: Log streams one worker serves at once.
MAX_SESSIONS: Final = 8
#: cloudflared's close codes and timers (management/service.go).
STATUS_INVALID_COMMAND: Final = 4001
STATUS_SESSION_LIMIT: Final = 4002
STATUS_IDLE_LIMIT: Final = 4003
IDLE_TIMEOUT: Final = 300.0
PING_INTERVAL: Final = 15.0
_READ_LIMIT: Final = 64 * 1024
#: ``/metrics``: how long the supervisor has to answer, and how much of it is relayed.
METRICS_TIMEOUT: Final = 10.0
METRICS_LIMIT: Final = 16 * 1024 * 1024
#: How long a ``/logs`` request waits for the worker's log hub (set up with its ipc).
HUB_WAIT: Final = 10.0

_MISSING_TOKEN = {
    "success": False,
    "errors": [{"code": 1001, "message": "missing access_token query parameter"}],
}


class TokenInvalid(Exception):
    """The ``access_token`` is missing or not a management token for this tunnel."""


def check_token(token: str, tunnel_id: uuid.UUID | None) -> str:
    """The actor of a management token, as cloudflared's ``ParseToken`` accepts it (and of
    this tunnel when ``tunnel_id`` is known); raises :class:`TokenInvalid`."""
    import jwt  # only when a management request comes: PyJWT is memory otherwise

    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid(f"malformed jwt: {exc}") from None
    if header.get("alg") != "ES256":
        raise TokenInvalid("malformed jwt: unexpected signature algorithm")
    tun = claims.get("tun")
    actor = claims.get("actor")
    if not (
        isinstance(tun, dict)
        and isinstance(tun.get("id"), str)
        and tun["id"]
        and isinstance(tun.get("account_tag"), str)
        and tun["account_tag"]
        and isinstance(actor, dict)
        and isinstance(actor.get("id"), str)
        and actor["id"]
    ):
        raise TokenInvalid("invalid management token format provided")
    if tunnel_id is not None and tun["id"] != str(tunnel_id):
        raise TokenInvalid("the management token is for another tunnel")
    return str(actor["id"])


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A writer or pinger that failed (the client went away): the reader ends the stream."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("management stream task ended: %r", task.exception())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _header(stream: TunnelStream, name: str) -> str:
    return next((v for n, v in stream.request.headers if n.lower() == name), "")


class ManagementService:
    """Answers the management hostname's streams for one worker."""

    def __init__(
        self,
        connector_id: uuid.UUID,
        tunnel_id: Callable[[], uuid.UUID | None],
        label: Callable[[], str] = lambda: "",
        *,
        diagnostics: Callable[[], bool] = lambda: True,
    ) -> None:
        self._connector_id = connector_id
        self._tunnel_id = tunnel_id
        self._label = label
        #: ``--management-diagnostics``: off, ``/metrics`` is 404 (cloudflared's service
        #: does not register the route).
        self._diagnostics = diagnostics
        self.sessions = 0
        #: Set when the worker drains: log streams end (they would hold the drain open).
        self._closing = asyncio.Event()

    def close_streams(self) -> None:
        """End every log stream now (``1001 going away``) and refuse new ones."""
        self._closing.set()

    async def serve(self, stream: TunnelStream) -> None:
        """Answer one management request; never raises."""
        try:
            await self._serve(stream)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                stream.reset()
            raise
        except Exception as exc:
            log.debug("management request ended: %r", exc)
            with contextlib.suppress(Exception):
                stream.reset()

    async def _serve(self, stream: TunnelStream) -> None:
        request = stream.request
        path, _, query = request.path.partition("?")
        tokens = parse_qs(query).get("access_token", [])
        try:
            if len(tokens) != 1:
                raise TokenInvalid("missing access_token query parameter")
            actor = check_token(tokens[0], self._tunnel_id())
        except TokenInvalid as exc:
            log.debug("management request refused: %s", exc)
            await self._json(stream, 400, _MISSING_TOKEN)
            return
        method = request.method
        if path == "/ping" and method in ("GET", "HEAD"):
            await stream.send_response(200, [], source=ResponseSource.ORIGIN, end_stream=True)
        elif path == "/host_details" and method == "GET":
            await self._json(stream, 200, self._host_details(stream))
        elif path == "/logs" and method == "GET":
            await self._logs(stream, actor)
        elif path == "/metrics" and method == "GET" and self._diagnostics():
            await self._metrics(stream)
        else:
            await stream.send_response(404, [], source=ResponseSource.ORIGIN, end_stream=True)

    async def _json(self, stream: TunnelStream, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        await stream.send_response(
            status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
            source=ResponseSource.ORIGIN,
            end_stream=True,
            body=data,
        )

    async def _metrics(self, stream: TunnelStream) -> None:
        """cloudflared's diagnostics ``/metrics`` (``--management-diagnostics``, on by
        default): the supervisor's Prometheus text, the same as its metrics server's."""
        hub = current_hub()
        try:
            if hub is None:
                raise OSError("the worker's ipc is not up yet")
            address = (hub.runtime_dir / METRICS_ADDRESS_FILE).read_text(encoding="ascii")
            status, content_type, body = await _fetch_metrics(address.strip())
        except (OSError, ValueError, TimeoutError) as exc:
            log.debug("management /metrics failed: %s", exc)
            await stream.send_response(502, [], source=ResponseSource.ORIGIN, end_stream=True)
            return
        await stream.send_response(
            status,
            [("Content-Type", content_type), ("Content-Length", str(len(body)))],
            source=ResponseSource.ORIGIN,
            end_stream=True,
            body=body,
        )

    def _host_details(self, stream: TunnelStream) -> dict[str, str]:
        details = {"connector_id": str(self._connector_id)}
        connection = getattr(stream, "connection", None)
        sockname = connection.local_sockname() if connection is not None else None
        if isinstance(sockname, tuple) and sockname:
            details["ip"] = str(sockname[0])
        label = self._label()
        details["hostname"] = f"custom:{label}" if label else socket.gethostname()
        return details

    async def _logs(self, stream: TunnelStream, actor: str) -> None:
        key = _header(stream, "sec-websocket-key")
        if stream.request.kind is not StreamKind.WEBSOCKET or not key:
            await stream.send_response(426, [], source=ResponseSource.ORIGIN, end_stream=True)
            return
        hub = current_hub()
        for _ in range(int(HUB_WAIT / 0.1)):
            if hub is not None:
                break
            # The worker opens its ipc just after its first registration: a tail that comes
            # at once waits for it (bounded) rather than fail.
            await asyncio.sleep(0.1)
            hub = current_hub()
        if hub is None:
            await stream.send_response(503, [], source=ResponseSource.ORIGIN, end_stream=True)
            return
        await stream.send_response(
            101,
            [
                ("Connection", "Upgrade"),
                ("Sec-Websocket-Accept", accept_key(key)),
                ("Upgrade", "websocket"),
            ],
            source=ResponseSource.ORIGIN,
        )
        ws = WebSocketConnection(Role.SERVER, max_frame=_READ_LIMIT)
        lock = asyncio.Lock()

        async def send(data: bytes) -> None:
            if data:
                async with lock:
                    await stream.write(data)

        if self.sessions >= MAX_SESSIONS or self._closing.is_set():
            await send(ws.send_close(STATUS_SESSION_LIMIT, "limit exceeded for streaming sessions"))
            await stream.end()
            return
        self.sessions += 1
        session: LogSession | None = None
        writer: asyncio.Task[None] | None = None
        pinger = asyncio.ensure_future(self._ping(ws, send))
        pinger.add_done_callback(_retrieve)
        reading: asyncio.Future[bytes | None] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(
                    self._next_message(stream, ws, send, idle=session is None)
                )
                # Retrieved here whatever ends this handler (cancelled with the stream, say,
                # while the client's reset is on its way): never a stray task error in the log.
                reading.add_done_callback(_retrieve)
                closing = asyncio.ensure_future(self._closing.wait())
                await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
                closing.cancel()
                if not reading.done():
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
                    await send(ws.send_close(CloseCode.GOING_AWAY, "the connector is stopping"))
                    return
                message = reading.result()
                if message is None:
                    return
                try:
                    event = parse_client_event(message)
                except InvalidManagementMessage as exc:
                    await send(ws.send_close(1003, str(exc)[:100]))
                    return
                if event.type == STOP_STREAMING:
                    if session is not None:
                        hub.remove(session)
                        session = None
                    if writer is not None:
                        writer.cancel()
                        writer = None
                    continue
                if session is not None:
                    hub.remove(session)
                if writer is not None:
                    writer.cancel()
                session = LogSession(event.filters)
                hub.add(session)
                log.debug("Streaming logs actor=%s", actor)
                writer = asyncio.ensure_future(self._write(session, ws, send))
                writer.add_done_callback(_retrieve)
        finally:
            self.sessions -= 1
            if session is not None:
                hub.remove(session)
            for task in (writer, pinger, reading):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(Exception):
                await send(ws.send_close(CloseCode.NORMAL, ""))
                await stream.end()

    async def _next_message(
        self,
        stream: TunnelStream,
        ws: WebSocketConnection,
        send: Callable[[bytes], Awaitable[None]],
        *,
        idle: bool,
    ) -> bytes | None:
        """The client's next whole text message; None when it closed, or idled too long
        before asking for logs (cloudflared's 4003)."""
        message = bytearray()
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT if idle else None):
                    data = await stream.read()
            except TimeoutError:
                await send(ws.send_close(STATUS_IDLE_LIMIT, "session was idle for too long"))
                return None
            if not data:
                return None
            try:
                frames = ws.receive(data)
            except WebSocketError:
                await send(ws.data_to_send())
                return None
            await send(ws.data_to_send())
            for frame in frames:
                if frame.opcode == Opcode.CLOSE:
                    return None
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
                    message += frame.payload
                    if len(message) > _READ_LIMIT:
                        return None
                    if frame.fin:
                        return bytes(message)

    async def _write(
        self, session: LogSession, ws: WebSocketConnection, send: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Entries to the client as they come; a slow client waits here alone."""
        while True:
            batch, dropped = await session.next_batch()
            if dropped:
                batch.insert(
                    0,
                    LogEntry(
                        time=batch[0].time if batch else _now(),
                        level="warn",
                        message=f"{dropped} log entries dropped: the tail client read too slowly",
                        event="cloudflared",
                        fields={"dropped": dropped},
                    ),
                )
            await send(ws.send_data(encode_logs(batch), opcode=Opcode.TEXT))

    async def _ping(
        self, ws: WebSocketConnection, send: Callable[[bytes], Awaitable[None]]
    ) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            await send(ws.send_ping(os.urandom(4)))


async def _fetch_metrics(address: str) -> tuple[int, str, bytes]:
    """GET /metrics from the supervisor's metrics server (bounded in time and size)."""
    import h11  # the metrics server's own HTTP/1.1 library; only when asked

    from adit.protocol.hostnames import split_address

    host, port = split_address(address)
    connection = h11.Connection(h11.CLIENT)
    async with asyncio.timeout(METRICS_TIMEOUT):
        reader, writer = await asyncio.open_connection(host.strip("[]"), port)
        try:
            request = h11.Request(
                method="GET", target="/metrics", headers=[("Host", address), ("Accept", "*/*")]
            )
            writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
            status, content_type, body = 0, "text/plain", bytearray()
            while True:
                try:
                    event = connection.next_event()
                except h11.ProtocolError as exc:
                    raise ValueError(f"the metrics server's answer: {exc}") from None
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(_READ_LIMIT))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        if name == b"content-type":
                            content_type = value.decode("latin-1")
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > METRICS_LIMIT:
                        raise ValueError("the metrics are too large to relay")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, content_type, bytes(body)
        finally:
            writer.close()
