"""Signal handlers that only enqueue (gunicorn #3441): no logging, no I/O in the handler.

The dispatcher in :class:`adit.supervisor.app.Supervisor` consumes the queue with every other
input, so a signal is handled like any other command, in order, on the event loop.

Before that loop exists (``adit tunnel run`` starts worker 0, then loads its settings), the
signals are only remembered (:func:`capture_early`) and handed to the queue when the loop's
handlers are installed: a SIGTERM from systemd or a Ctrl-C while the connector is still starting
drains it instead of killing the supervisor by the default disposition.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "HANDLED_SIGNALS",
    "SignalReceived",
    "capture_early",
    "hold_for_exec",
    "install_signal_handlers",
    "release_hold",
    "remove_signal_handlers",
    "resume_after_exec",
]

#: SIGTERM/SIGINT drain; SIGHUP reloads the configuration; SIGUSR2 upgrades in place to the
#: installed code (nginx's signal for a binary upgrade; its default disposition would kill).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


class SignalReceived:
    """A signal arrived (the queue item)."""

    __slots__ = ("signum",)

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __repr__(self) -> str:
        return f"SignalReceived({signal.Signals(self.signum).name})"


#: Signals that arrived after :func:`capture_early` and before the loop's handlers, in order.
_early: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    _early.append(signum)


def capture_early(signals: Iterable[int] = HANDLED_SIGNALS) -> None:
    """Remember these signals until :func:`install_signal_handlers` takes them over."""
    for signum in signals:
        signal.signal(signum, _remember)


def hold_for_exec() -> list[int]:
    """Block the handled signals (the mask and what arrives meanwhile survive an ``exec``) and
    return the ones remembered so far: the new program takes both over with
    :func:`resume_after_exec`, so no signal is lost and none kills it before its handlers."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    return _early[:]


def resume_after_exec(remembered: Iterable[int]) -> None:
    """In the program :func:`hold_for_exec` handed over to: remember ``remembered``, then
    unblock (signals that arrived across the ``exec`` are delivered now, and remembered)."""
    capture_early()
    _early.extend(remembered)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


def release_hold() -> None:
    """Undo :func:`hold_for_exec` when the ``exec`` failed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop,
    enqueue: Callable[[SignalReceived], None],
    signals: Iterable[int] = HANDLED_SIGNALS,
) -> None:
    """Make each signal put a :class:`SignalReceived` on the dispatcher's queue.

    Signals remembered since :func:`capture_early` are queued first, in their order.
    """
    for signum in signals:
        loop.add_signal_handler(signum, enqueue, SignalReceived(signum))
    early = _early[:]
    del _early[: len(early)]
    for signum in early:
        enqueue(SignalReceived(signum))


def remove_signal_handlers(
    loop: asyncio.AbstractEventLoop, signals: Iterable[int] = HANDLED_SIGNALS
) -> None:
    """Restore the default dispositions."""
    for signum in signals:
        loop.remove_signal_handler(signum)
