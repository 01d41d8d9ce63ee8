"""Where a keyed record lands: Kafka's default partitioner, shared by the relay and the SDK.

Both place records into partitions themselves (they build batches per partition), so they
must choose exactly the partition the Java client, librdkafka's `murmur2_random` and
aiokafka's `send()` would: every event and ack of one key stays on one partition.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["murmur2", "partition_for"]

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS: dict[int, struct.Struct] = {}
"""Little-endian 32-bit word readers by word count (keys come in few lengths)."""


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of a record key (tests/test_murmur2.py checks it against aiokafka's
    and the Java client's values).

    aiokafka's version assembles every word byte by byte in Python (~1.4 µs for a short
    key: more than anything else the relay does per record but the signature hashing, and
    a few per cent of a service's CPU); reading the words in one `struct` call halves it.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    if words:
        reader = _WORDS.get(words)
        if reader is None:
            reader = _WORDS[words] = struct.Struct(f"<{words}I")
        for k in reader.unpack_from(data):
            k = (k * _M) & _MASK
            k = ((k ^ (k >> 24)) * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        end = length - tail
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of `partitions` (all of the topic's, in order) a keyed record goes to."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
