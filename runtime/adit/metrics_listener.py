"""The metrics HTTP listener: the connector's ``/metrics``, ``/ready``, ``/healthcheck``,
``/config`` and ``/quicktunnel`` (served by its supervisor), and the edge's ``/metrics`` (h11,
asyncio). Shared code of both, so neither imports the other.

Address logic is cloudflared's (``metrics.CreateMetricsListener``): the default ``localhost:0``
means the first free of ``127.0.0.1:20241``..``20245``, else a random port; any other address is
bound exactly and failing to bind is fatal. One request per connection, 10 s to send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from adit.protocol.hostnames import AddressError, split_address

# h11 is imported at the first request: the supervisor starts its workers without it.
if TYPE_CHECKING:
    import h11

__all__ = [
    "DEFAULT_METRICS_ADDRESS",
    "DEFAULT_METRICS_PORTS",
    "MetricsListenerError",
    "MetricsServer",
    "ScrapeCounter",
    "bind_metrics_socket",
    "format_address",
    "parse_listen_address",
]

log = logging.getLogger("adit.supervisor")

#: cloudflared's default ``--metrics``: the first free of :data:`DEFAULT_METRICS_PORTS`.
DEFAULT_METRICS_ADDRESS = "localhost:0"


class MetricsListenerError(Exception):
    """The metrics/readiness address cannot be bound (cloudflared: fatal at start)."""


class ScrapeCounter:
    """``promhttp_metric_handler_requests_{in_flight,total}`` of the metrics server.

    Scrapes are answered one at a time on the event loop, so the one in flight is the one
    being rendered; a scrape counts under its status once it was answered.
    """

    def __init__(self) -> None:
        self.by_code: dict[str, int] = {"200": 0, "500": 0, "503": 0}

    def answered(self, code: int) -> None:
        key = str(code)
        self.by_code[key] = self.by_code.get(key, 0) + 1

    def render(self) -> bytes:
        lines = [
            "# HELP promhttp_metric_handler_requests_in_flight Current number of scrapes being"
            " served.",
            "# TYPE promhttp_metric_handler_requests_in_flight gauge",
            "promhttp_metric_handler_requests_in_flight 1",
            "# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP"
            " status code.",
            "# TYPE promhttp_metric_handler_requests_total counter",
        ]
        lines += [
            f'promhttp_metric_handler_requests_total{{code="{code}"}} {count}'
            for code, count in sorted(self.by_code.items())
        ]
        return ("\n".join(lines) + "\n").encode()


DEFAULT_METRICS_PORTS = (20241, 20242, 20243, 20244, 20245)
_REQUEST_TIMEOUT = 10.0
_MAX_REQUEST = 65536

ReadyProvider = Callable[[], tuple[int, dict[str, object]]]
MetricsProvider = Callable[[], bytes]
#: An extra GET route: its content type and body (``/config``, ``/quicktunnel``,
#: ``diag_endpoints``).
RouteProvider = Callable[[], tuple[str, bytes]]


def parse_listen_address(address: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` into a host and a port (Go's ``SplitHostPort``)."""
    try:
        return split_address(address)
    except AddressError as exc:
        raise MetricsListenerError(f"Error opening metrics server listener: {exc}") from None


def _bind(host: str, port: int) -> socket.socket:
    if host in ("", "localhost"):
        # cloudflared binds localhost as 127.0.0.1 (and "" as every interface).
        host = "127.0.0.1" if host == "localhost" else "0.0.0.0"  # noqa: S104 - Go's ":port"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _name, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_metrics_socket(address: str) -> socket.socket:
    """A listening socket for ``--metrics address`` (see the module docstring)."""
    if address == DEFAULT_METRICS_ADDRESS:
        for port in DEFAULT_METRICS_PORTS:
            with contextlib.suppress(OSError):
                return _bind("localhost", port)
    host, port = parse_listen_address(address)
    try:
        return _bind(host, port)
    except OSError as exc:
        raise MetricsListenerError(
            f"Error opening metrics server listener: listen tcp {address}: {exc.strerror or exc}"
        ) from exc


def format_address(sock: socket.socket) -> str:
    """The bound ``host:port`` (IPv6 in brackets), as the startup log line shows it."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """Serves the endpoints from providers owned by the supervisor."""

    def __init__(
        self,
        ready: ReadyProvider,
        metrics: MetricsProvider,
        routes: Mapping[str, RouteProvider] | None = None,
    ) -> None:
        self._ready = ready
        self._metrics = metrics
        self._routes = dict(routes or {})
        self._scrapes = ScrapeCounter()
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        """Start accepting on ``sock``."""
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def close(self) -> None:
        """Stop accepting and wait (bounded) for the listener to close."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a request (no I/O; unit-testable)."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"Method Not Allowed\n"
        if path == "/ready":
            status, body = self._ready()
            payload = json.dumps(body, separators=(",", ":")).encode()
            return status, "text/plain; charset=utf-8", payload
        if path == "/healthcheck":
            return 200, "text/plain; charset=utf-8", b"OK\n"
        if path == "/metrics":
            try:
                scrape = self._metrics() + self._scrapes.render()
            except Exception as exc:
                # promhttp's answer to a failing collector (and the daemon stays up).
                log.exception("Failed to render /metrics")
                self._scrapes.answered(500)
                text = f"An error has occurred while serving metrics:\n\n{exc}\n"
                return 500, "text/plain; charset=utf-8", text.encode()
            self._scrapes.answered(200)
            return 200, "text/plain; version=0.0.4; charset=utf-8", scrape
        route = self._routes.get(path)
        if route is not None:
            try:
                content_type, payload = route()
            except Exception as exc:
                # cloudflared's words when /config's GetVersionedConfigJSON fails.
                log.exception("Failed to serve %s", path)
                return 500, "text/plain; charset=utf-8", f"ERR: {exc}".encode()
            return 200, content_type, payload
        return 404, "text/plain; charset=utf-8", b"404 page not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                request = await self._read_request(conn, reader)
                if request is None:
                    return
                method = request.method.decode("ascii", "replace")
                target = request.target.decode("ascii", "replace")
                status, content_type, body = self.respond(method, target)
                headers = [
                    ("content-type", content_type),
                    ("content-length", str(len(body))),
                    ("connection", "close"),
                ]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                if method != "HEAD":
                    writer.write(conn.send(h11.Data(data=body)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
        except (h11.ProtocolError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    @staticmethod
    async def _read_request(
        conn: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        import h11

        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_MAX_REQUEST))
                continue
            if isinstance(event, h11.Request):
                return event
            return None
