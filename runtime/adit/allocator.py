"""glibc malloc settings for the processes that read TLS: the edge and the workers.

uvloop reads TLS by asking ``ssl`` for up to 256 KiB at a time: Python allocates a 256 KiB
bytes object and shrinks it to what was read. Above glibc's 128 KiB threshold that allocation
is an mmap, the shrink an mremap and the free a munmap: three system calls and freshly zeroed
pages for every TLS read (strace of a worker under load: one of each per request). With the
threshold raised the buffer comes from the heap and its pages are reused; the trim threshold
is raised with it, or the heap's freed top would go back to the kernel after every read. The
heap may keep up to :data:`TRIM_THRESHOLD` unused.

Elsewhere than glibc (musl) the settings do nothing and nothing breaks.
"""

from __future__ import annotations

__all__ = [
    "ENVIRONMENT",
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "HeapTrimmer",
    "keep_read_buffers_on_heap",
]

#: Allocations below this come from the heap (a TLS read buffer is 256 KiB + a header).
MMAP_THRESHOLD = 512 << 10
#: Free memory at the top of the heap kept for reuse rather than returned to the kernel: room
#: for what one read of a bulk transfer holds at its peak, no more (after a bulk transfer RSS
#: may stay higher by this much). An upload's read allocates and frees more than 2 MiB around
#: it (TLS records, the decrypted bytes, the DATA payloads, the origin's write): at 1 MiB the
#: top went back to the kernel after every read and came back as fresh pages: ~15% of a
#: worker's CPU per GiB uploaded (1.53-2.39 s at 1 MiB against 1.30-1.38 s at 4 MiB in
#: alternating runs; OPTIMISATION.md, "Footprint: CPU").
TRIM_THRESHOLD = 4 << 20

#: The same settings for a child process, read by glibc as it starts (no ctypes needed).
ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_read_buffers_on_heap() -> bool:
    """Apply the settings to this process; ``False`` where the C library has no mallopt."""
    import ctypes  # here: only a long-running process pays for importing it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(trimmed and mapped)


class HeapTrimmer:
    """Gives freed heap pages back to the kernel when the process has grown.

    Every connection that reads TLS owns a 256 KiB buffer (uvloop's SSL read buffer, on the
    heap with the thresholds above). When connections come and go, freed buffers are split
    for small allocations and the rest of each stays resident: a tenant whose connections the
    edge closes for floods, hundreds a second, took it from 54 to 280 MiB although nothing was
    live (``loadtests/attack.py``; ``malloc_trim(0)`` gave all of it back). :meth:`check`, called
    now and then from the event loop, trims once resident memory grew by :attr:`slack` bytes
    since the last trim: a few milliseconds, seldom, and never on a steady process.
    """

    def __init__(self, slack: int = 32 << 20) -> None:
        self.slack = slack
        self._trim = self._load()
        self._page = _page_size()
        self._after = self.resident()

    @staticmethod
    def _load() -> object:
        import ctypes

        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            return None  # not glibc: nothing to trim
        trim.argtypes = (ctypes.c_size_t,)
        trim.restype = ctypes.c_int
        return trim

    def resident(self) -> int:
        """This process's resident memory in bytes (0 where /proc is missing)."""
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def check(self) -> bool:
        """Trim if resident memory grew by :attr:`slack` since the last trim; True if it did."""
        if self._trim is None:
            return False
        if self.resident() - self._after < self.slack:
            return False
        self._trim(0)  # type: ignore[operator]
        self._after = self.resident()
        return True


def _page_size() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 4096
