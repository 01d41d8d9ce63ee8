"""The relay's Kafka record batches, written in C where `coordinator.kafka._recordbatch`
was built (setup.py, optional), else by aiokafka's own builder: the same bytes.

`fill` places a chunk's records on their partitions and writes each partition's records
into v2 record batches in one call, where aiokafka's builder takes one Python call per
record and computes the batch's CRC-32C a byte at a time. `CRecordBatch` hands such a
batch to aiokafka's `send_batch` in place of its `BatchBuilder` (the methods aiokafka's
accumulator and sender call), and writes the idempotent producer's id, epoch and base
sequence and the CRC when the sender takes it. Every record of a batch carries the
batch's timestamp (one clock reading per chunk, where aiokafka reads the clock per
record): the bytes are those of aiokafka's builder given that timestamp for each record
(tests/test_recordbatch.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from coordinator.kafka.producer import OutgoingRecord, RecordColumns

try:
    from coordinator.kafka import _recordbatch
except ImportError:  # not built: the producer uses aiokafka's builder
    _recordbatch = None  # type: ignore[assignment]

__all__ = ["BUILDER", "CRecordBatch", "fill", "fill_columns"]

BUILDER: Literal["native", "aiokafka"] = "aiokafka" if _recordbatch is None else "native"
"""Who writes the relay's record batches (the relay's `relay_started` log line says it)."""


class CRecordBatch:
    """One partition's closed record batch, as aiokafka's `send_batch` takes a builder."""

    __slots__ = ("_batch", "_count", "_sealed", "_state")

    def __init__(self, batch: bytearray, count: int) -> None:
        self._batch = batch
        self._count = count
        # aiokafka's builder starts without a producer id (non-idempotent producers keep it).
        self._state = (-1, -1, 0)
        self._sealed = False

    def append(self, **_: object) -> None:
        """Closed: aiokafka's `send()` finds no room here and starts a batch of its own."""
        return

    def close(self) -> None:
        """Always closed: the batch was written whole."""

    def closed(self) -> bool:
        return True

    def size(self) -> int:
        return len(self._batch)

    def record_count(self) -> int:
        return self._count

    def _set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> None:
        # aiokafka calls this once, before the first `_build`, and never after.
        if self._sealed:
            raise RuntimeError("the batch was already built")
        self._state = (producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytearray:
        if not self._sealed:
            assert _recordbatch is not None
            _recordbatch.seal(self._batch, *self._state)
            self._sealed = True
        return self._batch


def fill(
    records: Sequence[OutgoingRecord],
    partitions: Sequence[int],
    chosen: Sequence[int] | None,
    batch_size: int,
) -> list[tuple[int, CRecordBatch, list[int]]]:
    """The records in batches of at most `batch_size` bytes (a record alone may be larger)
    per partition, a partition's batches in order: (partition, batch, the records'
    positions). A record goes to `partitions[murmur2(key) & 0x7FFFFFFF % len(partitions)]`
    (Kafka's default), or to `partitions[chosen[i]]` where `chosen` is given (it must be
    for null keys). Keys, values and header values are `bytes` or None, as
    `OutgoingRecord` types them: a bytearray or memoryview, which aiokafka's builder would
    take, raises TypeError here.
    """
    assert _recordbatch is not None
    timestamp = time.time_ns() // 1_000_000
    return _batches(_recordbatch.fill(records, partitions, chosen, batch_size, timestamp))


def fill_columns(
    records: RecordColumns,
    partitions: Sequence[int],
    chosen: Sequence[int] | None,
    batch_size: int,
) -> list[tuple[int, CRecordBatch, list[int]]]:
    """`fill` for records held as columns (the relay's chunks): read straight from the
    columns, no record object made; the same batches, byte for byte, as `fill` of the
    `OutgoingRecord`s they stand for. Header values may also be str (sent as UTF-8)."""
    assert _recordbatch is not None
    timestamp = time.time_ns() // 1_000_000
    return _batches(
        _recordbatch.fill_columns(
            records.keys,
            records.values,
            records.names,
            records.columns,
            partitions,
            chosen,
            batch_size,
            timestamp,
        )
    )


def _batches(
    written: list[tuple[int, bytearray, list[int]]],
) -> list[tuple[int, CRecordBatch, list[int]]]:
    return [
        (partition, CRecordBatch(batch, len(indexes)), indexes)
        for partition, batch, indexes in written
    ]
