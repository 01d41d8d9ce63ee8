"""The garbage collector's youngest generation, collected less often while batches run.

Shared by the relay's rounds, the tracker's ack batches and the SDK's batches: each
allocates several objects per record that live until the batch ends (records, decoded
events, headers, proofs, acks, rows).
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

_holders: list[int] = []
"""The `young` of every batch under way: the threshold is the largest of them."""
_default: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def fewer_collections(young: int) -> Iterator[None]:
    """Collect the youngest generation at most every `young` allocations inside.

    The threshold is process-wide and batches overlap (the relay's rounds and the
    tracker's ack batches in one `serve`, several partition workers): while any runs it
    is the largest of their values (never below what was found), so each gets at least
    the window it was configured with; when the last ends it is restored to what the
    first found. A collector switched off by a threshold of 0 stays off. Hold it over a
    batch's work, not over a wait for the next batch: held while idle, it would be
    raised for the whole process all the time.
    """
    global _default  # the collector is process-wide
    if not _holders:
        _default = gc.get_threshold()
    _holders.append(young)
    try:
        _apply()
        yield
    finally:
        _holders.remove(young)
        _apply()


def _apply() -> None:
    first, *older = _default
    if not _holders:
        gc.set_threshold(*_default)
    elif first:
        gc.set_threshold(max(first, *_holders), *older)
