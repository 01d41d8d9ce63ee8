from collections.abc import Sequence

from coordinator.kafka.producer import OutgoingRecord

def fill(
    records: Sequence[OutgoingRecord],
    partitions: Sequence[int],
    chosen: Sequence[int] | None,
    batch_size: int,
    timestamp_ms: int,
    /,
) -> list[tuple[int, bytearray, list[int]]]: ...
def seal(
    batch: bytearray, producer_id: int, producer_epoch: int, base_sequence: int, /
) -> None: ...
def crc32c(data: bytes | bytearray, /) -> int: ...
def murmur2(data: bytes, /) -> int: ...
def set_crc_instruction(on: bool, /) -> bool: ...
