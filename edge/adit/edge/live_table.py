"""A table kept in memory from the store, current for this process's writes and others'.

The edge answers per-request questions (which tunnel serves this hostname, this private IP)
from immutable snapshots, never from a query. Each kind of snapshot has a counter row in the
store (``counters``), bumped in the same transaction as any write that changes it, so:

* the process that wrote rebuilds at once (:meth:`LiveTable.changed`, after its commit);
* another process's write is seen by one single-row read of the counter
  (:meth:`LiveTable.refresh`), which :class:`TableWatcher` does every few seconds for every
  table on one thread of its own, never on the event loop.

A snapshot is swapped in whole (one reference assignment): a reader sees the old table or the
new, and a newer table never gives way to an older one built concurrently.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from adit.edge.database import Database
from adit.edge.errors import StoreError

__all__ = ["LiveTable", "TableWatcher", "VersionedTable"]

log = logging.getLogger("adit.edge.routes")


class VersionedTable(Protocol):
    """A snapshot built from the store at one value of its counter."""

    @property
    def version(self) -> int: ...

    def __len__(self) -> int: ...


T = TypeVar("T", bound=VersionedTable)


class LiveTable(Generic[T]):
    """The current snapshot of one kind, and its upkeep.

    ``load`` reads the rows of a snapshot inside one read transaction and builds it with the
    counter's value it is given. Lookups read one attribute; tables are built by the thread
    that changed the store (right after its commit), by the watcher thread, or at start.
    """

    def __init__(
        self,
        db: Database,
        counter: str,
        load: Callable[[sqlite3.Connection, int], T],
        what: str,
    ) -> None:
        self._db = db
        self._counter = counter
        self._load = load
        #: What the table holds, for the log ("routes", "private routes").
        self.what = what
        self._table: T | None = None
        # Orders swaps; taken by the threads that build tables, never by a lookup.
        self._swap = threading.Lock()

    def current(self) -> T:
        """The table in force (built on first use)."""
        table = self._table
        return table if table is not None else self.reload()

    def changed(self) -> None:
        """This process committed a change: rebuild now, if a table is in use (a CLI that only
        writes never builds one)."""
        if self._table is not None:
            self.reload()

    def refresh(self) -> bool:
        """Rebuild if the store's counter moved since the table was built (one single-row
        read otherwise); True when it did."""
        table = self._table
        row = self._db.read("SELECT value FROM counters WHERE name = ?", (self._counter,))
        version = row.fetchone()
        if table is not None and version is not None and version[0] == table.version:
            return False
        self.reload()
        return True

    def reload(self) -> T:
        """Read the rows in one snapshot and swap a new table in (unless a newer one is there
        already); the table in force is returned."""
        with self._db.snapshot() as db:
            (version,) = db.execute(
                "SELECT value FROM counters WHERE name = ?", (self._counter,)
            ).fetchone()
            table = self._load(db, version)
        with self._swap:
            current = self._table
            if current is not None and current.version > table.version:
                return current
            self._table = table  # one reference: a lookup sees the old table or the new
        return table


class TableWatcher:
    """One thread that refreshes every table of a store, every ``interval`` seconds."""

    def __init__(self, tables: Sequence[LiveTable[Any]]) -> None:
        self._tables = tuple(tables)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, interval: float) -> None:
        """Start the thread (once) until :meth:`close`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name="adit-store-routes", daemon=True
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._closing.wait(interval):
            for table in self._tables:
                try:
                    if table.refresh():
                        log.info(
                            "%s changed in the store: %d %s",
                            table.what,
                            len(table.current()),
                            table.what,
                        )
                except (sqlite3.Error, StoreError) as exc:
                    log.warning("cannot read %s from the store: %s", table.what, exc)

    def close(self) -> None:
        """Stop the thread."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(5)
