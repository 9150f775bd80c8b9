"""Hostname routes in memory: what the public listener asks once per request.

A :class:`RouteTable` is an immutable snapshot of the store's routes: exact names in one dict,
wildcard routes (``*.example.com``) in another, keyed by the suffix they cover. A lookup costs
one dict probe per label of the name (at most 127 for a valid hostname), never a query: the
store builds a new table off the event loop when routes change and swaps it in whole, so a
request sees either the old table or the new one (cloudflared's copy-on-write ingress).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from adit.edge.database import Database
from adit.edge.live_table import LiveTable

__all__ = ["ROUTES_COUNTER", "LiveRoutes", "Route", "RouteTable"]

_WILDCARD = "*."
#: The store's counter of route changes (a row of its ``counters`` table).
ROUTES_COUNTER = "routes"


class Route(NamedTuple):
    """Where a hostname goes: the tunnel and the account that owns the route."""

    tunnel_id: uuid.UUID
    account_tag: str


@dataclass(frozen=True)
class RouteTable:
    """Routes by normalised hostname; ``version`` is the store's route counter it was built
    from (a newer table never gives way to an older one)."""

    version: int = -1
    exact: Mapping[str, Route] = field(default_factory=dict)
    #: ``*.example.com`` is kept under ``example.com``.
    wildcard: Mapping[str, Route] = field(default_factory=dict)

    @classmethod
    def build(cls, version: int, routes: Iterable[tuple[str, Route]]) -> RouteTable:
        """A table of ``(hostname or *.pattern, route)`` pairs, names already normalised."""
        exact: dict[str, Route] = {}
        wildcard: dict[str, Route] = {}
        for name, route in routes:
            if name.startswith(_WILDCARD):
                wildcard[name[len(_WILDCARD) :]] = route
            else:
                exact[name] = route
        return cls(version, exact, wildcard)

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)

    def find(self, name: str) -> Route | None:
        """The route of normalised ``name``: its exact route, else the nearest wildcard
        (``*.example.com`` covers ``a.example.com`` and ``a.b.example.com``, not the apex)."""
        route = self.exact.get(name)
        if route is not None or not self.wildcard:
            return route
        dot = name.find(".")
        while dot >= 0:
            route = self.wildcard.get(name[dot + 1 :])
            if route is not None:
                return route
            dot = name.find(".", dot + 1)
        return None


def _load(db: sqlite3.Connection, version: int) -> RouteTable:
    rows = db.execute(
        "SELECT r.hostname, r.tunnel_id, r.account_tag FROM routes r JOIN tunnels t"
        " ON t.id = r.tunnel_id WHERE t.deleted_at IS NULL"
    ).fetchall()
    return RouteTable.build(
        version, ((host, Route(uuid.UUID(tid), tag)) for host, tid, tag in rows)
    )


class LiveRoutes(LiveTable[RouteTable]):
    """The current :class:`RouteTable` of a store's database (:class:`LiveTable`)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, ROUTES_COUNTER, _load, "routes")

    def find(self, name: str) -> Route | None:
        """The route of normalised ``name`` (the table is loaded on first use)."""
        return self.current().find(name)
