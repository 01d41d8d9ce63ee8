"""The relay's C record batches (coordinator/kafka/_recordbatch.c) are byte for byte
aiokafka's own builder's, given the same timestamp and producer state: same placement,
same batch boundaries, same bytes, same CRC-32C (both of the C module's ways of computing
it)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.kafka import recordbatch
from coordinator.kafka.producer import OutgoingRecord

if recordbatch.BUILDER != "native":
    # `make test` builds it; elsewhere the fallback (aiokafka's builder) is what runs.
    if os.environ.get("RETENTION_TEST_NATIVE_SIGNING") == "required":
        raise AssertionError("coordinator.kafka._recordbatch did not build")
    pytest.skip("coordinator.kafka._recordbatch is not built", allow_module_level=True)

from coordinator.kafka import _recordbatch

TIMESTAMP = 1_765_000_000_123
STATE = (4242, 7, 1000)


@pytest.fixture(scope="module", params=[True, False], ids=["crc-instruction", "crc-tables"])
def crc_way(request: pytest.FixtureRequest) -> Iterator[bool]:
    used = _recordbatch.set_crc_instruction(request.param)
    yield used
    _recordbatch.set_crc_instruction(True)


def expected(
    records: Sequence[OutgoingRecord], partitions: list[int], placed: list[int], batch_size: int
) -> list[tuple[int, bytes, list[int]]]:
    """What the relay's aiokafka path builds: per partition, records appended to one
    builder until it is full, then a new one."""
    batches: list[tuple[int, BatchBuilder, list[int]]] = []
    open_: dict[int, tuple[BatchBuilder, list[int]]] = {}
    for index, (record, partition) in enumerate(zip(records, placed, strict=True)):
        current = open_.get(partition)
        kwargs = {"key": record.key, "value": record.value, "headers": record.headers}
        if current is not None and current[0].append(timestamp=TIMESTAMP, **kwargs) is not None:
            current[1].append(index)
            continue
        builder = BatchBuilder(batch_size, 0)
        assert builder.append(timestamp=TIMESTAMP, **kwargs) is not None
        open_[partition] = (builder, [index])
        batches.append((partition, builder, open_[partition][1]))
    built = []
    for partition, builder, indexes in batches:
        builder._set_producer_state(*STATE)
        built.append((partition, bytes(builder._build()), indexes))
    return built


def native(
    records: Sequence[OutgoingRecord],
    partitions: list[int],
    chosen: list[int] | None,
    batch_size: int,
) -> list[tuple[int, bytes, list[int]]]:
    out = []
    for partition, batch, indexes in _recordbatch.fill(
        records, partitions, chosen, batch_size, TIMESTAMP
    ):
        _recordbatch.seal(batch, *STATE)
        out.append((partition, bytes(batch), indexes))
    return out


def by_partition(batches: list[tuple[int, bytes, list[int]]]) -> dict[int, list[object]]:
    """A partition's batches in order (across partitions the order does not matter)."""
    grouped: dict[int, list[object]] = {}
    for partition, batch, indexes in batches:
        grouped.setdefault(partition, []).append((batch, indexes))
    return grouped


def kafka_placement(records: Sequence[OutgoingRecord], partitions: list[int]) -> list[int]:
    return [
        partitions[(aiokafka_murmur2(r.key) & 0x7FFFFFFF) % len(partitions)]
        for r in records
        if r.key is not None
    ]


fields = st.one_of(st.none(), st.binary(max_size=40), st.binary(min_size=120, max_size=20_000))
headers = st.lists(
    st.tuples(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=300))), max_size=4
)
records_ = st.lists(
    st.builds(OutgoingRecord, st.binary(max_size=300), fields, headers), min_size=1, max_size=60
)


@settings(max_examples=300, deadline=None)
@given(
    records=records_,
    partitions=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=7, unique=True),
    batch_size=st.sampled_from([64, 1000, 16_384, 524_288]),
)
def test_batches_equal_aiokafkas_builder(
    crc_way: bool, records: list[OutgoingRecord], partitions: list[int], batch_size: int
) -> None:
    got = native(records, partitions, None, batch_size)
    want = expected(records, partitions, kafka_placement(records, partitions), batch_size)
    assert by_partition(got) == by_partition(want)


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.one_of(st.none(), st.binary(max_size=30)), min_size=1, max_size=40),
    data=st.data(),
)
def test_chosen_partitions_place_null_keys(keys: list[bytes | None], data: st.DataObject) -> None:
    partitions = [3, 5, 8]
    chosen = data.draw(st.lists(st.integers(0, 2), min_size=len(keys), max_size=len(keys)))
    records = [OutgoingRecord(key, b"v", [("event_id", b"e")]) for key in keys]
    got = native(records, partitions, chosen, 16_384)
    want = expected(records, partitions, [partitions[c] for c in chosen], 16_384)
    assert by_partition(got) == by_partition(want)


def test_a_record_larger_than_the_batch_goes_alone() -> None:
    records = [OutgoingRecord(b"k", b"x" * 5000, []) for _ in range(3)]
    got = native(records, [0], None, 1000)
    assert [indexes for _, _, indexes in got] == [[0], [1], [2]]
    assert got == expected(records, [0], [0, 0, 0], 1000)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000))
def test_crc32c_and_murmur2_equal_aiokafkas(crc_way: bool, data: bytes) -> None:
    assert _recordbatch.crc32c(data) == calc_crc32c(data)
    assert _recordbatch.murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF


@pytest.mark.parametrize(
    ("record", "chosen", "error"),
    [
        (OutgoingRecord("k", b"v", []), None, TypeError),  # type: ignore[arg-type]
        (OutgoingRecord(b"k", bytearray(b"v"), []), None, TypeError),  # type: ignore[arg-type]
        (OutgoingRecord(b"k", b"v", [("h",)]), None, TypeError),  # type: ignore[list-item]
        (OutgoingRecord(b"k", b"v", [(b"h", b"v")]), None, TypeError),  # type: ignore[list-item]
        (OutgoingRecord(b"k", b"v", [("h", "v")]), None, TypeError),  # type: ignore[list-item]
        (OutgoingRecord(b"k", b"v", [("\ud800", b"v")]), None, UnicodeEncodeError),
        (OutgoingRecord(b"k", b"v", 5), None, TypeError),  # type: ignore[arg-type]
        (OutgoingRecord(None, b"v", []), None, ValueError),
        (OutgoingRecord(b"k", b"v", []), [3], ValueError),
        (OutgoingRecord(b"k", b"v", []), [-1], ValueError),
        (OutgoingRecord(b"k", b"v", []), [], ValueError),
    ],
)
def test_refuses_what_it_cannot_write(
    record: OutgoingRecord, chosen: list[int] | None, error: type[Exception]
) -> None:
    good = OutgoingRecord(b"a", b"b", [])
    with pytest.raises(error):
        _recordbatch.fill([good, record], [0, 1], None if chosen is None else [0, *chosen], 100, 1)


def test_the_builder_is_what_aiokafkas_sender_expects() -> None:
    records = [OutgoingRecord(b"user:1", b"{}", [("event_id", b"e")])]
    [(partition, batch, indexes)] = recordbatch.fill(records, [0], None, 16_384)
    assert (partition, indexes, batch.record_count(), batch.closed()) == (0, [0], 1, True)
    assert batch.append(timestamp=None, key=b"k", value=b"v", headers=[]) is None
    batch._set_producer_state(*STATE)
    built = batch._build()
    assert batch._build() is built
    assert batch.size() == len(built)
    with pytest.raises(RuntimeError):
        batch._set_producer_state(*STATE)


def test_a_batch_ends_where_aiokafkas_compiled_builder_ends_it() -> None:
    # aiokafka's compiled builder (the one its BatchBuilder uses where built) refuses a
    # record that would bring the batch to exactly batch_size; its pure-Python one takes it.
    for size in range(60):
        records = [OutgoingRecord(b"k", b"x" * 20, []), OutgoingRecord(b"k", b"x" * size, [])]
        assert native(records, [0], None, 100) == expected(records, [0], [0, 0], 100), size
