"""The store's SQLite file: a connection per thread, reads without locks, bounded writes.

Why it is shaped this way (issue 13 item 17): the edge's event loop serves every tenant, and
SQLite has one write lock per file that another process (``adit edge token create``, a second
edge on the same state dir) may hold for as long as it likes. So:

* Each thread has its own connection. A single shared connection needs a Python lock around
  it, and then a writer waiting for SQLite's lock in one thread blocks a reader on the loop.
* Reads are plain statements (WAL mode: they see the last commit and never wait for a writer).
* A write is one ``BEGIN IMMEDIATE`` transaction with a deadline: SQLite's busy timeout is set
  to the time left, and a write that cannot start in time raises :class:`StoreBusy` having
  written nothing. On the event loop writes go through :meth:`Database.off_loop`, which runs
  them on one writer thread, each with its deadline counted from the moment it was asked for
  (time spent queued behind another write counts too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from adit.edge.errors import StoreBusy

__all__ = ["DEFAULT_WRITE_TIMEOUT", "Database", "decode_time", "encode_time"]

#: How long a write may wait for another process's write lock, by default.
DEFAULT_WRITE_TIMEOUT = 5.0
# A read in WAL mode waits only in rare moments (a WAL reset); never long on the loop.
_READ_BUSY_MS = 250
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

P = ParamSpec("P")
T = TypeVar("T")


def encode_time(moment: datetime.datetime) -> str:
    """A moment as the store keeps it: ISO 8601 in UTC."""
    return moment.astimezone(datetime.UTC).isoformat()


def decode_time(text: str | None) -> datetime.datetime | None:
    """A stored moment (or None for a NULL column)."""
    return None if text is None else datetime.datetime.fromisoformat(text)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # Extended codes (SQLITE_BUSY_SNAPSHOT...) carry the primary code in the low byte.
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


class Database:
    """One SQLite file (WAL, mode 0600) used from any thread."""

    def __init__(
        self, path: str | os.PathLike[str], *, write_timeout: float = DEFAULT_WRITE_TIMEOUT
    ) -> None:
        self.write_timeout = write_timeout
        if str(path) == ":memory:":
            # Tests and benchmarks: one private in-memory database that every thread's
            # connection opens by name (shared cache), kept alive by the first connection. A
            # random name, not id(self): a database not yet closed (another thread's connection
            # still open) would be shared by a new one that reuses a freed object's address.
            self._target = f"file:adit-store-{uuid.uuid4().hex}?mode=memory&cache=shared"
        else:
            file = Path(path)
            file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not file.exists():
                os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(file, 0o600)
            self._target = file.absolute().as_uri()
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()  # guards the list only, never a query
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self.connection().execute("PRAGMA journal_mode=WAL")

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self._target,
                uri=True,
                check_same_thread=False,  # close() may run on another thread
                isolation_level=None,
                timeout=_READ_BUSY_MS / 1000,
            )
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._opened_lock:
                self._opened.append(db)
        return db

    def read(self, sql: str, args: tuple[object, ...] | list[object] = ()) -> sqlite3.Cursor:
        """One statement outside any transaction: it takes no write lock."""
        try:
            return self.connection().execute(sql, args)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise StoreBusy("the edge's store is busy; try again") from None
            raise

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one commit (a deferred transaction: no write lock)."""
        db = self.connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction that starts before this thread's deadline (the
        one :meth:`off_loop` set, else ``write_timeout`` from now) or raises
        :class:`StoreBusy` having written nothing."""
        deadline: float | None = getattr(self._local, "deadline", None)
        left = self.write_timeout if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise StoreBusy("the edge's store is busy; try again")
        db = self.connection()
        db.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise StoreBusy(
                    "the edge's store is locked by another process; try again"
                ) from None
            raise
        finally:
            db.execute(f"PRAGMA busy_timeout = {_READ_BUSY_MS}")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def off_loop(
        self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Run ``call`` (a store write) on the writer thread; its deadline is
        ``write_timeout`` from now. Await the result on the event loop."""
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="adit-store-writer"
            )
        deadline = time.monotonic() + self.write_timeout

        def run() -> T:
            self._local.deadline = deadline
            try:
                return call(*args, **kwargs)
            finally:
                self._local.deadline = None

        return asyncio.wrap_future(self._writer.submit(run))

    def close(self) -> None:
        """Finish queued writes, then close every thread's connection."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for db in reversed(opened):  # the first one keeps an in-memory database: last
            db.close()
