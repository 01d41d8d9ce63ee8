"""The C allocator's thresholds, raised for a process that moves megabytes per round.

Each relay round allocates and frees buffers of a megabyte or more: aiokafka copies every
produce request several times while encoding it (each field, then each level of the
request, then the frame), and the record batches themselves. glibc's malloc serves such
sizes with a fresh `mmap` and returns them with `munmap` (above `M_MMAP_THRESHOLD`), and
gives a freed heap top back to the system (above `M_TRIM_THRESHOLD`), so every copy pays
page faults and the kernel's zeroing of every page again: about 0.6 µs of the relay's
~4 µs CPU per signed event (bench/relay_throughput.py, `relay_malloc_default`). Raising
both thresholds keeps those pages in the heap for the next round. The cost: up to
`trim_threshold` bytes of freed memory stay with the process instead of going back.
Only glibc has `mallopt`; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes

__all__ = ["GLIBC_DEFAULT", "keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

GLIBC_DEFAULT = 128 * 1024
"""glibc's starting value of both thresholds (it then raises them as large blocks are
freed, up to 32 MiB; setting either fixes both)."""


def keep_freed_memory(mmap_threshold: int, trim_threshold: int) -> bool:
    """Serve blocks below `mmap_threshold` bytes from the heap and keep up to
    `trim_threshold` bytes of freed heap; process-wide. False where the C library has no
    `mallopt` or refused a value."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
