"""Signal handlers that only enqueue (gunicorn #3441): no logging, no I/O in the handler.

The dispatcher in :class:`adit.supervisor.app.Supervisor` consumes the queue with every other
input, so a signal is handled like any other command, in order, on the event loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable

__all__ = ["HANDLED_SIGNALS", "SignalReceived", "install_signal_handlers", "remove_signal_handlers"]

#: SIGTERM/SIGINT drain; SIGHUP reloads the configuration.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalReceived:
    """A signal arrived (the queue item)."""

    __slots__ = ("signum",)

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __repr__(self) -> str:
        return f"SignalReceived({signal.Signals(self.signum).name})"


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop,
    enqueue: Callable[[SignalReceived], None],
    signals: Iterable[int] = HANDLED_SIGNALS,
) -> None:
    """Make each signal put a :class:`SignalReceived` on the dispatcher's queue."""
    for signum in signals:
        loop.add_signal_handler(signum, enqueue, SignalReceived(signum))


def remove_signal_handlers(
    loop: asyncio.AbstractEventLoop, signals: Iterable[int] = HANDLED_SIGNALS
) -> None:
    """Restore the default dispositions."""
    for signum in signals:
        loop.remove_signal_handler(signum)
