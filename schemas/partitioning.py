"""Where a keyed record lands: Kafka's default partitioner, shared by the relay and the SDK.

Both place records into partitions themselves (they build batches per partition), so they
must choose exactly the partition the Java client, librdkafka's `murmur2_random` and
aiokafka's `send()` would: every event and ack of one key stays on one partition.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["murmur2", "murmur2_many", "partition_for", "partitions_for"]

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


def partitions_for(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """`partition_for` of each key, hashed together (`murmur2_many`)."""
    count = len(partitions)
    return [partitions[(h & 0x7FFFFFFF) % count] for h in murmur2_many(keys)]


_LANES_FROM = 8
"""Keys of one length hashed together from this many on; fewer go one by one."""


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """`murmur2` of each key, the keys of one length computed together.

    A service's acks are keyed by event id (36 bytes: 9 words, ~2.2 µs each one by one).
    Here each key is a 64-bit lane of one large int holding all keys of a length, and
    murmur2's steps run on all lanes at once: a 32-bit value times a 32-bit constant
    fits its 64-bit lane, and each step masks its lanes back to 32 bits (a right shift
    first, so no bits of the next lane come along). ~0.26 µs a key for a batch's acks.
    """
    hashes = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(index)
    for length, indexes in by_length.items():
        if len(indexes) < _LANES_FROM or not length:
            for index in indexes:
                hashes[index] = murmur2(keys[index])
            continue
        joined = b"".join([keys[i] for i in indexes])
        for index, value in zip(indexes, _lanes(joined, length, len(indexes)), strict=True):
            hashes[index] = value
    return hashes


def _lanes(joined: bytes, length: int, count: int) -> tuple[int, ...]:
    """murmur2 of each of the `count` keys of `length` (> 0) bytes in `joined`, in order."""
    mask = int.from_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00" * count, "little")
    lanes = bytearray(8 * count)

    def column(start: int, width: int = 4) -> int:
        """Bytes start..start+width of every key, as the low bytes of its lane."""
        for byte in range(4):
            lanes[byte::8] = joined[start + byte :: length] if byte < width else bytes(count)
        return int.from_bytes(lanes, "little")

    h = int.from_bytes((0x9747B28C ^ length).to_bytes(8, "little") * count, "little")
    for word in range(length >> 2):
        k = (column(4 * word) * _M) & mask
        k = ((k ^ ((k >> 24) & mask)) * _M) & mask
        h = ((h * _M) & mask) ^ k
    tail = length & 3
    if tail:
        h = ((h ^ column(length - tail, tail)) * _M) & mask
    h = ((h ^ ((h >> 13) & mask)) * _M) & mask
    h ^= (h >> 15) & mask
    return struct.unpack(f"<{count}Q", h.to_bytes(8 * count, "little"))
