"""The C allocator's thresholds, raised for a process that moves megabytes per round.

Each relay round allocates and frees buffers of a megabyte or more: aiokafka copies every
produce request several times while encoding it (each field, then each level of the
request, then the frame), and the record batches themselves. glibc's malloc serves such
sizes with a fresh `mmap` and returns them with `munmap` (above `M_MMAP_THRESHOLD`), and
gives a freed heap top back to the system (above `M_TRIM_THRESHOLD`), so every copy pays
page faults and the kernel's zeroing of every page again: about 0.6 µs of the relay's
~4 µs CPU per signed event (bench/relay_throughput.py, `relay_malloc_default`). Raising
both thresholds keeps those pages in the heap for the next round.

The cost is not bounded by `trim_threshold`: that only limits the heap's freed *top*.
With blocks up to `mmap_threshold` served from the heap, a freed block below a live one
stays with the process however large the sum, and fixing the thresholds also stops
glibc's own adjustment: the process keeps its peak heap, and the setting is
process-wide (in `serve`, the tracker's and the HTTP API's bursts too). `IdleTrim` bounds
that in time: once the relay has spent a whole idle wait with nothing to publish after
rounds that published (or a drain ends), `malloc_trim(0)` gives every freed page back,
from the middle of the heap too (~3 ms per 120 MiB returned). A busy stretch of rounds
keeps its pages; the first round after a quiet spell faults them in again, as with
glibc's defaults. Only glibc has `mallopt` and `malloc_trim`; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes

__all__ = ["GLIBC_DEFAULT", "IdleTrim", "keep_freed_memory", "return_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

GLIBC_DEFAULT = 128 * 1024
"""glibc's starting value of both thresholds (it then raises them as large blocks are
freed, up to 32 MiB; setting either fixes both)."""


def keep_freed_memory(mmap_threshold: int, trim_threshold: int) -> bool:
    """Serve blocks below `mmap_threshold` bytes from the heap and give the heap's freed
    top back only past `trim_threshold` bytes; process-wide (freed blocks below live ones
    stay until `return_freed_memory`). False where the C library has no `mallopt` or
    refused a value."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's `malloc_trim(0)`), wherever
    they are in the heap. False where there is no `malloc_trim` or nothing was returned."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))


class IdleTrim:
    """When a loop that keeps freed memory (`keep_freed_memory`) gives it back: once it
    has been idle for a whole wait after work, or when it ends after work.

    `idle(done)` is called each time the loop finds nothing to do, `done` being the work
    done so far (a count that only grows); `end(done)` when it stops. Trimming at the
    first idle step instead would trim after every round of a steady trickle of work, and
    the next round would fault its pages in again.
    """

    __slots__ = ("_enabled", "_idle_at", "_trimmed_at")

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._trimmed_at = 0
        self._idle_at = -1

    def idle(self, done: int) -> bool:
        """True where it trimmed."""
        quiet = done == self._idle_at
        self._idle_at = done
        return quiet and self._trim(done)

    def end(self, done: int) -> bool:
        """True where it trimmed."""
        return self._trim(done)

    def _trim(self, done: int) -> bool:
        if not self._enabled or done == self._trimmed_at:
            return False
        self._trimmed_at = done
        return_freed_memory()
        return True
