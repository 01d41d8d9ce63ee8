"""Records held as columns (`RecordColumns`, the relay's chunks) make the same record
batches, byte for byte, as the `OutgoingRecord`s they stand for: through the C module's
`fill_columns` (against its `fill`, itself compared with aiokafka's builder in
tests/test_recordbatch.py) and through aiokafka's builder reading them as records; and
`Signer.sign_columns` gives each record the headers `sign_in_place` appends."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.kafka import recordbatch
from coordinator.kafka.producer import OutgoingRecord, RecordColumns
from schemas.signing import BATCH_HEADER, PROOF_HEADER, SIGNATURE_HEADER, Signer
from tests.native import native_or_skip
from tests.test_recordbatch import STATE, TIMESTAMP, by_partition, expected, kafka_placement

if recordbatch.BUILDER != "native":
    native_or_skip(False, "coordinator.kafka._recordbatch", whole_module=True)

from coordinator.kafka import _recordbatch

SIGNER = Signer(Ed25519PrivateKey.generate())


def fill_columns(
    records: RecordColumns, partitions: list[int], chosen: list[int] | None, batch_size: int
) -> list[tuple[int, bytes, list[int]]]:
    out = []
    for partition, batch, indexes in _recordbatch.fill_columns(
        records.keys,
        records.values,
        records.names,
        records.columns,
        partitions,
        chosen,
        batch_size,
        TIMESTAMP,
    ):
        _recordbatch.seal(batch, *STATE)
        out.append((partition, bytes(batch), indexes))
    return out


def fill(
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


header_value = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.text(max_size=40),
    st.binary(min_size=2000, max_size=9000),
)


@st.composite
def columns_(draw: st.DrawFn) -> RecordColumns:
    n = draw(st.integers(1, 50))
    keys = draw(st.lists(st.binary(max_size=200), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(st.none(), st.binary(max_size=3000)), min_size=n, max_size=n))
    names = draw(st.lists(st.text(max_size=20), max_size=8))
    columns: list[Sequence[bytes | str | None]] = [
        draw(st.lists(header_value, min_size=n, max_size=n)) for _ in names
    ]
    return RecordColumns(list(keys), values, tuple(names), columns)


@settings(max_examples=300, deadline=None)
@given(
    records=columns_(),
    partitions=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=7, unique=True),
    batch_size=st.sampled_from([64, 1000, 16_384, 524_288]),
)
def test_columns_make_the_batches_of_the_records_they_stand_for(
    records: RecordColumns, partitions: list[int], batch_size: int
) -> None:
    as_records = list(records)
    got = fill_columns(records, partitions, None, batch_size)
    assert got == fill(as_records, partitions, None, batch_size)
    want = expected(as_records, partitions, kafka_placement(as_records, partitions), batch_size)
    assert by_partition(got) == by_partition(want)


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.one_of(st.none(), st.binary(max_size=30)), min_size=1, max_size=40),
    data=st.data(),
)
def test_chosen_partitions_place_null_keys(keys: list[bytes | None], data: st.DataObject) -> None:
    chosen = data.draw(st.lists(st.integers(0, 2), min_size=len(keys), max_size=len(keys)))
    records = RecordColumns(keys, [b"v"] * len(keys), ("event_id",), [["e"] * len(keys)])
    got = fill_columns(records, [3, 5, 8], chosen, 16_384)
    assert got == fill(list(records), [3, 5, 8], chosen, 16_384)


def test_a_record_reads_its_columns_and_leaves_out_a_none_header() -> None:
    records = RecordColumns(
        [b"k1", None], [b"v1", b"v2"], ("event_id", "p"), [["e1", b"e2"], [b"p1", None]]
    )
    assert list(records) == [
        OutgoingRecord(b"k1", b"v1", [("event_id", b"e1"), ("p", b"p1")]),
        OutgoingRecord(None, b"v2", [("event_id", b"e2")]),
    ]
    assert list(records[1:]) == [records[1]]
    assert len(records) == 2


@pytest.mark.parametrize(
    ("keys", "values", "names", "columns"),
    [
        ([b"k"], [], (), []),
        ([b"k"], [b"v"], ("a",), []),
        ([b"k"], [b"v"], ("a",), [[b"x", b"y"]]),
    ],
)
def test_columns_of_other_lengths_are_refused(
    keys: list[bytes | None],
    values: list[bytes | None],
    names: tuple[str, ...],
    columns: list[Sequence[bytes | str | None]],
) -> None:
    with pytest.raises(ValueError, match="one"):
        RecordColumns(keys, values, names, columns)
    with pytest.raises(ValueError, match="one"):
        _recordbatch.fill_columns(keys, values, names, columns, [0], None, 100, 1)


@pytest.mark.parametrize(
    ("keys", "values", "names", "columns", "chosen", "error"),
    [
        (["k"], [b"v"], (), [], None, TypeError),
        ([b"k"], [bytearray(b"v")], (), [], None, TypeError),
        ([b"k"], [b"v"], (b"h",), [[b"v"]], None, TypeError),
        ([b"k"], [b"v"], ("h",), [[5]], None, TypeError),
        ([b"k"], [b"v"], ("h",), [[memoryview(b"v")]], None, TypeError),
        ([b"k"], [b"v"], ("\ud800",), [[b"v"]], None, UnicodeEncodeError),
        ([b"k"], [b"v"], ("h",), [["\ud800"]], None, UnicodeEncodeError),
        ([b"k"], [b"v"], ("h",), 5, None, TypeError),
        ([b"k"], [b"v"], ("h",) * 9, [[b"v"]] * 9, None, ValueError),
        ([None], [b"v"], (), [], None, ValueError),
        ([b"k"], [b"v"], (), [], [2], ValueError),
        ([b"k"], [b"v"], (), [], [-1], ValueError),
        ([b"k"], [b"v"], (), [], [], ValueError),
    ],
)
def test_refuses_what_it_cannot_write(
    keys: list[object],
    values: list[object],
    names: object,
    columns: object,
    chosen: list[int] | None,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        _recordbatch.fill_columns(keys, values, names, columns, [0, 1], chosen, 100, 1)  # type: ignore[arg-type]


def test_the_producers_fill_takes_columns_as_the_records_they_stand_for() -> None:
    records = RecordColumns(
        [f"user:{n}".encode() for n in range(300)],
        [b"x" * n for n in range(300)],
        ("event_id",),
        [[f"id-{n}" for n in range(300)]],
    )
    got = recordbatch.fill_columns(records, [0, 1, 2], None, 4096)
    want = recordbatch.fill(list(records), [0, 1, 2], None, 4096)
    # One clock reading each: compare the records, not the batch timestamps.
    for (p, batch, indexes), (q, other, others) in zip(got, want, strict=True):
        assert (p, indexes) == (q, others)
        assert batch._batch[61:] == other._batch[61:]
        assert batch._batch[:27] == other._batch[:27]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 400),
    tree_size=st.sampled_from([1, 2, 3, 7, 128]),
    tombstones=st.booleans(),
)
def test_sign_columns_gives_the_headers_sign_in_place_appends(
    n: int, tree_size: int, tombstones: bool
) -> None:
    keys: list[bytes | None] = [f"user:{i}".encode() for i in range(n)]
    values: list[bytes | None] = [
        None if tombstones and i % 5 == 0 else b"v" * (i % 50) for i in range(n)
    ]
    records = [OutgoingRecord(k, v, []) for k, v in zip(keys, values, strict=True)]
    SIGNER.sign_in_place(records, tree_size)
    signatures, proofs = SIGNER.sign_columns(keys, values, tree_size)
    columns = RecordColumns(keys, values, (SIGNATURE_HEADER, PROOF_HEADER), [signatures, proofs])
    assert list(columns) == records


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 400),
    tree_size=st.sampled_from([1, 2, 3, 7, 128]),
    tombstones=st.booleans(),
)
def test_v2_columns_give_each_record_the_headers_sign_batch_v2_gives_its_tree(
    n: int, tree_size: int, tombstones: bool
) -> None:
    """Proof format v2 as the relay sends it: one `retention-batch` per record, or a tree
    of one's `retention-signature`, and through the C record batches the same bytes."""
    keys: list[bytes | None] = [f"user:{i}".encode() for i in range(n)]
    values: list[bytes | None] = [
        None if tombstones and i % 5 == 0 else b"v" * (i % 50) for i in range(n)
    ]
    salt = bytes(range(16))
    signer = Signer(SIGNER._private, salts=lambda size: salt * (size // 16))
    signatures, batches = signer.sign_columns_v2(keys, values, tree_size)
    columns = RecordColumns(keys, values, (SIGNATURE_HEADER, BATCH_HEADER), [signatures, batches])
    expected: list[list[tuple[str, bytes]]] = []
    for start in range(0, n, tree_size):
        pairs = list(
            zip(keys[start : start + tree_size], values[start : start + tree_size], strict=True)
        )
        expected += signer.sign_batch_v2(pairs)
    assert [record.headers for record in columns] == expected
    if n:
        got = recordbatch.fill_columns(columns, [0, 1, 2], None, 1 << 16)
        want = recordbatch.fill(list(columns), [0, 1, 2], None, 1 << 16)
        for (p, batch, indexes), (q, other, others) in zip(got, want, strict=True):
            assert (p, indexes) == (q, others)
            assert batch._batch[61:] == other._batch[61:]
