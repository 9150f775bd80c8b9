"""The public listener: eyeball HTTP(S) requests, routed by Host to tunnels.

One seam per concern (DESIGN.md §3): parse (llhttp) → Access policy (none yet) → route
(hostname → tunnel) → pick a connection (the registry) → forward over the tunnel. Bodies are
streamed both ways; the socket's and the tunnel's back-pressure meet in the middle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from random import getrandbits

from adit.edge.header_policy import is_websocket_upgrade, tunnel_request_headers
from adit.edge.http1 import (
    BadRequest,
    HeadersTooLarge,
    Http1Connection,
    Request,
    ResponseError,
)
from adit.edge.pages import (
    BAD_REQUEST,
    HEADERS_TOO_LARGE,
    ORIGIN_FAILED,
    STREAM_FAILED,
    TUNNEL_DOWN,
    UNKNOWN_HOST,
    ErrorPage,
    origin_failure_page,
)
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store
from adit.edge.tunnel_session import RequestStream, TunnelSession
from adit.protocol.errors import BadRequestTarget, Http2TunnelError
from adit.protocol.headers import HOP_BY_HOP, RequestType, ResponseMeta
from adit.protocol.request_target import RequestTarget, normalize_target
from adit.tunnelio import StreamClosedError

log = logging.getLogger("adit.edge.public")

# An adit connector says why it answered 502 in the first line of a short plain-text body,
# "adit-origin-error: refused|timeout|tls", and more on the next lines; cloudflared's 502 has
# no body, which gets the generic page.
_ORIGIN_ERROR_PREFIX = b"adit-origin-error:"
_MAX_REASON = 2048
_REASON_WAIT = 2.0


class PublicListener:
    """Serves eyeball connections for every routed hostname."""

    def __init__(
        self, store: Store, registry: ConnectionRegistry, *, location: str, scheme: str
    ) -> None:
        self.store = store
        self.registry = registry
        self.location = location
        self.scheme = scheme
        self._ray_suffix = f"-{location}"

    def protocol(self) -> Http1Connection:
        """The protocol factory for ``loop.create_server``: one per eyeball connection."""
        return Http1Connection(self._handle, self._bad_request, self._fast)

    async def _bad_request(self, conn: Http1Connection, exc: BadRequest) -> None:
        page = HEADERS_TOO_LARGE if isinstance(exc, HeadersTooLarge) else BAD_REQUEST
        with contextlib.suppress(Exception):
            await self._page(conn, page, "-", self._ray(), keep_alive=False)

    def _ray(self) -> str:
        # An identifier for logs and error pages, not a secret: no system call per request.
        return f"{getrandbits(64):016x}{self._ray_suffix}"

    def _fast(self, conn: Http1Connection, request: Request) -> bool:
        """A bodiless request, from the connection's ``data_received``: forwarded at once,
        and answered from the tunnel's read when the whole response came in it (see
        :class:`_FastAnswer`). Anything unusual is left to :meth:`_handle` (returns False)."""
        if request.has_body or request.upgrade:
            return False
        try:
            target = _target(request)
        except BadRequestTarget:
            return False  # the task answers it
        authority = target.authority
        host = _strip_port(authority).lower()
        route = self.store.tunnel_for_hostname(host) if host else None
        if route is None:
            return False
        live = self.registry.pick(route[0])
        if live is None:
            return False
        session = live.handle
        assert isinstance(session, TunnelSession)
        ray = self._ray()
        answer = _FastAnswer(self, conn, host, ray)
        try:
            session.open_request(
                request.method.decode("ascii"),
                target.path,
                authority,
                tunnel_request_headers(request.headers, conn.client_ip, self.scheme, ray),
                request_type=RequestType.HTTP,
                end_stream=True,
                on_answer=answer.answered,
            )
        except (StreamClosedError, Http2TunnelError):
            return False
        return True

    async def _page(
        self,
        conn: Http1Connection,
        page: ErrorPage,
        host: str,
        ray: str,
        *,
        keep_alive: bool = True,
        note: str = "",
    ) -> None:
        extra: tuple[tuple[str, str], ...] = (("Cf-Ray", ray),)
        if not keep_alive:
            extra += (("Connection", "close"),)
        await conn.respond_simple(
            page.status,
            page.render(host, ray, note),
            content_type="text/html; charset=utf-8",
            extra=extra,
        )

    async def _handle(self, conn: Http1Connection, request: Request) -> bool:
        ray = self._ray()
        try:
            target = _target(request)
        except BadRequestTarget as exc:
            # Not one path of this host: nothing is forwarded, and what follows the head
            # (a CONNECT tunnel's bytes, a body) is not read as another request.
            await self._page(conn, BAD_REQUEST, "-", ray, keep_alive=False, note=str(exc))
            return False
        authority = target.authority
        host = _strip_port(authority).lower()
        route = self.store.tunnel_for_hostname(host) if host else None
        if route is None:
            await self._drain_body(conn)
            await self._page(conn, UNKNOWN_HOST, host or "-", ray)
            return True
        tunnel_id, _account = route
        live = self.registry.pick(tunnel_id)
        if live is None:
            await self._drain_body(conn)
            await self._page(conn, TUNNEL_DOWN, host, ray)
            return True
        session = live.handle
        assert isinstance(session, TunnelSession)

        headers = tunnel_request_headers(request.headers, conn.client_ip, self.scheme, ray)
        websocket = request.upgrade and is_websocket_upgrade(request.headers)
        has_body = request.has_body
        method = request.method.decode("ascii")
        try:
            stream = session.open_request(
                method,
                target.path,
                authority,
                headers,
                request_type=RequestType.WEBSOCKET if websocket else RequestType.HTTP,
                end_stream=not has_body and not websocket,
            )
        except (StreamClosedError, Http2TunnelError) as exc:
            log.warning("cannot open a stream to tunnel %s: %s", tunnel_id, exc)
            await self._drain_body(conn)
            await self._page(conn, STREAM_FAILED, host, ray)
            return True
        try:
            if websocket:
                await self._forward_websocket(conn, stream, host, ray)
                return False
            return await self._forward_http(conn, stream, host, ray, has_body)
        finally:
            session.finished(stream)

    async def _answer_later(
        self, conn: Http1Connection, stream: RequestStream, host: str, ray: str
    ) -> bool:
        """A fast request whose answer was not whole or not the origin's, in the task."""
        try:
            return await self._relay_response(conn, stream, host, ray, None)
        finally:
            stream.session.finished(stream)

    async def _forward_http(
        self, conn: Http1Connection, stream: RequestStream, host: str, ray: str, has_body: bool
    ) -> bool:
        uploader = None
        if has_body:
            uploader = asyncio.ensure_future(self._upload(conn, stream))
            # Its error matters only while we wait for it; after that it is the answer's.
            uploader.add_done_callback(_retrieve)
        try:
            return await self._relay_response(conn, stream, host, ray, uploader)
        finally:
            if uploader is not None:
                uploader.cancel()

    async def _relay_response(
        self,
        conn: Http1Connection,
        stream: RequestStream,
        host: str,
        ray: str,
        uploader: asyncio.Future[None] | None,
    ) -> bool:
        try:
            response = await stream.response()
        except StreamClosedError:
            await self._page(conn, STREAM_FAILED, host, ray, keep_alive=False)
            return False
        if response.meta is not ResponseMeta.ORIGIN:
            if uploader is not None:
                uploader.cancel()
            page, note = await _connector_failure(stream, response.end_stream)
            await self._page(conn, page, host, ray, keep_alive=uploader is None, note=note)
            return uploader is None
        headers = [*response.headers, ("Cf-Ray", ray)]
        # The head waits for body bytes that are already here (never for ones still to come:
        # a stream of events must show its head at once), and a chunk that is all the body
        # there is waits for the end: a small response leaves in one write.
        try:
            await conn.start_response(
                response.status, headers, drop=HOP_BY_HOP, flush=not stream.channel.ready
            )
            while True:
                chunk = await stream.channel.read()
                if not chunk:
                    break
                await conn.send_body(chunk, flush=not stream.channel.remote_ended)
            await conn.end_response()
        except (StreamClosedError, ResponseError):
            # The body broke after the status went out: all we can do is cut the connection.
            return False
        if uploader is not None:
            try:
                await uploader
            except (StreamClosedError, BadRequest):
                return False
        return True

    async def _upload(self, conn: Http1Connection, stream: RequestStream) -> None:
        """Eyeball request body → tunnel stream (the tunnel's back-pressure paces the reads)."""
        await conn.send_continue()
        try:
            while chunk := await conn.read_body():
                await stream.channel.write(chunk)
        except BadRequest:
            stream.channel.reset()
            raise
        stream.channel.end()

    async def _drain_body(self, conn: Http1Connection) -> None:
        """Read and discard a request body we answer without forwarding."""
        await conn.drain_body()

    async def _forward_websocket(
        self, conn: Http1Connection, stream: RequestStream, host: str, ray: str
    ) -> None:
        try:
            response = await stream.response()
        except StreamClosedError:
            await self._page(conn, STREAM_FAILED, host, ray, keep_alive=False)
            return
        if response.meta is not ResponseMeta.ORIGIN:
            page, note = await _connector_failure(stream, response.end_stream)
            await self._page(conn, page, host, ray, keep_alive=False, note=note)
            return
        if response.status not in (101, 200):
            # The origin refused the upgrade: pass its answer on as a plain response.
            await conn.start_response(response.status, response.headers, drop=HOP_BY_HOP)
            with contextlib.suppress(StreamClosedError):
                while chunk := await stream.channel.read():
                    await conn.send_body(chunk)
            await conn.end_response()
            return
        headers = [
            (n, v)
            for n, v in response.headers
            if n.lower() not in ("content-length", "transfer-encoding")
        ]
        await conn.send_informational(101, headers)
        await _pipe_raw(conn, stream, conn.take_leftover())


async def _pipe_raw(conn: Http1Connection, stream: RequestStream, leftover: bytes) -> None:
    """Bytes both ways after a WebSocket upgrade until either side ends."""

    async def upstream() -> None:
        if leftover:
            await stream.channel.write(leftover)
        while data := await conn.read_raw():
            await stream.channel.write(data)
        stream.channel.end()

    async def downstream() -> None:
        while data := await stream.channel.read():
            await conn.write_raw(data)

    up = asyncio.ensure_future(upstream())
    down = asyncio.ensure_future(downstream())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down in done:
            up.cancel()
        else:
            # The eyeball closed: give the origin's last bytes a moment, then stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(down), 5.0)
            down.cancel()
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(BaseException):
                await task
        stream.channel.reset()


class _FastAnswer:
    """Where a fast request's answer goes: the eyeball connection it came from."""

    __slots__ = ("conn", "host", "listener", "ray")

    def __init__(self, listener: PublicListener, conn: Http1Connection, host: str, ray: str):
        self.listener = listener
        self.conn = conn
        self.host = host
        self.ray = ray

    def answered(self, stream: RequestStream) -> None:
        """From the tunnel's read: write a whole response now, else leave it to the task."""
        conn = self.conn
        answer = stream.answer
        if not stream.complete or answer is None:
            conn.continue_async(self.listener._answer_later(conn, stream, self.host, self.ray))
            return
        keep_alive = False
        try:
            conn.respond_now(
                answer.status,
                answer.headers,
                stream.body,
                drop=HOP_BY_HOP,
                extra=(("Cf-Ray", self.ray),),
            )
            keep_alive = True
        except (ResponseError, ConnectionError):
            pass  # as in the task: all we can do is cut the connection
        except Exception:
            # Called from the tunnel's read: a bug here must cost this request, not the tunnel.
            log.exception("request handling failed")
        finally:
            stream.session.finished(stream)
            conn.finish_fast(keep_alive)


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _connector_failure(stream: RequestStream, ended: bool) -> tuple[ErrorPage, str]:
    """The page for a connector-made error response, and the reason text it sent, if any."""
    body = b""
    if not ended:
        with contextlib.suppress(StreamClosedError, TimeoutError):
            async with asyncio.timeout(_REASON_WAIT):
                while len(body) < _MAX_REASON and (chunk := await stream.channel.read()):
                    body += chunk
    stream.channel.reset()
    if not body.startswith(_ORIGIN_ERROR_PREFIX):
        return ORIGIN_FAILED, ""
    first, _, rest = body[:_MAX_REASON].partition(b"\n")
    reason = first[len(_ORIGIN_ERROR_PREFIX) :].decode("latin-1").strip()
    return origin_failure_page(reason), rest.decode("utf-8", "replace").strip()


def _target(request: Request) -> RequestTarget:
    """The target to route and forward: one normal path (raises :class:`BadRequestTarget`)."""
    return normalize_target(
        request.method.decode("ascii"),
        request.target.decode("latin-1"),
        request.host.decode("latin-1"),
    )


def _strip_port(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
