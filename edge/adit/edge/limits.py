"""How long an HTTP/1 connection may wait for each thing, and how many a listener takes.

Every wait of a public or API connection has a deadline (:class:`Deadline`): the connection
keeps one absolute deadline of its own, a float set when it starts to wait, and one periodic
sweep per listener (:class:`ConnectionTracker`) expires the ones that passed. No timer handle
or task is made per request or per wait: arming a deadline is two attribute stores.

The defaults are what a production edge ships (each is an ``adit edge`` flag):

* a request head must arrive within 10 s of the connection (or of its first byte, after an
  idle keep-alive wait), the figure HAProxy's examples give ``timeout http-request`` and CDN
  edges use (nginx's 60 s default dates from modems): a real client sends its head in one
  round trip, a slow-loris client holds a socket for no longer;
* a keep-alive connection may idle 400 s between requests, Cloudflare's figure for HTTP/1.1;
* a request body may stall (and a client may stop reading a response) for 30 s, Cloudflare's
  proxy write timeout (nginx allows 60 s), and must average 500 B/s, Apache mod_reqtimeout's
  ``MinRate``, so a client trickling a byte now and then cannot hold a request open either;
* the tunnel must answer (and, mid-response, send more) within 100 s, after which the
  visitor gets Cloudflare's 524 page;
* a listener takes 10,000 connections, one client address 256 of them: enough for the
  browsers behind a carrier NAT, few enough that one address cannot take the edge's
  descriptors (the packaged unit's ``LimitNOFILE=65536`` covers three full listeners).
"""

from __future__ import annotations

import asyncio
import enum
import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ConnectionTracker", "Deadline", "Limits", "Tracked"]


class Deadline(enum.IntEnum):
    """What a connection waits for, and so which limit applies (an index into
    :attr:`Limits.timeouts`)."""

    NONE = 0  # nothing of ours (an upgraded connection: both peers decide)
    IDLE = 1  # the next request on a keep-alive connection
    HEAD = 2  # the rest of a request head
    BODY = 3  # the request body, at the minimum rate
    SEND = 4  # the client to take response bytes
    RESPONSE = 5  # the tunnel (or a local handler) to answer or go on answering


@dataclass(frozen=True, slots=True)
class Limits:
    """Timeouts (seconds) and connection caps of one listener (see the module docstring)."""

    header_timeout: float = 10.0
    keepalive_timeout: float = 400.0
    body_timeout: float = 30.0
    #: Bytes per second a request body must average (0: only stalls count).
    body_min_rate: int = 500
    response_timeout: float = 100.0
    max_connections: int = 10_000
    max_connections_per_ip: int = 256

    @property
    def timeouts(self) -> tuple[float, ...]:
        """The timeout of each :class:`Deadline`, indexed by it."""
        return (
            math.inf,
            self.keepalive_timeout,
            self.header_timeout,
            self.body_timeout,
            self.body_timeout,
            self.response_timeout,
        )

    @property
    def sweep_interval(self) -> float:
        """How often the deadlines are checked: a second, finer for the small limits tests
        set (a deadline is met within one interval)."""
        return max(0.02, min(1.0, min(self.timeouts[1:]) / 4))


class Tracked(Protocol):
    """What the tracker needs of a connection."""

    #: The peer's address (connections are counted per address).
    client_ip: str
    #: When the current wait expires (loop time; ``math.inf`` when nothing is awaited).
    deadline: float

    def expire(self) -> None:
        """The deadline passed: act on it (answer, reset, close)."""

    def drain(self) -> None:
        """Close now if idle, else after the response in progress."""

    def abort(self) -> None:
        """Close at once."""


class ConnectionTracker:
    """The live connections of one listener: admission under the caps, the deadline sweep,
    and the drain at shutdown."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.timeouts = limits.timeouts
        self.draining = False
        self._connections: dict[Tracked, None] = {}  # insertion-ordered set
        self._per_ip: dict[str, int] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._emptied: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._connections)

    def admit(self, conn: Tracked) -> bool:
        """Count a new connection in; False (and not counted) when a cap is reached.

        While draining the listener is closed: what still comes was accepted before (its TLS
        handshake ended after) and is let in, to be drained itself.
        """
        if len(self._connections) >= self.limits.max_connections:
            return False
        ip = conn.client_ip
        count = self._per_ip.get(ip, 0)
        if count >= self.limits.max_connections_per_ip:
            return False
        self._per_ip[ip] = count + 1
        self._connections[conn] = None
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.limits.sweep_interval, self._sweep)
        return True

    def release(self, conn: Tracked) -> None:
        """A connection admitted before has closed."""
        if conn not in self._connections:
            return
        del self._connections[conn]
        ip = conn.client_ip
        count = self._per_ip[ip] - 1
        if count:
            self._per_ip[ip] = count
        else:
            del self._per_ip[ip]
        if not self._connections and self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired = [conn for conn in self._connections if conn.deadline <= now]
        for conn in expired:
            conn.expire()
        if self._connections:
            self._sweeper = loop.call_later(self.limits.sweep_interval, self._sweep)
        else:
            self._sweeper = None

    def drain(self) -> None:
        """Refuse new connections; let each live one end after its response in progress."""
        self.draining = True
        for conn in list(self._connections):
            conn.drain()

    def awaiting(self) -> int:
        """Connections a request is due on (new ones, or a head begun): while draining,
        requests that will still come."""
        return sum(1 for conn in self._connections if getattr(conn, "awaiting_request", False))

    async def wait_empty(self) -> None:
        """Until every connection has closed."""
        if not self._connections:
            return
        if self._emptied is None or self._emptied.done():
            self._emptied = asyncio.get_running_loop().create_future()
        await self._emptied

    def abort_all(self) -> None:
        """Close every connection at once."""
        for conn in list(self._connections):
            conn.abort()

    def close(self) -> None:
        """Stop the sweep (the listener is gone)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
