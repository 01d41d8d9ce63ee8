"""The garbage collector's youngest generation, collected less often while batches run.

Shared by the relay's rounds and the SDK's batches: both allocate several objects per
record that live until the batch ends (records, decoded events, headers, proofs, acks).
With CPython's default threshold (700) those are scanned again and again and promoted
into the oldest generation, whose full collections then walk every object of the
process (bench/relay_throughput.py, `relay_gc_default`: a quarter of the relay's CPU per
event; about 1 µs of a service's SDK work per event, docs/sdk.md). None of them form
cycles (reference counting frees them when the batch ends), so collecting less often
changes nothing but when cycles made elsewhere in the process are found.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["fewer_collections"]

_under_way = 0
_default: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def fewer_collections(young: int) -> Iterator[None]:
    """Collect the youngest generation at most every `young` allocations inside.

    The threshold is process-wide: the first of overlapping batches (several relays or
    partition workers in one process) raises it, the last restores what it found. A
    collector switched off by a threshold of 0 stays off.
    """
    global _under_way, _default  # the collector is process-wide
    if _under_way == 0:
        _default = gc.get_threshold()
        first, *older = _default
        if first:
            gc.set_threshold(max(first, young), *older)
    _under_way += 1
    try:
        yield
    finally:
        _under_way -= 1
        if _under_way == 0:
            gc.set_threshold(*_default)
