"""The access log: every Access decision, per account, as Cloudflare's ``access_requests``.

The public listener records decisions on its event loop (:meth:`DecisionLog.record`: a list
append); they reach the store in batches on the store's writer thread, a moment later, so a
request never waits for SQLite. Entries older than the retention are deleted as batches are
written (at most once a minute) and by :func:`~adit.edge.access.sweeper.sweep_access` (at
start and every minute, whether or not decisions are being made). Queries (:func:`query`)
filter by time, e-mail, application and action, newest first, paged.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from adit.edge.database import Database, encode_time

__all__ = ["DEFAULT_RETENTION", "DecisionLog", "Entry", "query"]

log = logging.getLogger("adit.edge.access")

DEFAULT_RETENTION: Final = datetime.timedelta(days=30)
#: How long decisions wait to be written together.
_FLUSH_DELAY = 0.25
#: Decisions kept while the store is busy; beyond, the oldest unwritten are dropped (and said).
_MAX_PENDING = 50_000
_PURGE_EVERY = 60.0
_COLUMNS: Final = (
    "at, app_id, app_domain, user_email, idp, country, ip, action, allowed, policy_id, ray_id"
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One decision as logged."""

    account: str
    at: str
    app_id: str
    app_domain: str
    user_email: str
    idp: str
    country: str
    ip: str
    action: str
    allowed: bool
    policy_id: str
    ray_id: str

    def json(self) -> dict[str, Any]:
        # Cloudflare's access_requests field names.
        return {
            "created_at": self.at,
            "app_uid": self.app_id,
            "app_domain": self.app_domain,
            "user_email": self.user_email,
            "identity_provider": self.idp,
            "country": self.country,
            "ip_address": self.ip,
            "action": self.action,
            "allowed": self.allowed,
            "policy_id": self.policy_id,
            "ray_id": self.ray_id,
        }


class DecisionLog:
    """Decisions on their way to the store."""

    def __init__(
        self,
        db: Database,
        *,
        retention: datetime.timedelta = DEFAULT_RETENTION,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._db = db
        self.retention = retention
        self._clock = clock
        self._pending: list[Entry] = []
        self._flushing = False
        self._purged_at = 0.0

    def now(self) -> str:
        return encode_time(self._clock())

    def record(self, entry: Entry) -> None:
        """Keep ``entry``; it is written within a moment (on the event loop: no wait)."""
        if len(self._pending) >= _MAX_PENDING:
            del self._pending[: _MAX_PENDING // 10]
            log.warning("access log: the store is not keeping up; oldest decisions dropped")
        self._pending.append(entry)
        if self._flushing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.write_now()
            return
        self._flushing = True
        loop.call_later(_FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        future = self._db.off_loop(self._write, batch)
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._flushing = False
        exc = future.exception()
        if exc is not None:
            log.warning("access log: cannot write decisions: %s", exc)
        if self._pending:
            self._flushing = True
            asyncio.get_running_loop().call_later(_FLUSH_DELAY, self._flush)

    def write_now(self) -> None:
        """Write what is pending on this thread (no event loop: tests, shutdown)."""
        batch, self._pending = self._pending, []
        if batch:
            self._write(batch)

    def _write(self, batch: Sequence[Entry]) -> None:
        with self._db.write() as db:
            db.executemany(
                f"INSERT INTO access_log (account_tag, {_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.account,
                        e.at,
                        e.app_id,
                        e.app_domain,
                        e.user_email,
                        e.idp,
                        e.country,
                        e.ip,
                        e.action,
                        int(e.allowed),
                        e.policy_id,
                        e.ray_id,
                    )
                    for e in batch
                ],
            )
            if time.monotonic() - self._purged_at >= _PURGE_EVERY:
                self._purge(db)

    def purge(self) -> tuple[int, str]:
        """Delete the decisions older than the retention (a store write: off the loop);
        (how many, the cutoff)."""
        with self._db.write() as db:
            return self._purge(db)

    def _purge(self, db: sqlite3.Connection) -> tuple[int, str]:
        self._purged_at = time.monotonic()
        cutoff = encode_time(self._clock() - self.retention)
        deleted = db.execute("DELETE FROM access_log WHERE at < ?", (cutoff,)).rowcount
        return deleted, cutoff


def query(
    db: Database,
    account: str,
    *,
    since: str | None = None,
    until: str | None = None,
    email: str | None = None,
    app: str | None = None,
    action: str | None = None,
    limit: int = 25,
    offset: int = 0,
) -> tuple[list[Entry], int]:
    """One page of the account's decisions, newest first, and how many match in all."""
    where = ["account_tag = ?"]
    args: list[object] = [account]
    for column, op, value in (
        ("at", ">=", since),
        ("at", "<=", until),
        ("user_email", "=", email.lower() if email else None),
        ("app_id", "=", app),
        ("action", "=", action),
    ):
        if value:
            where.append(f"{column} {op} ?")
            args.append(value)
    clause = " AND ".join(where)
    (total,) = db.read(
        f"SELECT COUNT(*) FROM access_log WHERE {clause}",  # noqa: S608 (fixed columns)
        args,
    ).fetchone()
    rows = db.read(
        f"SELECT {_COLUMNS} FROM access_log WHERE {clause}"  # noqa: S608
        " ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return [
        Entry(account, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), r[9], r[10])
        for r in rows
    ], total
