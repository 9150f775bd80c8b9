"""Pushing a remotely managed tunnel's configuration to its connections, bounded.

Per connection there is one lane: at most one push in flight, and at most one waiting behind
it, the newest (a connector applies only a version newer than the one it runs, so a waiting
older push is pointless once a newer one exists: it is answered ``superseded`` unsent). Each
push is bounded by :data:`PUSH_TIMEOUT`; a connection that closes fails its push at once.

The last outcome per connection is kept (on the connection, so it goes with it) so that ``GET
…/configurations`` can say what each connector did with the latest version.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adit.edge.registry import LiveConnection

__all__ = ["PUSH_TIMEOUT", "ConfigPusher", "PushOutcome", "PushStatus"]

log = logging.getLogger("adit.edge.config")

#: How long one push may take: cloudflared's own RPC timeout is 5 s, a slow connector's
#: answer on a busy connection gets twice that.
PUSH_TIMEOUT = 10.0


class PushStatus(enum.StrEnum):
    """What became of a push to one connection."""

    #: The connector runs this version (or a newer one) now.
    APPLIED = "applied"
    #: The connector answered with an error and keeps its previous configuration.
    REJECTED = "rejected"
    #: No answer (timeout, connection closed, malformed answer).
    FAILED = "failed"
    #: A newer version was pushed to this connection before this one was sent.
    SUPERSEDED = "superseded"
    #: Still in flight when the API answered.
    PENDING = "pending"


@dataclass(frozen=True)
class PushOutcome:
    """One connection's answer to one push (the API shows it as JSON)."""

    connection_id: uuid.UUID
    client_id: uuid.UUID
    conn_index: int
    protocol: str
    version: int
    status: PushStatus
    #: The version the connector says it runs (None: it did not say).
    applied_version: int | None = None
    error: str | None = None

    def json(self) -> dict[str, object]:
        """The API's form."""
        return {
            "connection_id": str(self.connection_id),
            "client_id": str(self.client_id),
            "conn_index": self.conn_index,
            "protocol": self.protocol,
            "version": self.version,
            "status": str(self.status),
            "applied_version": self.applied_version,
            "error": self.error,
        }


def _outcome(
    conn: LiveConnection,
    version: int,
    status: PushStatus,
    applied: int | None = None,
    error: str | None = None,
) -> PushOutcome:
    return PushOutcome(
        conn.connection_id,
        conn.client_id,
        conn.conn_index,
        conn.protocol,
        version,
        status,
        applied,
        error,
    )


@dataclass
class _Lane:
    """One connection's pushes: the one in flight and the newest waiting."""

    waiting: tuple[int, bytes] | None = None
    waiters: list[asyncio.Future[PushOutcome]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    #: The version in flight.
    sending: int | None = None


class ConfigPusher:
    """Pushes configurations to connections, one in flight per connection, newest wins."""

    def __init__(self, timeout: float = PUSH_TIMEOUT) -> None:
        self.timeout = timeout
        self._lanes: dict[LiveConnection, _Lane] = {}

    def push(
        self, conn: LiveConnection, version: int, config: bytes
    ) -> asyncio.Future[PushOutcome]:
        """Queue a push to ``conn``; the future resolves with its outcome (never raises)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[PushOutcome] = loop.create_future()
        lane = self._lanes.setdefault(conn, _Lane())
        if lane.waiting is not None:
            if lane.waiting[0] > version:
                done.set_result(_outcome(conn, version, PushStatus.SUPERSEDED))
                return done
            self._supersede(conn, lane, version)
        lane.waiting = (version, config)
        lane.waiters = [done]
        if lane.task is None:
            lane.task = loop.create_task(self._drain(conn, lane))
        return done

    def newest(self, conn: LiveConnection) -> int:
        """The newest version pushed to ``conn``: waiting, in flight or answered (0: none)."""
        lane = self._lanes.get(conn)
        versions = [0]
        if lane is not None:
            versions += [v for v in (lane.sending, lane.waiting and lane.waiting[0]) if v]
        if isinstance(conn.config_push, PushOutcome):
            versions.append(conn.config_push.version)
        return max(versions)

    @staticmethod
    def last_outcomes(conns: list[LiveConnection]) -> list[PushOutcome]:
        """The latest outcome of each of ``conns`` that was ever pushed to."""
        return [c.config_push for c in conns if isinstance(c.config_push, PushOutcome)]

    def _supersede(self, conn: LiveConnection, lane: _Lane, newer: int) -> None:
        assert lane.waiting is not None
        old = lane.waiting[0]
        for waiter in lane.waiters:
            if not waiter.done():
                waiter.set_result(
                    _outcome(conn, old, PushStatus.SUPERSEDED, error=f"version {newer} is newer")
                )

    async def _drain(self, conn: LiveConnection, lane: _Lane) -> None:
        try:
            while lane.waiting is not None:
                (version, config), waiters = lane.waiting, lane.waiters
                lane.waiting, lane.waiters, lane.sending = None, [], version
                outcome = await self._send(conn, version, config)
                conn.config_push = outcome
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(outcome)
        finally:
            lane.task = lane.sending = None
            if self._lanes.get(conn) is lane and lane.waiting is None:
                del self._lanes[conn]

    async def _send(self, conn: LiveConnection, version: int, config: bytes) -> PushOutcome:
        try:
            async with asyncio.timeout(self.timeout):
                applied, error = await conn.handle.update_configuration(version, config)
        except TimeoutError:
            reason = f"no answer within {self.timeout:g}s"
            return self._logged(conn, _outcome(conn, version, PushStatus.FAILED, error=reason))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a connection's failure is its outcome
            reason = str(exc) or type(exc).__name__
            return self._logged(conn, _outcome(conn, version, PushStatus.FAILED, error=reason))
        if error is not None:
            outcome = _outcome(conn, version, PushStatus.REJECTED, applied, error)
        elif applied >= version:
            outcome = _outcome(conn, version, PushStatus.APPLIED, applied)
        else:
            outcome = _outcome(
                conn,
                version,
                PushStatus.REJECTED,
                applied,
                f"the connector kept version {applied}",
            )
        return self._logged(conn, outcome)

    @staticmethod
    def _logged(conn: LiveConnection, outcome: PushOutcome) -> PushOutcome:
        if outcome.status is PushStatus.APPLIED:
            log.info(
                "configuration version %d applied by tunnelID=%s connection=%s",
                outcome.version,
                conn.tunnel_id,
                conn.connection_id,
            )
        else:
            log.warning(
                "configuration version %d %s by tunnelID=%s connection=%s: %s",
                outcome.version,
                outcome.status,
                conn.tunnel_id,
                conn.connection_id,
                outcome.error,
            )
        return outcome

    async def push_all(
        self, conns: list[LiveConnection], version: int, config: bytes, wait: float
    ) -> list[PushOutcome]:
        """Push to each of ``conns``; the outcomes known within ``wait`` seconds, the others
        ``pending`` (they go on in the background)."""
        futures = [(c, self.push(c, version, config)) for c in conns]
        if futures:
            await asyncio.wait([f for _, f in futures], timeout=wait)
        return [
            f.result() if f.done() else _outcome(c, version, PushStatus.PENDING) for c, f in futures
        ]
