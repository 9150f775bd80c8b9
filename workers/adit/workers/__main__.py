"""``python -m adit.workers``: the worker process the supervisor starts.

Signal dispositions are set before the heavy imports: a SIGTERM or SIGINT sent to the whole
process group while the worker is still booting must become a drain, not a crash. The cyclic
garbage collector is off until the event loop starts (``adit.workers.process.main``): imports
make few cycles, and its passes over them cost ~6 % of the imports' CPU time, which is most of
the way to the first registration.
"""

from __future__ import annotations

import gc
import signal
import sys

gc.disable()

_early_signals: list[int] = []
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda signum, _frame: _early_signals.append(signum))

from adit.workers.process import main  # noqa: E402 - after the signal dispositions on purpose

if sys.argv[1:] == ["--preflight"]:
    # An upgrade's preflight (adit.supervisor.upgrade_check) runs this file with the installed
    # code: everything above ran, so a worker that would not start is found before the exec.
    sys.exit(0)
sys.exit(main(early_signals=_early_signals))
