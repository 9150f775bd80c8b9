"""A stand-in worker runtime for supervisor process tests (installed by ``sitecustomize``).

Behaviour comes from the environment the test gives the supervisor (inherited by workers):

* ``ADIT_TEST_STANDIN_MODE``: ``register`` (default) reports every connection registered;
  ``refuse`` reports connection 0 refused; ``idle`` reports nothing.
* ``ADIT_TEST_STANDIN_DRAIN``: ``ignore`` never finishes a drain (to test the second signal).
* ``ADIT_TEST_STANDIN_LOG``: a file that gets one line per observed command
  (``start <slot> <pid> <conn indexes> gc=<bool>``, ``drain <slot> <grace>``).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable

from adit.ipc.messages import (
    ConnectionRegistered,
    ConnectionUnregistered,
    Event,
    IngressSnapshot,
    RegistrationRefused,
    StatsSnapshot,
    WorkerSettings,
)


def _record(line: str) -> None:
    path = os.environ.get("ADIT_TEST_STANDIN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


class StandInRuntime:
    """Pretends to hold edge connections; drains when told."""

    def __init__(self, settings: WorkerSettings, publish: Callable[[Event], None]) -> None:
        self.settings = settings
        self.publish = publish
        self._drained = asyncio.Event()
        # The worker turns the cyclic GC off while it imports: it must be on again by now.
        _record(f"start {settings.slot} {os.getpid()} {settings.conn_indexes} gc={gc.isenabled()}")

    async def run(self) -> None:
        """Report the configured outcome, then wait for a drain."""
        mode = os.environ.get("ADIT_TEST_STANDIN_MODE", "register")
        slot = self.settings.slot
        for index in self.settings.conn_indexes:
            if mode == "register":
                self.publish(
                    ConnectionRegistered(slot, index, f"conn-{index}", "TST1", "127.0.0.1:7844")
                )
            elif mode == "refuse" and index == 0:
                self.publish(RegistrationRefused(slot, index, "Unauthorized: bad secret", False))
        self.publish(StatsSnapshot(slot, 7, 1, 0, {"200": 6}))
        await self._drained.wait()
        for index in self.settings.conn_indexes:
            self.publish(ConnectionUnregistered(slot, index))

    def begin_drain(self, grace: float) -> None:
        """Record the drain and finish."""
        _record(f"drain {self.settings.slot} {grace}")
        if os.environ.get("ADIT_TEST_STANDIN_DRAIN") != "ignore":
            self._drained.set()

    def apply_ingress(self, snapshot: IngressSnapshot) -> None:
        """Record the version."""
        _record(f"ingress {self.settings.slot} {snapshot.version}")

    def reconfigure(self, settings: WorkerSettings) -> None:
        """Record the new connection indexes."""
        _record(f"reconfigure {settings.slot} {settings.conn_indexes}")

    def record_registration(self, conn_index: int, protocol: str) -> None:
        """Record the relayed registration."""
        _record(f"registration {self.settings.slot} {conn_index} {protocol}")

    @property
    def active_streams(self) -> int:
        """No streams."""
        return 0
