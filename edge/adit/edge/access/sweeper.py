"""Access's housekeeping in an edge process: the access log kept to its retention
(``--access-log-retention``) and expired logins in progress deleted, at start and then every
SWEEP_INTERVAL, whether or not anyone is logging in.

A sweep says what it deleted from the access log in one line (``access log: N decisions
before CUTOFF deleted``): an operator sees the retention at work, a test knows the sweep ran.
A sweep that fails (the store busy) is said and tried again at the next interval; it never
ends the edge.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Final

from adit.edge.access.decisions import DecisionLog
from adit.edge.access.login_state import LoginState
from adit.edge.errors import StoreError

__all__ = ["SWEEP_INTERVAL", "sweep_access"]

log = logging.getLogger("adit.edge.access")

SWEEP_INTERVAL: Final = 60.0


def _retention(log_: DecisionLog) -> str:
    seconds = int(log_.retention / datetime.timedelta(seconds=1))
    return f"{seconds}s"


async def sweep_access(
    decisions: DecisionLog,
    state: LoginState,
    *,
    interval: float = SWEEP_INTERVAL,
    clock: Callable[[], float] = time.time,
) -> None:
    """Sweep until cancelled."""
    db = state.db
    first = True
    while True:
        try:
            deleted, cutoff = await db.off_loop(decisions.purge)
            # Said at start and whenever something went; a quiet minute is a debug line.
            log.log(
                logging.INFO if deleted or first else logging.DEBUG,
                "access log: %d decisions before %s deleted (retention %s)",
                deleted,
                cutoff,
                _retention(decisions),
            )
            first = False
            await db.off_loop(state.sweep, clock())
        except (StoreError, OSError) as exc:
            log.warning("access log: sweep failed, tried again in %ds: %s", interval, exc)
        await asyncio.sleep(interval)
