"""Test seams for adit's child processes, loaded by Python itself at start-up.

Python imports ``sitecustomize`` from its path as it starts; a test that wants a seam puts
this directory first on the ``PYTHONPATH`` of the processes it starts (``harness.seam_env``),
which the supervisor's workers inherit. Production code has no hook of its own: without this
directory on the path nothing here exists.

* ``ADIT_TEST_STANDIN=1``: worker processes run :class:`supervisor_standin.StandInRuntime` in
  place of the real data plane (the supervisor's process tests).
* ``ADIT_TEST_STUCK_ON_SIGUSR2=1``: SIGUSR2 blocks the receiving process's main thread for
  good, i.e. a stuck event loop (the stuck-worker test).
"""

from __future__ import annotations

import os
import signal
import time


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
