"""The relay's C record batches (coordinator/kafka/_recordbatch.c) are byte for byte
aiokafka's own builder's, given the same timestamp and producer state: same placement,
same batch boundaries, same bytes, same CRC-32C (both of the C module's ways of computing
it)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.kafka import recordbatch
from coordinator.kafka.producer import OutgoingRecord
from tests.native import native_or_skip

if recordbatch.BUILDER != "native":
    # Where it did not build, the fallback (aiokafka's builder) is what runs.
    native_or_skip(False, "coordinator.kafka._recordbatch", whole_module=True)

from coordinator.kafka import _recordbatch

TIMESTAMP = 1_765_000_000_123
STATE = (4242, 7, 1000)


def cpu_has_sse42() -> bool:
    """Whether this CPU has the crc32 instruction (x86-64 Linux: /proc/cpuinfo's flags)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return "sse4_2" in flags.split()


@pytest.fixture(scope="module", params=[True, False], ids=["crc-instruction", "crc-tables"])
def crc_way(request: pytest.FixtureRequest) -> Iterator[bool]:
    if request.param and not cpu_has_sse42():
        pytest.skip("this CPU has no crc32 instruction: only the tables can run")
    assert _recordbatch.set_crc_instruction(request.param) is request.param
    assert _recordbatch.crc_instruction() is request.param
    yield request.param
    _recordbatch.set_crc_instruction(True)


def test_the_crc_instruction_is_the_default_where_the_cpu_has_it() -> None:
    # A fresh interpreter: this one's tests switch the way back and forth.
    chosen = subprocess.run(
        [
            sys.executable,
            "-c",
            "from coordinator.kafka import _recordbatch; print(_recordbatch.crc_instruction())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert chosen == str(cpu_has_sse42())


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


def test_the_builder_is_what_aiokafkas_sender_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recordbatch.time, "time_ns", lambda: TIMESTAMP * 1_000_000 + 999_999)
    records = [
        OutgoingRecord(b"user:1", b"{}", [("event_id", b"e")]),
        OutgoingRecord(b"user:1", b"[]", []),
    ]
    [(partition, batch, indexes)] = recordbatch.fill(records, [0], None, 16_384)
    assert (partition, indexes, batch.record_count(), batch.closed()) == (0, [0, 1], 2, True)
    assert batch.append(timestamp=None, key=b"k", value=b"v", headers=[]) is None
    # What aiokafka's sender does: the producer state once, then `_build` (again on a retry).
    batch._set_producer_state(*STATE)
    built = batch._build()
    assert batch._build() is built
    assert batch.size() == len(built)
    with pytest.raises(RuntimeError):
        batch._set_producer_state(*STATE)
    parsed = DefaultRecordBatch(bytes(built))
    assert parsed.validate_crc()
    assert (parsed.producer_id, parsed.producer_epoch, parsed.base_sequence) == STATE
    assert [(0, bytes(built), indexes)] == expected(records, [0], [0, 0], 16_384)


def test_a_chunks_timestamp_is_the_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    [(_, batch, _)] = recordbatch.fill([OutgoingRecord(b"k", b"v", [])], [0], None, 16_384)
    after = time.time_ns() // 1_000_000
    batch._set_producer_state(*STATE)
    parsed = DefaultRecordBatch(bytes(batch._build()))
    assert before <= parsed.first_timestamp == parsed.max_timestamp <= after
    assert [record.timestamp for record in parsed] == [parsed.first_timestamp]


def test_seal_refuses_an_epoch_outside_int16_as_aiokafka_does() -> None:
    [(_, batch, _)] = _recordbatch.fill([OutgoingRecord(b"k", b"v", [])], [0], None, 100, 1)
    for epoch in (-32_769, 32_768, 70_000):
        with pytest.raises(OverflowError):
            BatchBuilder(100, 0)._set_producer_state(1, epoch, 1)
        with pytest.raises(OverflowError):
            _recordbatch.seal(batch, 1, epoch, 1)
    for epoch in (-32_768, -1, 32_767):
        _recordbatch.seal(batch, 1, epoch, 1)
        assert DefaultRecordBatch(bytes(batch)).producer_epoch == epoch


class _Shrinks:
    """A record whose `key` read runs Python that empties the caller's list (or another)."""

    value = b"v"

    def __init__(self, victim: list[object]) -> None:
        self.victim = victim
        self.headers: list[tuple[str, bytes]] = []

    @property
    def key(self) -> bytes:
        self.victim.clear()
        return b"k"


def test_a_record_that_empties_the_records_list_midway_changes_nothing_read() -> None:
    records: list[object] = []
    records += [OutgoingRecord(b"a", b"b", []), _Shrinks(records)]
    records += [OutgoingRecord(b"a", b"b", []) for _ in range(50)]
    snapshot = [OutgoingRecord(b"a", b"b", []), OutgoingRecord(b"k", b"v", [])]
    snapshot += [OutgoingRecord(b"a", b"b", []) for _ in range(50)]
    got = _recordbatch.fill(records, [0], None, 100_000, TIMESTAMP)
    assert records == []
    want = _recordbatch.fill(snapshot, [0], None, 100_000, TIMESTAMP)
    assert [(p, bytes(b), i) for p, b, i in got] == [(p, bytes(b), i) for p, b, i in want]


def test_a_record_that_empties_chosen_midway_changes_nothing_read() -> None:
    chosen: list[int] = []
    records: list[object] = [_Shrinks(chosen)]  # type: ignore[list-item]
    records += [OutgoingRecord(b"a", b"b", []) for _ in range(50)]
    chosen += [i % 2 for i in range(len(records))]
    got = _recordbatch.fill(records, [0, 1], chosen, 100_000, TIMESTAMP)
    assert chosen == []
    assert sorted(i for _, _, indexes in got for i in indexes) == list(range(51))
    assert {p: len(i) for p, _, i in got} == {0: 26, 1: 25}


def test_a_partition_that_empties_the_partitions_list_midway_changes_nothing_read() -> None:
    partitions: list[object] = []

    class Empties:
        def __index__(self) -> int:
            partitions.clear()
            return 7

    partitions += [Empties(), 1, 2, 3]
    got = _recordbatch.fill([OutgoingRecord(b"k", b"v", [])], partitions, None, 100, TIMESTAMP)
    want = _recordbatch.fill([OutgoingRecord(b"k", b"v", [])], [7, 1, 2, 3], None, 100, TIMESTAMP)
    assert [(p, bytes(b), i) for p, b, i in got] == [(p, bytes(b), i) for p, b, i in want]


def test_a_batch_ends_where_aiokafkas_compiled_builder_ends_it() -> None:
    # aiokafka's compiled builder (the one its BatchBuilder uses where built) refuses a
    # record that would bring the batch to exactly batch_size; its pure-Python one takes it.
    for size in range(60):
        records = [OutgoingRecord(b"k", b"x" * 20, []), OutgoingRecord(b"k", b"x" * size, [])]
        assert native(records, [0], None, 100) == expected(records, [0], [0, 0], 100), size
