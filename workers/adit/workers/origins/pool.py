"""Idle keep-alive connections to origins, per origin key, for one worker.

Mirrors Go's ``http.Transport`` idle pool as cloudflared configures it: at most
``keepAliveConnections`` idle connections per origin, each dropped once idle for longer than
``keepAliveTimeout``. Expiry is checked lazily on checkout and checkin against an injected
monotonic clock, so no timer task runs; the newest idle connection is reused first (LIFO).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from adit.workers.origins.dialer import OriginKey

__all__ = ["DEFAULT_MAX_IDLE", "ConnectionPool", "Poolable"]


class Poolable(Protocol):
    """What the pool needs of a connection (HTTP/1.1 or HTTP/2)."""

    @property
    def stale(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Poolable)

# Go uses DefaultMaxIdleConnsPerHost when MaxIdleConnsPerHost is 0.
DEFAULT_MAX_IDLE = 2


@dataclass(slots=True)
class _Idle(Generic[C]):
    connection: C
    expires_at: float


class ConnectionPool(Generic[C]):
    """Idle origin connections keyed by :class:`OriginKey`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._idle: dict[OriginKey, list[_Idle[C]]] = {}

    def checkout(self, key: OriginKey) -> C | None:
        """A live idle connection for ``key`` (removed from the pool), or ``None``."""
        entries = self._idle.get(key)
        now = self._clock()
        while entries:
            entry = entries.pop()
            if entry.expires_at > now and not entry.connection.stale:
                if not entries:
                    del self._idle[key]
                return entry.connection
            entry.connection.close()
        self._idle.pop(key, None)
        return None

    def checkin(
        self,
        key: OriginKey,
        connection: C,
        *,
        max_idle: int,
        idle_timeout: float,
    ) -> None:
        """Keep ``connection`` for reuse; the caller has checked it is reusable."""
        if max_idle <= 0:
            max_idle = DEFAULT_MAX_IDLE
        if idle_timeout <= 0 or connection.stale:
            connection.close()
            return
        now = self._clock()
        entries = self._idle.get(key)
        if entries is None:
            entries = self._idle[key] = []
        # Oldest first: the expired ones are at the front (one check per request, not a scan
        # of every idle connection).
        while entries and (entries[0].expires_at <= now or len(entries) >= max_idle):
            entries.pop(0).connection.close()
        entries.append(_Idle(connection, now + idle_timeout))

    def idle_count(self, key: OriginKey) -> int:
        """How many idle connections are held for ``key`` (expired ones included)."""
        return len(self._idle.get(key, ()))

    def close(self) -> None:
        """Close every idle connection."""
        for entries in self._idle.values():
            for entry in entries:
                entry.connection.close()
        self._idle.clear()
