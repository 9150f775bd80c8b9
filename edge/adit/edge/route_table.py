"""Hostname routes in memory: what the public listener asks once per request.

A :class:`RouteTable` is an immutable snapshot of the store's routes: exact names in one dict,
wildcard routes (``*.example.com``) in another, keyed by the suffix they cover. A lookup costs
one dict probe per label of the name (at most 127 for a valid hostname), never a query: the
store builds a new table off the event loop when routes change and swaps it in whole, so a
request sees either the old table or the new one (cloudflared's copy-on-write ingress).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from adit.edge.database import Database
from adit.edge.errors import StoreError

__all__ = ["ROUTES_COUNTER", "LiveRoutes", "Route", "RouteTable"]

log = logging.getLogger("adit.edge.routes")

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


class LiveRoutes:
    """The current :class:`RouteTable` of a store's database, and its upkeep.

    Lookups read one attribute; tables are built by the thread that changed routes (right
    after its commit), by the watcher thread, or at start, and swapped in whole.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._table: RouteTable | None = None
        # Orders swaps (a newer table never gives way to an older one); taken by the threads
        # that build tables, never by a lookup.
        self._swap = threading.Lock()
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    def find(self, name: str) -> Route | None:
        """The route of normalised ``name`` (the table is loaded on first use)."""
        table = self._table
        if table is None:
            table = self.reload()
        return table.find(name)

    def changed(self) -> None:
        """This process committed a route change: rebuild now, if a table is in use (a CLI
        that only writes never builds one)."""
        if self._table is not None:
            self.reload()

    def refresh(self) -> bool:
        """Rebuild if the store's counter moved since the table was built (one single-row
        read otherwise); True when it did."""
        table = self._table
        row = self._db.read("SELECT value FROM counters WHERE name = ?", (ROUTES_COUNTER,))
        version = row.fetchone()
        if table is not None and version is not None and version[0] == table.version:
            return False
        self.reload()
        return True

    def reload(self) -> RouteTable:
        """Read every route in one snapshot and swap a new table in (unless a newer one is
        there already); the table in force is returned."""
        with self._db.snapshot() as db:
            (version,) = db.execute(
                "SELECT value FROM counters WHERE name = ?", (ROUTES_COUNTER,)
            ).fetchone()
            rows = db.execute(
                "SELECT r.hostname, r.tunnel_id, r.account_tag FROM routes r JOIN tunnels t"
                " ON t.id = r.tunnel_id WHERE t.deleted_at IS NULL"
            ).fetchall()
        table = RouteTable.build(
            version, ((host, Route(uuid.UUID(tid), tag)) for host, tid, tag in rows)
        )
        with self._swap:
            current = self._table
            if current is not None and current.version > table.version:
                return current
            self._table = table  # one reference: a lookup sees the old table or the new
        return table

    def watch(self, interval: float) -> None:
        """Call :meth:`refresh` every ``interval`` seconds on a thread until :meth:`close`."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(
            target=self._watch, args=(interval,), name="adit-store-routes", daemon=True
        )
        self._watcher.start()

    def _watch(self, interval: float) -> None:
        while not self._closing.wait(interval):
            try:
                if self.refresh():
                    log.info("routes changed in the store: %d routes", len(self._table or ()))
            except (sqlite3.Error, StoreError) as exc:
                log.warning("cannot read routes from the store: %s", exc)

    def close(self) -> None:
        """Stop the watcher."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(5)
