from collections.abc import Sequence

from coordinator.kafka.producer import OutgoingRecord

# Keys, values and header values must be `bytes` or None, and header names `str`: a
# bytearray or memoryview (which aiokafka's own builder takes) is refused with TypeError.
# The relay only sends bytes (OutgoingRecord). The three sequences are copied first, so
# Python code run while reading a record (a property) cannot change what is read.
def fill(
    records: Sequence[OutgoingRecord],
    partitions: Sequence[int],
    chosen: Sequence[int] | None,
    batch_size: int,
    timestamp_ms: int,
    /,
) -> list[tuple[int, bytearray, list[int]]]: ...

# `fill` over columns: record i is keys[i], values[i] and a header (names[c], columns[c][i])
# per column where that is not None; header values bytes or str (its UTF-8). All copied
# into tuples first, as in `fill`; at most 8 columns.
def fill_columns(
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    names: Sequence[str],
    columns: Sequence[Sequence[bytes | str | None]],
    partitions: Sequence[int],
    chosen: Sequence[int] | None,
    batch_size: int,
    timestamp_ms: int,
    /,
) -> list[tuple[int, bytearray, list[int]]]: ...

# OverflowError for an epoch outside int16, as aiokafka's builder.
def seal(
    batch: bytearray, producer_id: int, producer_epoch: int, base_sequence: int, /
) -> None: ...
def crc32c(data: bytes | bytearray, /) -> int: ...
def murmur2(data: bytes, /) -> int: ...
def set_crc_instruction(on: bool, /) -> bool: ...
def crc_instruction() -> bool: ...
