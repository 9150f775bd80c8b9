"""adit.allocator: a read into a large buffer stops costing fresh pages once the settings apply.

The probe is the pattern of every TLS read under uvloop: a 256 KiB bytes object allocated for
``read`` and shrunk to the few bytes that came. It runs in child processes so the settings of
this one stay untouched; page faults are the kernel's own count.
"""

from __future__ import annotations

import os
import subprocess
import sys

from adit.allocator import ENVIRONMENT

_PROBE = """
import os, resource, sys
if sys.argv[1] == "mallopt":
    from adit.allocator import keep_read_buffers_on_heap
    assert keep_read_buffers_on_heap()
r, w = os.pipe()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(300):
    os.write(w, b"x" * 1024)
    assert len(os.read(r, 262144)) == 1024
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str, extra_env: dict[str, str] | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(extra_env or {})
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout)


def test_large_read_buffers_come_from_the_heap_once_tuned() -> None:
    plain = _page_faults("plain")
    assert plain >= 300  # every read mapped fresh pages: the cost being removed
    assert _page_faults("mallopt") < plain // 3
    assert _page_faults("plain", ENVIRONMENT) < plain // 3
