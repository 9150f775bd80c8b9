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


# An upload's read as a worker sees it: 256 KiB of TLS records in, as many decrypted bytes,
# sliced into 16 KiB DATA payloads and joined again for the origin's write: about 1 MiB live
# at the peak of every read, freed before the next.
_UPLOAD_PROBE = """
import os, resource, sys
r, w = os.pipe()
os.set_blocking(w, False)
chunk = b"x" * 65536
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    parts = []
    while sum(map(len, parts)) < 262144:
        os.write(w, chunk)
        parts.append(os.read(r, 262144))
    records = b"".join(parts)
    plain = bytes(bytearray(records))
    pieces = [plain[i : i + 16384] for i in range(0, len(plain), 16384)]
    written = b"".join(pieces)
    assert len(written) == 262144
    del parts, records, plain, pieces, written
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_an_upload_read_reuses_the_heap_top() -> None:
    # With the trim threshold at 1 MiB the heap's freed top went back to the kernel after
    # every read of an upload and came back as fresh pages (a brk each way; strace of a
    # worker: one per read): ~15% of the worker's CPU per GiB uploaded.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(ENVIRONMENT)
    out = subprocess.run(
        [sys.executable, "-c", _UPLOAD_PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert int(out.stdout) < 100 * 64  # not a quarter of the ~256 pages per read
