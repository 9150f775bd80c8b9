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

__all__ = ["ENVIRONMENT", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_read_buffers_on_heap"]

#: Allocations below this come from the heap (a TLS read buffer is 256 KiB + a header).
MMAP_THRESHOLD = 512 << 10
#: Free memory at the top of the heap kept for reuse rather than returned to the kernel: room
#: for a few read buffers, no more (after a bulk transfer RSS would stay higher by this much).
TRIM_THRESHOLD = 1 << 20

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
