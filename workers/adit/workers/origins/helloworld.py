"""The built-in ``hello_world`` origin (cloudflared's ``hello/hello.go``).

A tiny HTTPS server on ``127.0.0.1:<random>`` with a certificate generated at start, started
lazily by the first request for it. Routes: ``/`` (an HTML page showing the request),
``/uptime`` (JSON), ``/ws`` (WebSocket echo), ``/sse`` (an event every ``?freq=`` duration,
default 10s, until the client leaves) and ``/_health`` (``ok``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import html
import json
import logging
import re
import socket
import time
from urllib.parse import parse_qs, urlsplit

import h11

from adit.protocol.websocket import (
    FrameDecoder,
    Opcode,
    WebSocketError,
    accept_key,
    encode_frame,
)

__all__ = ["DEFAULT_SSE_INTERVAL", "HelloWorldOrigin", "go_duration", "parse_go_duration"]

DEFAULT_SSE_INTERVAL = 10.0
_READ_SIZE = 64 * 1024
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>adit tunnel connection</title>
    <meta name="description" content="adit tunnel connection">
  </head>
  <body>
    <h1>Congrats! You created a tunnel!</h1>
    <p>adit exposes locally running applications to the internet by running an encrypted,
    outbound-only tunnel from your laptop or server to an adit edge (a self-hostable,
    Cloudflare-Tunnel-compatible one).</p>
    <p>Served by {server}.</p>
    <section>
      <h4>Request</h4>
      <dl>
{details}
      </dl>
    </section>
  </body>
</html>
"""


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go duration string (``"10ms"``, ``"1m30s"``), or ``None`` if invalid."""
    if not text or _DURATION_PART.sub("", text) != "":
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String`` for a non-negative duration (``1m2.5s``, ``1.5ms``)."""
    if seconds < 1:
        for unit, scale in (("ms", 1e-3), ("µs", 1e-6)):
            if seconds >= scale:
                return f"{seconds / scale:.6g}{unit}"
        return f"{round(seconds / 1e-9)}ns"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


class HelloWorldOrigin:
    """The lazily started test origin; one per worker."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] = ("127.0.0.1", 0)
        self._started_wall = datetime.datetime.now(datetime.UTC)
        self._started = time.monotonic()
        self._server_name = socket.gethostname() or "the adit test server"
        self._clients: set[asyncio.Task[object]] = set()

    async def address(self) -> tuple[str, int]:
        """``(host, port)`` of the running server, starting it on first use."""
        async with self._lock:
            if self._server is None:
                await self._start()
        return self._address

    async def _start(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        # Imported here: cryptography is ~9 MiB in every worker that never serves hello_world.
        from adit.workers.origins.certificate import self_signed_server_context

        context = self_signed_server_context("hello-world.adit.invalid", now)
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=context)
        host, port = server.sockets[0].getsockname()[:2]
        self._server, self._address = server, (host, port)
        self._started_wall, self._started = now, time.monotonic()
        self._log.info("Starting Hello World server at %s:%d", host, port)

    async def aclose(self) -> None:
        """Stop listening and drop open client connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await _Session(self, reader, writer).run()
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass  # a client going away mid-request is routine for a test server
        except asyncio.CancelledError:
            # aclose() cancels open clients. Ending quietly here matters: asyncio reads a
            # connection callback's outcome with task.exception(), which logs a traceback
            # for a cancelled task.
            return
        finally:
            self._clients.discard(task)
            writer.close()

    def uptime_json(self) -> bytes:
        """The ``/uptime`` body: ``{"startTime": ..., "uptime": ...}``."""
        start = self._started_wall.isoformat().replace("+00:00", "Z")
        uptime = go_duration(time.monotonic() - self._started)
        return json.dumps({"startTime": start, "uptime": uptime}).encode()

    def page(self, request: h11.Request, body: bytes, peer: str) -> bytes:
        """The ``/`` page: cloudflared's request echo."""
        headers: dict[str, list[str]] = {}
        host = ""
        for name, value in request.headers.raw_items():
            key, text = name.decode("latin-1"), value.decode("latin-1")
            if key.lower() == "host":
                host = text
                continue
            headers.setdefault(key, []).append(text)
        lines = [
            f"Method: {request.method.decode()}",
            f"Protocol: HTTP/{request.http_version.decode()}",
            f"Request URL: {request.target.decode('latin-1')}",
            f"Host: {host}",
            f"Remote address: {peer}",
            f"Request URI: {request.target.decode('latin-1')}",
            *(f"Header: {k}, Value: [{' '.join(v)}]" for k, v in sorted(headers.items())),
            f"Body: {body.decode('utf-8', 'replace')}",
        ]
        details = "\n".join(f"        <dd>{html.escape(line)}</dd>" for line in lines)
        return _PAGE.format(server=html.escape(self._server_name), details=details).encode()


class _Session:
    """One client connection: sequential requests until close or a protocol switch."""

    def __init__(
        self, origin: HelloWorldOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._origin = origin
        self._reader = reader
        self._writer = writer
        self._conn = h11.Connection(our_role=h11.SERVER)
        peer = writer.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def run(self) -> None:
        while True:
            request = await self._next_event()
            if not isinstance(request, h11.Request):
                return
            body = bytearray()
            while isinstance(event := await self._next_event(), h11.Data):
                body += event.data
            path = urlsplit(request.target.decode("latin-1")).path
            if path == "/ws":
                await self._websocket(request)
                return
            if path == "/sse":
                await self._sse(request)
                return
            await self._route(path, request, bytes(body))
            if self._conn.our_state is not h11.DONE or self._conn.their_state is not h11.DONE:
                return
            self._conn.start_next_cycle()

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._reader.read(_READ_SIZE))
                continue
            if event is h11.PAUSED:
                return h11.PAUSED
            assert isinstance(event, h11.Event)
            return event

    async def _send(self, *events: h11.Event) -> None:
        for event in events:
            data = self._conn.send(event)
            if data:
                self._writer.write(data)
        await self._writer.drain()

    async def _respond(self, status: int, content_type: str, body: bytes) -> None:
        headers = [("Content-Length", str(len(body)))]
        if content_type:
            headers.insert(0, ("Content-Type", content_type))
        await self._send(
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )

    async def _route(self, path: str, request: h11.Request, body: bytes) -> None:
        if path == "/uptime":
            await self._respond(200, "application/json", self._origin.uptime_json())
        elif path == "/_health":
            await self._respond(200, "text/plain; charset=utf-8", b"ok")
        else:
            page = self._origin.page(request, body, self._peer)
            await self._respond(200, "text/html; charset=utf-8", page)

    async def _sse(self, request: h11.Request) -> None:
        query = parse_qs(urlsplit(request.target.decode("latin-1")).query)
        interval = DEFAULT_SSE_INTERVAL
        if "freq" in query:
            interval = parse_go_duration(query["freq"][0]) or DEFAULT_SSE_INTERVAL
        await self._send(
            h11.Response(
                status_code=200, headers=[("Content-Type", "text/event-stream; charset=utf-8")]
            )
        )
        counter = 0
        # Unbounded by design (as cloudflared's): it ends when the client goes away.
        while not self._writer.is_closing():
            await asyncio.sleep(interval)
            await self._send(h11.Data(data=f"{counter}\n\n".encode()))
            counter += 1

    async def _websocket(self, request: h11.Request) -> None:
        key = ""
        upgrade = ""
        for name, value in request.headers:
            if name == b"sec-websocket-key":
                key = value.decode("latin-1")
            elif name == b"upgrade":
                upgrade = value.decode("latin-1").lower()
        if upgrade != "websocket" or not key:
            await self._respond(400, "text/plain; charset=utf-8", b"Bad Request\n")
            return
        await self._send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Accept", accept_key(key)),
                ],
            )
        )
        frames = FrameDecoder(expect_masked=True)
        message = bytearray()
        message_opcode = Opcode.TEXT
        pending = bytes(self._conn.trailing_data[0])
        while True:
            data = pending or await self._reader.read(_READ_SIZE)
            pending = b""
            if not data:
                return
            try:
                received = frames.feed(data)
            except WebSocketError:
                return  # a broken client: the echo just ends
            for frame in received:
                if frame.opcode == Opcode.CLOSE:
                    self._writer.write(encode_frame(Opcode.CLOSE, frame.payload[:2]))
                    await self._writer.drain()
                    return
                if frame.opcode == Opcode.PING:
                    self._writer.write(encode_frame(Opcode.PONG, frame.payload))
                elif frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
                    if frame.opcode != Opcode.CONTINUATION:
                        message_opcode = Opcode(frame.opcode)
                        message.clear()
                    message += frame.payload
                    if frame.fin:
                        self._writer.write(encode_frame(message_opcode, bytes(message)))
                        message.clear()
            await self._writer.drain()
