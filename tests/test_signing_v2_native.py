"""Proof format v2's C core (`schemas._merkle.forest_v2` and `root_v2`) against its
pure-Python reference (`_forest_v2_py`, `_root_v2_py`): the same `retention-batch` values
byte for byte over random records, tree sizes and salts; the same roots and verdicts over
genuine and tampered values; and the v1 C walker leaves any record with a
`retention-batch` header to Python."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import signing
from schemas.signing import BATCH_HEADER, Signer, Verdict, Verifier
from tests.native import native_or_skip
from tests.test_signing import walking

try:
    from schemas import _merkle
except ImportError:
    _merkle = None  # type: ignore[assignment]

native_or_skip(_merkle is not None, "schemas._merkle", whole_module=True)

SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37))))
KID = bytes.fromhex(SIGNER.key_id)
_Record = tuple[bytes | None, bytes | None]

_keys = st.one_of(
    st.none(), st.just(b""), st.binary(max_size=12), st.binary(min_size=255, max_size=300)
)
_values = st.none() | st.just(b"") | st.binary(max_size=400)


def _fake_sign(message: bytes) -> bytes:
    """64 bytes that depend on the message: enough to compare the two forests' bytes."""
    return hashlib.sha512(message).digest()


@given(
    st.lists(st.tuples(_keys, _values), min_size=0, max_size=500),
    st.integers(1, 200),
    st.binary(min_size=16, max_size=16),
)
@settings(max_examples=300, deadline=None)
def test_native_forest_v2_gives_the_reference_bytes(
    records: list[_Record], tree_size: int, seed: bytes
) -> None:
    keys, values = [k for k, _ in records], [v for _, v in records]
    trees = -(-len(records) // tree_size)
    salts = b"".join(
        hashlib.sha256(seed + bytes([t % 256, t // 256])).digest()[:16] for t in range(trees)
    )
    expected = signing._forest_v2_py(keys, values, tree_size, salts, _fake_sign, KID)
    assert _merkle.forest_v2(keys, values, tree_size, salts, _fake_sign, KID) == expected
    assert (
        _merkle.forest_v2(tuple(keys), tuple(values), tree_size, salts, _fake_sign, KID) == expected
    )
    for at, value in enumerate(expected):
        if value is None:
            continue
        key, record_value = records[at]
        assert _merkle.root_v2(key, record_value, value) == signing._root_v2_py(
            key, record_value, value
        )


def test_the_signers_salts_and_signatures_reach_the_native_forest() -> None:
    records = [(f"user:{n}".encode(), b"{}" if n % 3 else None) for n in range(257)]
    salt = bytes(range(16))
    signer = Signer(
        Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37))), salts=lambda n: salt * (n // 16)
    )
    keys, values = [k for k, _ in records], [v for _, v in records]
    chosen = signing._forest_v2
    try:
        signing._forest_v2 = signing._forest_v2_py
        python = signer.sign_columns_v2(keys, values, 128)
    finally:
        signing._forest_v2 = chosen
    assert signing._forest_v2 is _merkle.forest_v2
    assert signer.sign_columns_v2(keys, values, 128) == python
    signatures, batches = python
    assert signatures[:256] == [None] * 256  # the last record is a tree of one
    assert signatures[256] is not None
    assert batches[256] is None


_Forest = Callable[..., object]


@pytest.fixture(params=["python", "native"])
def forest_v2(request: pytest.FixtureRequest) -> _Forest:
    return signing._forest_v2_py if request.param == "python" else _merkle.forest_v2


def test_both_refuse_what_is_not_a_record_or_a_salt_alike(forest_v2: _Forest) -> None:
    salts = bytes(64)
    cases: list[tuple[tuple[object, ...], type[Exception]]] = [
        (([b"k"], [b"v"], 0, salts, _fake_sign, KID), ValueError),
        (([b"a", "b"], [b"v", b"w"], 2, salts, _fake_sign, KID), TypeError),
        (([b"a", b"b"], [b"v", 7], 2, salts, _fake_sign, KID), TypeError),
        (([b"a", b"b"], [b"v"], 2, salts, _fake_sign, KID), ValueError),
        (([b"a"] * 5, [b"v"] * 5, 1, bytes(64), _fake_sign, KID), ValueError),
        (([b"a", b"b"], [b"v", b"w"], 2, salts, lambda m: b"short", KID), ValueError),
        (([b"a", b"b"], [b"v", b"w"], 2, salts, _fake_sign, KID[:7]), ValueError),
    ]
    for args, error in cases:
        with pytest.raises(error):
            forest_v2(*args)


def test_both_roots_refuse_a_value_of_the_wrong_length_alike() -> None:
    [value] = [
        b
        for b in signing._forest_v2_py([b"a", b"b"], [b"v", b"w"], 2, bytes(16), _fake_sign, KID)[
            :1
        ]
    ]
    assert value is not None
    for bad in (b"", value[:93], value[:-1], value + bytes(16), value[:89] + b"\x00" + value[90:]):
        for root in (signing._root_v2_py, _merkle.root_v2):
            with pytest.raises(ValueError, match="length"):
                root(b"a", b"v", bad)


def test_native_and_python_walks_give_the_same_verdicts_on_tampered_values() -> None:
    """The C walker (with its memo of the last walk), and the Python path with either
    root function, over each record of genuine trees then each with a byte changed."""
    rng = random.Random(2026)
    records = [
        (rng.randbytes(rng.randrange(12)) or None, rng.randbytes(rng.randrange(90)) or None)
        for _ in range(77)
    ]
    _, batches = SIGNER.sign_columns_v2([k for k, _ in records], [v for _, v in records], 32)
    chosen = signing._root_v2
    verdicts: dict[str, list[tuple[Verdict, str | None]]] = {}
    ways = (
        ("python", "python", signing._root_v2_py),
        ("python root in C", "python", _merkle.root_v2),
        ("native", "native", _merkle.root_v2),
    )
    for name, walk, root in ways:
        signing._root_v2 = root
        try:
            with walking(walk):
                verifier = Verifier([SIGNER.public])
            out = verdicts[name] = []
            case = random.Random(15)
            for (key, value), batch in zip(records, batches, strict=True):
                assert batch is not None
                checked = verifier.verify(key, value, [(BATCH_HEADER, batch)])
                out.append((checked.verdict, checked.key_id))
                changed = bytearray(batch)
                changed[case.randrange(len(changed))] ^= case.randrange(1, 256)
                checked = verifier.verify(key, value, [(BATCH_HEADER, bytes(changed))])
                out.append((checked.verdict, checked.key_id))
        finally:
            signing._root_v2 = chosen
    assert verdicts["python"] == verdicts["python root in C"] == verdicts["native"]
    assert {v for v, _ in verdicts["native"][::2]} == {Verdict.VALID}
    tampered = {v for v, _ in verdicts["native"][1::2]}
    assert Verdict.VALID not in tampered
    assert {Verdict.MALFORMED, Verdict.BAD_SIGNATURE, Verdict.UNKNOWN_KEY} <= tampered


def test_the_c_walker_walks_a_lone_batch_header_and_leaves_v1_headers_beside_one() -> None:
    records: list[_Record] = [(b"user:1", b"{}"), (b"user:2", b"{}")]
    v1 = SIGNER.sign_batch(records)[0]
    [v2] = SIGNER.sign_batch_v2(records)[0]
    with walking("native"):
        verifier = Verifier([SIGNER.public])
    walker = verifier._walk
    assert walker is not None
    assert walker(b"user:1", b"{}", v1) is not None
    assert walker(b"user:1", b"{}", [v2]) == (
        v2[1][1:89],
        signing._root_v2_py(b"user:1", b"{}", v2[1]),
    )
    for declined in ([*v1, v2], [v2, v1[0]], [v2, v1[1]], [v2, v2], [(BATCH_HEADER, v2[1][:-1])]):
        assert walker(b"user:1", b"{}", declined) is None
        assert verifier.verify(b"user:1", b"{}", declined).verdict is Verdict.MALFORMED
    assert verifier.verify(b"user:1", b"{}", [v2]).valid
    # A side bit at or above the step count: declined, then refused in Python.
    high = v2[1][:90] + (1 | 1 << 5).to_bytes(4, "big") + v2[1][94:]
    assert walker(b"user:1", b"{}", [(BATCH_HEADER, high)]) is None
    assert verifier.verify(b"user:1", b"{}", [(BATCH_HEADER, high)]).verdict is Verdict.MALFORMED
