"""Our murmur2 (relay and SDK) is aiokafka's and the Java client's: a key keeps its partition."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.partitioning import murmur2, murmur2_many, partition_for, partitions_for


@given(st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_murmur2_is_aiokafkas(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


def test_murmur2_of_record_keys_of_every_tail_length() -> None:
    for n in range(2000):
        key = f"user:{n}".encode()
        assert murmur2(key) == aiokafka_murmur2(key), key


def test_murmur2_matches_the_java_clients_values() -> None:
    # Kafka's UtilsTest.testMurmur2 (Java ints, here as the unsigned 32-bit values).
    java = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {key: murmur2(key) for key in java} == {k: v & 0xFFFFFFFF for k, v in java.items()}


@given(st.lists(st.binary(max_size=48), max_size=200))
@settings(max_examples=300, deadline=None)
def test_murmur2_of_many_keys_at_once_is_murmur2_of_each(keys: list[bytes]) -> None:
    assert murmur2_many(keys) == [murmur2(key) for key in keys]


def test_murmur2_of_many_keys_of_every_length_at_once() -> None:
    # Every length from none to a few words past the event ids' 36 bytes, many keys of
    # each (hashed in lanes), interleaved with a few of other lengths (hashed one by one).
    keys = [
        bytes((n * 31 + i * 7) % 256 for i in range(length))
        for n in range(20)
        for length in range(45)
    ]
    keys += [b"user:7", b"x" * 100, b""]
    assert murmur2_many(keys) == [murmur2(key) for key in keys]
    assert partitions_for(keys, [0, 1, 2]) == [partition_for(key, [0, 1, 2]) for key in keys]
    assert partitions_for(keys, [3, 5]) == [partition_for(key, [3, 5]) for key in keys]
