"""The optional C core of the batch signature scheme (schemas/_merkle.c) against its
pure-Python reference: the same root messages and proof headers, byte for byte, over
random inputs; the committed test vector signed alike by both; records it signs verify
and tampered ones do not; `make test` fails if the extension silently did not build; and
without it, signing falls back to the Python code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import signing
from schemas.signing import PROOF_HEADER, SIGNATURE_HEADER, Signer, Verdict, Verifier
from tests.infra import ROOT
from tests.native import native_or_skip, required
from tests.test_signing import VECTOR, _Outgoing, _proofs_by_hand, _signer, _value

try:
    from schemas import _merkle
except ImportError:
    _merkle = None  # type: ignore[assignment]

IMPLEMENTATIONS = {"python": signing._forest_py}
if _merkle is not None:
    IMPLEMENTATIONS["native"] = _merkle.forest

_keys = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=12),
    # A key of 256 bytes or more is no longer one of the precomputed length prefixes.
    st.binary(min_size=255, max_size=300),
)
_values = st.none() | st.just(b"") | st.binary(max_size=500)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def hashing(request: pytest.FixtureRequest) -> Iterator[str]:
    """Sign through one implementation for the test's length."""
    chosen = signing._forest
    signing._forest = IMPLEMENTATIONS[request.param]
    try:
        yield request.param
    finally:
        signing._forest = chosen


def test_the_native_core_is_built_where_make_test_runs() -> None:
    """`make test` builds the extension (the dev and CI machines have a C compiler and
    OpenSSL's headers): if it silently did not, the native path would go untested."""
    importable = _merkle is not None
    assert ("native" if importable else "python") == signing.HASHING
    if required():
        assert importable, (
            "schemas._merkle did not build: `pip install -v --no-deps -e .` shows why "
            "(it needs a C compiler and OpenSSL's headers: `make native-deps`)"
        )


@given(
    st.lists(st.tuples(_keys, _values), min_size=1, max_size=700),
    st.integers(1, 300),
)
@settings(max_examples=300, deadline=None)
def test_native_forest_gives_the_reference_bytes(
    records: list[tuple[bytes | None, bytes | None]], tree_size: int
) -> None:
    keys, values = [k for k, _ in records], [v for _, v in records]
    expected = signing._forest_py(keys, values, tree_size)
    for name, forest in IMPLEMENTATIONS.items():
        assert forest(keys, values, tree_size) == expected, name
        # Tuples are sequences too, as Signer.sign_batch may pass them.
        assert forest(tuple(keys), tuple(values), tree_size) == expected, name


@given(st.lists(st.tuples(_keys, _values), min_size=2, max_size=300))
@settings(max_examples=100, deadline=None)
def test_each_tree_is_the_documented_one(records: list[tuple[bytes | None, bytes | None]]) -> None:
    root, proofs = _proofs_by_hand(records)
    for name, forest in IMPLEMENTATIONS.items():
        [(message, got)] = forest([k for k, _ in records], [v for _, v in records], len(records))
        assert (message, got) == (b"retention-root-v1\x00" + root, proofs), name


def test_both_refuse_what_is_not_a_record_alike() -> None:
    cases: list[tuple[list[object], list[object], int, type[Exception]]] = [
        ([b"k"], [b"v"], 0, ValueError),
        ([b"a", "b"], [b"v", b"w"], 2, TypeError),
        ([b"a", b"b"], [b"v", 7], 2, TypeError),
        (["a"], [b"v"], 1, TypeError),
    ]
    for keys, values, tree_size, error in cases:
        for forest in IMPLEMENTATIONS.values():
            with pytest.raises(error):
                forest(keys, values, tree_size)  # type: ignore[arg-type]


def test_the_native_forests_name_a_wrong_argument_count() -> None:
    native_or_skip(_merkle is not None, "schemas._merkle")
    with pytest.raises(TypeError, match=r"^forest\(\) takes 3 arguments \(2 given\)$"):
        _merkle.forest([b"k"], [b"v"])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^forest_v2\(\) takes 6 arguments \(3 given\)$"):
        _merkle.forest_v2([b"k"], [b"v"], 1)  # type: ignore[call-arg]


def test_the_vector_is_signed_alike(hashing: str) -> None:
    signer = _signer()
    batch = VECTOR["batch"]
    pairs = [(r["key_utf8"].encode(), _value(r["value_utf8"])) for r in batch["records"]]
    expected = [
        [
            (SIGNATURE_HEADER, r["header_retention_signature"].encode()),
            (PROOF_HEADER, r["header_retention_proof"].encode()),
        ]
        for r in batch["records"]
    ]
    assert signer.sign_batch(pairs) == expected, hashing
    records = [_Outgoing(k, v) for k, v in pairs]
    signer.sign_in_place(records, len(records))
    assert [r.headers for r in records] == expected, hashing
    record = VECTOR["record"]
    [lone] = signer.sign_batch([(record["key_utf8"].encode(), record["value_utf8"].encode())])
    assert lone == [(SIGNATURE_HEADER, record["header_retention_signature"].encode())]


def test_records_signed_either_way_verify_and_tampered_ones_do_not(hashing: str) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    records = [
        _Outgoing(f"user:{i}".encode() if i % 9 else None, os.urandom(i % 50) or None)
        for i in range(300)
    ]
    signer.sign_in_place(records, 128)
    verifier = Verifier([signer.public])
    for record in records:
        assert verifier.verify(record.key, record.value, record.headers).valid, hashing
    for record in records[::7]:
        tampered = (record.value or b"") + b"!"
        checked = Verifier([signer.public]).verify(record.key, tampered, record.headers)
        assert checked.verdict is Verdict.BAD_SIGNATURE, hashing
        assert verifier.verify(record.key, tampered, record.headers).verdict is (
            Verdict.BAD_SIGNATURE
        )
    # Another tree's proof with this record's signature leads to another root.
    first, last = records[0].headers, records[-1].headers
    borrowed = [first[0], last[1]]
    assert verifier.verify(records[0].key, records[0].value, borrowed).verdict is (
        Verdict.BAD_SIGNATURE
    )


def test_without_the_extension_signing_falls_back_to_the_python_code() -> None:
    """An interpreter where `schemas._merkle` cannot be imported (no compiler at install)
    signs with `_forest_py` and gives the vector's bytes, and verifies them with the
    Python walk."""
    script = (
        "import sys, json\n"
        "sys.modules['schemas._merkle'] = None\n"
        "from schemas import signing\n"
        "from tests.test_signing import VECTOR, _signer, _value\n"
        "pairs = [(r['key_utf8'].encode(), _value(r['value_utf8']))"
        " for r in VECTOR['batch']['records']]\n"
        "headers = _signer().sign_batch(pairs)\n"
        "verifier = signing.Verifier([_signer().public])\n"
        "valid = [verifier.verify(k, v, h).valid for (k, v), h in zip(pairs, headers)]\n"
        "print(json.dumps({'hashing': signing.HASHING,"
        " 'python': signing._forest is signing._forest_py and verifier._walk is None,"
        " 'valid': valid,"
        " 'headers': [[v.decode() for _, v in h] for h in headers]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    assert result["hashing"] == "python"
    assert result["python"] is True
    assert result["valid"] == [True] * len(VECTOR["batch"]["records"])
    assert result["headers"] == [
        [r["header_retention_signature"], r["header_retention_proof"]]
        for r in VECTOR["batch"]["records"]
    ]
