"""Requests wait for the connectors that are moving here, instead of failing with a 530.

After a hand-over (:mod:`adit.edge.handover`) the new edge process accepts visitors at once,
but a tunnel's connectors are still connected to the old process until they redial (at once
after their connection is closed, a little later behind a request in flight). A visitor's
request for such a tunnel in between would find no connection here. So a request that finds
none waits for one, up to ``longest`` seconds, for the tunnels that had connections at the old
process (every tunnel until the old process has said which: :meth:`TunnelHold.narrow`), while
the hand-over is recent (``until``). A tunnel drops out as soon as a connection of it
registers here: a later outage is answered at once, as ever.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

__all__ = ["TunnelHold"]


class TunnelHold:
    """The tunnels still moving here, and the requests waiting for them."""

    def __init__(self, *, until: float, longest: float) -> None:
        #: None: every tunnel (the old process has not said which it served yet).
        self._moving: set[uuid.UUID] | None = None
        self._arrived: set[uuid.UUID] = set()
        self._until = until
        self._longest = longest
        self._waiters: dict[uuid.UUID, list[asyncio.Future[bool]]] = {}

    def narrow(self, tunnels: Iterable[uuid.UUID], until: float) -> None:
        """Only ``tunnels`` are moving (the old process said so), until ``until``; requests
        waiting for another tunnel are answered now."""
        self._moving = set(tunnels) - self._arrived
        self._until = until
        for tunnel_id in list(self._waiters):
            if tunnel_id not in self._moving:
                self._wake(tunnel_id, False)

    def connected(self, tunnel_id: uuid.UUID) -> None:
        """A connection of ``tunnel_id`` registered here: its waiting requests go on."""
        self._arrived.add(tunnel_id)
        if self._moving is not None:
            self._moving.discard(tunnel_id)
        self._wake(tunnel_id, True)

    def _wake(self, tunnel_id: uuid.UUID, connected: bool) -> None:
        for waiter in self._waiters.pop(tunnel_id, ()):
            if not waiter.done():
                waiter.set_result(connected)

    async def connection(self, tunnel_id: uuid.UUID) -> bool:
        """Wait (bounded) for a connection of a moving tunnel; whether one registered."""
        loop = asyncio.get_running_loop()
        wait = min(self._longest, self._until - loop.time())
        moving = self._moving
        if wait <= 0 or tunnel_id in self._arrived:
            return False
        if moving is not None and tunnel_id not in moving:
            return False
        waiter: asyncio.Future[bool] = loop.create_future()
        waiters = self._waiters.setdefault(tunnel_id, [])
        waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                return await waiter
        except TimeoutError:
            return False
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
