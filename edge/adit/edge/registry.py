"""Which connections serve which tunnel: the one interface the request pipeline asks.

Today it answers from this process; later from sibling edge processes or other locations. The
management API reads it for ``tunnel info``/``list`` and asks it to close connections.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from adit.edge.config_push import ConfigPusher
from adit.edge.cooldown import Cooldowns
from adit.edge.tunnel_hold import TunnelHold

__all__ = ["ConnectionHandle", "ConnectionRegistry", "LiveConnection"]


class ConnectionHandle(Protocol):
    """The tunnel session behind a registered connection, as the registry needs it."""

    def close(self, reason: str) -> None:
        """Close the connection (GOAWAY, then the socket); the session removes itself."""

    def revalidate(self) -> bool:
        """Close the connection if its credentials are no longer accepted; True if it stays."""

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        """Push a remote configuration; the version the connector runs and its error."""

    @property
    def full(self) -> bool:
        """The connector takes no more streams on this connection now (its
        ``MAX_CONCURRENT_STREAMS``: cloudflared's is 250)."""


@dataclass(eq=False)
class LiveConnection:
    """A registered connector connection (cloudflared's API ``connections[]`` entry)."""

    tunnel_id: uuid.UUID
    account_tag: str
    connection_id: uuid.UUID
    client_id: uuid.UUID
    conn_index: int
    location: str
    origin_ip: str
    opened_at: datetime
    client_version: str
    arch: str
    features: tuple[str, ...]
    handle: ConnectionHandle = field(repr=False)
    #: The transport: ``http2`` or ``quic`` (UDP sessions need QUIC's datagrams).
    protocol: str = "http2"
    #: Set when the connector called unregisterConnection: no new requests are routed to it.
    draining: bool = False
    #: Cleared while the connector does not answer PINGs (frozen, or cut off): new requests
    #: go to the tunnel's other connections (see :meth:`ConnectionRegistry.pick`).
    responsive: bool = True
    #: The outcome of the latest configuration push to it
    #: (:class:`~adit.edge.config_push.PushOutcome`), None before any.
    config_push: object = None


class ConnectionRegistry:
    """Live connections by tunnel; picks one per request, round-robin over the live ones.

    The turn moves on once per event-loop iteration, not per request: the requests that
    arrive together go to one connection together (one TLS record and one read on each side
    instead of one per connection), and the next iteration's go to the next connection.
    """

    def __init__(self) -> None:
        #: Tunnels that flooded the edge, refused registration for a while.
        self.cooldowns = Cooldowns()
        #: Remote configuration pushes, one in flight per connection.
        self.config_pusher = ConfigPusher()
        self._by_tunnel: dict[uuid.UUID, list[LiveConnection]] = {}
        # The index of the next connection to try, per tunnel.
        self._turns: dict[uuid.UUID, int] = {}
        # The same for picks of one transport (:meth:`pick_over`), per tunnel.
        self._transport_turns: dict[uuid.UUID, int] = {}
        # This loop iteration's pick per tunnel (forgotten when the iteration ends).
        self._current: dict[uuid.UUID, LiveConnection] = {}
        self._turn_ends = False
        # Asked for once: get_running_loop costs a getpid system call each time.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: After a hand-over: requests for tunnels whose connectors are moving here wait.
        self.hold: TunnelHold | None = None

    def add(self, conn: LiveConnection) -> None:
        """Record a registered connection."""
        self._by_tunnel.setdefault(conn.tunnel_id, []).append(conn)
        if self.hold is not None:
            self.hold.connected(conn.tunnel_id)

    def remove(self, conn: LiveConnection) -> None:
        """Forget a connection (closed, or failed)."""
        if self._current.get(conn.tunnel_id) is conn:
            del self._current[conn.tunnel_id]
        conns = self._by_tunnel.get(conn.tunnel_id)
        if conns is None:
            return
        if conn in conns:
            conns.remove(conn)
        if not conns:
            del self._by_tunnel[conn.tunnel_id]
            self._turns.pop(conn.tunnel_id, None)
            self._transport_turns.pop(conn.tunnel_id, None)

    def connections(self, tunnel_id: uuid.UUID) -> list[LiveConnection]:
        """Every registered connection of a tunnel, draining ones included."""
        return list(self._by_tunnel.get(tunnel_id, ()))

    def all_connections(self) -> list[LiveConnection]:
        """Every registered connection of every tunnel."""
        return [c for conns in self._by_tunnel.values() for c in conns]

    def pick(self, tunnel_id: uuid.UUID) -> LiveConnection | None:
        """The next live (not draining) connection of a tunnel, or None when there is none.

        One that does not answer PINGs, or takes no more streams, is picked only when the
        tunnel has no other: a request it carries may still be answered if the connector was
        only slow, where refusing it would fail it for sure.
        """
        current = self._current.get(tunnel_id)
        if current is not None and _usable(current):
            return current
        conns = self._by_tunnel.get(tunnel_id)
        if not conns:
            return None
        # Asked once per request: walk from this tunnel's turn to the first live connection
        # (no list of the live ones built each time).
        count = len(conns)
        turn = self._turns.get(tunnel_id, 0)
        for step in range(count):
            conn = conns[(turn + step) % count]
            if _usable(conn):
                self._turns[tunnel_id] = (turn + step + 1) % count
                self._hold(tunnel_id, conn)
                return conn
        return next((conn for conn in conns if not conn.draining), None)

    def pick_over(self, tunnel_id: uuid.UUID, protocol: str) -> LiveConnection | None:
        """The next live connection of a tunnel over ``protocol`` (a UDP flow needs QUIC's
        datagrams), or None when the tunnel has none: round-robin like :meth:`pick`, with
        the same preference for connections that answer and have room. Flows open one at a
        time, not in bursts: no holding a pick for the loop iteration."""
        conns = [
            c
            for c in self._by_tunnel.get(tunnel_id, ())
            if c.protocol == protocol and not c.draining
        ]
        if not conns:
            return None
        turn = self._transport_turns.get(tunnel_id, 0)
        for step in range(len(conns)):
            conn = conns[(turn + step) % len(conns)]
            if _usable(conn):
                self._transport_turns[tunnel_id] = turn + step + 1
                return conn
        return conns[turn % len(conns)]

    def _hold(self, tunnel_id: uuid.UUID, conn: LiveConnection) -> None:
        """Pick ``conn`` again for this tunnel until the loop iteration ends."""
        if not self._turn_ends:
            loop = self._loop
            if loop is None or not loop.is_running():
                try:
                    loop = self._loop = asyncio.get_running_loop()
                except RuntimeError:
                    return  # no loop, no iterations: plain round-robin
            loop.call_soon(self._next_turn)
            self._turn_ends = True
        self._current[tunnel_id] = conn

    def _next_turn(self) -> None:
        self._turn_ends = False
        self._current.clear()

    def revalidate(self, tunnel_id: uuid.UUID) -> int:
        """Close the tunnel's connections whose credentials are no longer accepted (after a
        rotation changed, finished, or the tunnel was deleted); returns how many closed."""
        closed = 0
        for conn in list(self._by_tunnel.get(tunnel_id, ())):
            if not conn.handle.revalidate():
                self.remove(conn)
                closed += 1
        return closed

    def disconnect(self, tunnel_id: uuid.UUID, client_id: uuid.UUID | None = None) -> int:
        """Close the tunnel's connections (only one connector's when ``client_id`` is given)."""
        closing = [
            c
            for c in self._by_tunnel.get(tunnel_id, ())
            if client_id is None or c.client_id == client_id
        ]
        for conn in closing:
            conn.handle.close("connections cleaned up by the tunnel's owner")
            self.remove(conn)
        return len(closing)


def _usable(conn: LiveConnection) -> bool:
    """Whether a connection should get the next request: routable, answering, with room."""
    return not conn.draining and conn.responsive and not conn.handle.full
