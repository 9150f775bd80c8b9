"""Test seams for adit's child processes, loaded by Python itself at start-up.

Python imports ``sitecustomize`` from its path as it starts; a test that wants a seam puts
this directory first on the ``PYTHONPATH`` of the processes it starts (``harness.seam_env``),
which the supervisor's workers inherit. Production code has no hook of its own: without this
directory on the path nothing here exists.

* ``ADIT_TEST_STANDIN=1``: worker processes run :class:`supervisor_standin.StandInRuntime` in
  place of the real data plane (the supervisor's process tests).
* ``ADIT_TEST_STUCK_ON_SIGUSR2=1``: SIGUSR2 blocks the receiving process's main thread for
  good, i.e. a stuck event loop (the stuck-worker test).
* ``ADIT_TEST_QUIC_STATE=PATH``: on SIGUSR1 an edge writes what its QUIC listeners hold
  (``QuicListener.stats``, summed) to PATH as JSON, with the number found in ``PATH.seq``
  (``tests/quic_hostile.quic_state``).
* ``ADIT_TEST_METRICS_ADDRESSES=HOST:PORT,...``: where ``adit tunnel ready``/``diag`` look
  for a connector when ``--metrics`` is not given (in place of localhost:20241..20245, which
  other tests' connectors on this machine may hold).
* ``ADIT_TEST_QUIC_TOKEN_LIFETIME=SECONDS``: how long the edge accepts its Retry tokens
  (aioquic's 30 s; a negative value makes every token expired).
"""

from __future__ import annotations

import json
import os
import signal
import time
import weakref
from pathlib import Path
from typing import Any


def _install_standin() -> None:
    # Replaced before adit.workers.process imports it (python -m adit.workers runs after
    # site), so WorkerProcess's default runtime is the stand-in.
    # Imported as a top-level module: this directory, not tests/, is on the path at run time.
    from supervisor_standin import StandInRuntime  # type: ignore[import-not-found]

    import adit.workers.runtime

    adit.workers.runtime.WorkerRuntime = StandInRuntime  # type: ignore[misc]


def _block_forever(_signum: int, _frame: object) -> None:
    """A signal handler that never returns: the loop that ran it is stuck."""
    while True:
        time.sleep(3600)


if os.environ.get("ADIT_TEST_STANDIN") == "1":
    _install_standin()
if os.environ.get("ADIT_TEST_STUCK_ON_SIGUSR2") == "1":
    signal.signal(signal.SIGUSR2, _block_forever)
if os.environ.get("ADIT_TEST_METRICS_ADDRESSES") is not None:
    # Before adit.cli.ready/diag import the name (they bind it at import).
    import adit.cli.metrics_client

    adit.cli.metrics_client.KNOWN_METRICS_ADDRESSES = tuple(
        a for a in os.environ["ADIT_TEST_METRICS_ADDRESSES"].split(",") if a
    )


def _install_quic_state(path: Path) -> None:
    # The edge's listeners are remembered as they are made (weakly), read after SIGUSR1 by a
    # callback of the edge's loop, so never while they change.
    from adit.edge.quic_listener import QuicListener

    listeners: weakref.WeakSet[QuicListener] = weakref.WeakSet()
    made = QuicListener.__init__

    def remembered(self: QuicListener, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        listeners.add(self)

    QuicListener.__init__ = remembered  # type: ignore[method-assign]

    def dump(_signum: int, _frame: object) -> None:
        # A Python signal handler runs between two bytecodes, maybe inside a callback that is
        # changing the listener: the state is read by a callback of the loop of its own.
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write()
        else:
            loop.call_soon_threadsafe(write)

    def write() -> None:
        total: dict[str, Any] = {
            "sessions": 0,
            "unregistered": 0,
            "routes": 0,
            "tracked_ids": 0,
            "per_ip": {},
            "created": 0,
            "retries": 0,
        }
        for listener in list(listeners):
            stats = listener.stats()
            for name, value in vars(stats).items():
                if name == "per_ip":
                    for host, count in value.items():
                        total["per_ip"][host] = total["per_ip"].get(host, 0) + count
                else:
                    total[name] += value
        seq = path.with_suffix(".seq")
        total["seq"] = int(seq.read_text()) if seq.exists() else 0
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(total))
        tmp.replace(path)

    signal.signal(signal.SIGUSR1, dump)


def _set_token_lifetime(seconds: float) -> None:
    import aioquic.quic.retry

    aioquic.quic.retry.TOKEN_LIFETIME = seconds


if os.environ.get("ADIT_TEST_QUIC_STATE"):
    _install_quic_state(Path(os.environ["ADIT_TEST_QUIC_STATE"]))
if os.environ.get("ADIT_TEST_QUIC_TOKEN_LIFETIME"):
    _set_token_lifetime(float(os.environ["ADIT_TEST_QUIC_TOKEN_LIFETIME"]))
