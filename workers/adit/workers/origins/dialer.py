"""Opening connections to origins: TCP or unix socket, then optional TLS.

``connectTimeout`` bounds the connect and ``tlsTimeout`` the handshake, separately, as Go's
``net.Dialer.Timeout`` and ``http.Transport.TLSHandshakeTimeout`` do in cloudflared.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from adit.config.origin import OriginOptions
from adit.workers.errors import OriginConnectTimeout, OriginTLSError, OriginUnreachable
from adit.workers.origins.tls import ClientContexts

__all__ = ["HAPPY_EYEBALLS_DELAY", "READ_LIMIT", "Dialer", "OriginKey"]

# Go's net.Dialer FallbackDelay default: how long IPv6 gets before IPv4 races it.
HAPPY_EYEBALLS_DELAY = 0.3
READ_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class OriginKey:
    """Everything that makes two origin connections interchangeable (the pool key)."""

    host: str  # TCP host; "" for unix sockets
    port: int
    unix_path: str = ""
    tls: bool = False
    server_name: str = ""  # SNI and verification name when ``tls``
    ca_pool: str = ""
    no_tls_verify: bool = False

    def describe(self) -> str:
        """Where this key points, for log lines."""
        scheme = "https" if self.tls else "http"
        if self.unix_path:
            return f"{'unix+tls' if self.tls else 'unix'}:{self.unix_path}"
        return f"{scheme}://{self.host}:{self.port}"


class Dialer:
    """Opens connections for an :class:`OriginKey` under a rule's :class:`OriginOptions`."""

    def __init__(self) -> None:
        self._contexts = ClientContexts()

    async def dial(
        self, key: OriginKey, options: OriginOptions
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect (and handshake); raises :class:`OriginUnreachable` or a subclass."""
        reader, writer = await self._connect(key, options)
        if not key.tls:
            return reader, writer
        try:
            context = self._contexts.get(key.ca_pool, key.no_tls_verify)
        except (OSError, ssl.SSLError) as exc:
            writer.close()
            raise OriginTLSError(f"cannot load caPool {key.ca_pool!r}: {exc}") from exc
        try:
            async with asyncio.timeout(options.tls_timeout):
                await writer.start_tls(
                    context,
                    server_hostname=key.server_name or None,
                    ssl_handshake_timeout=options.tls_timeout,
                )
        except TimeoutError as exc:
            writer.close()
            raise OriginTLSError(f"TLS handshake timeout after {options.tls_timeout:g}s") from exc
        except (OSError, ssl.SSLError) as exc:
            writer.close()
            raise OriginTLSError(f"TLS handshake with {key.describe()} failed: {exc}") from exc
        return reader, writer

    async def _connect(
        self, key: OriginKey, options: OriginOptions
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(options.connect_timeout):
                if key.unix_path:
                    return await asyncio.open_unix_connection(key.unix_path, limit=READ_LIMIT)
                reader, writer = await _open_tcp(key.host, key.port, options.no_happy_eyeballs)
        except TimeoutError as exc:
            raise OriginConnectTimeout(
                f"dial {key.describe()}: i/o timeout after {options.connect_timeout:g}s"
            ) from exc
        except OSError as exc:
            raise OriginUnreachable(f"dial {key.describe()}: {exc}") from exc
        _set_keepalive(writer, options.tcp_keep_alive)
        return reader, writer


def _set_keepalive(writer: asyncio.StreamWriter, period: float) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None or period <= 0 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    seconds = max(1, int(period))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # Go sets both the idle time and the probe interval to the keep-alive period.
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
    if hasattr(socket, "TCP_KEEPINTVL"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, seconds)


async def _open_tcp(
    host: str, port: int, no_happy_eyeballs: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if not no_happy_eyeballs:
        try:
            return await asyncio.open_connection(
                host, port, limit=READ_LIMIT, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY
            )
        except TypeError:
            # uvloop's create_connection has no Happy Eyeballs: it tries the resolved
            # addresses one after the other instead.
            pass
    return await asyncio.open_connection(host, port, limit=READ_LIMIT)
