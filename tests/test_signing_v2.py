"""Proof format v2 (docs/protocol.md "Proof format v2"): the committed test vector
(schemas/testvectors/batch-v2.json) recomputed by hand and checked by openssl, and the
verifier's refusals of every v2 header that is not exactly what the signer wrote."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import signing
from schemas.signing import (
    BATCH_HEADER,
    PROOF_HEADER,
    SIGNATURE_HEADER,
    Signer,
    Verdict,
    Verifier,
    signed_bytes,
)
from tests import spec_v2
from tests.infra import ROOT
from tests.test_signing import VECTOR as V1_VECTOR
from tests.test_signing import _openssl_verifies, walker

__all__ = ["walker"]  # the fixture: each test taking it runs with each proof walk

VECTOR: dict[str, Any] = json.loads(
    (ROOT / "schemas" / "testvectors" / "batch-v2.json").read_text(encoding="utf-8")
)
SALT = bytes.fromhex(VECTOR["salt_hex"])
_Record = tuple[bytes | None, bytes | None]


def _fixed_salts(salt: bytes) -> Signer:
    seed = bytes.fromhex(VECTOR["private_key_seed_hex"])
    return Signer(
        Ed25519PrivateKey.from_private_bytes(seed), salts=lambda n: salt * (n // len(salt))
    )


SIGNER = _fixed_salts(SALT)
OTHER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))


def _records() -> list[_Record]:
    return [
        (r["key_utf8"].encode(), None if r["value_utf8"] is None else r["value_utf8"].encode())
        for r in VECTOR["records"]
    ]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def _root_by_hand(key: bytes, value: bytes | None, header: bytes) -> bytes:
    """The walk as docs/protocol.md states it, from the header's fields by offset."""
    steps, sides = header[89], int.from_bytes(header[90:94], "big")
    signed = b"retention-sig-v1\x00" + len(key).to_bytes(4, "big") + key + (value or b"")
    node = _h(b"\x00" + header[73:89] + signed)
    for i in range(steps):
        sibling = header[94 + 16 * i : 110 + 16 * i]
        node = _h(b"\x01" + node + sibling) if sides >> i & 1 else _h(b"\x01" + sibling + node)
    return node


def test_the_vector_by_hand() -> None:
    records = _records()
    leaves = [_h(b"\x00" + SALT + signed_bytes(k, v)) for k, v in records]
    assert [r["leaf_hex"] for r in VECTOR["records"]] == [leaf.hex() for leaf in leaves]
    assert [r["signed_bytes_hex"] for r in VECTOR["records"]] == [
        signed_bytes(k, v).hex() for k, v in records
    ]
    # Three leaves: the first two paired, the third moves up and pairs with their node.
    root = _h(b"\x01" + _h(b"\x01" + leaves[0] + leaves[1]) + leaves[2])
    assert VECTOR["root_hex"] == root.hex()
    message = b"retention-root-v2\x00" + SALT + root
    assert VECTOR["root_message_hex"] == message.hex()
    assert VECTOR["key_id"] == V1_VECTOR["key_id"]
    for entry, (key, value) in zip(VECTOR["records"], records, strict=True):
        header = bytes.fromhex(entry["header_retention_batch_hex"])
        assert header[0] == 2
        assert header[1:9].hex() == VECTOR["key_id"]
        assert header[9:73].hex() == VECTOR["signature_hex"]
        assert header[73:89] == SALT
        assert len(header) == 94 + 16 * header[89]
        assert key is not None
        assert _root_by_hand(key, value, header) == root
    assert [
        bytes.fromhex(r["header_retention_batch_hex"])[89:94].hex() for r in VECTOR["records"]
    ] == [
        "0200000003",  # siblings leaf 1 (right), leaf 2 (right)
        "0200000002",  # leaf 0 (left), leaf 2 (right)
        "0100000000",  # node(leaf 0, leaf 1) (left)
    ]


def test_our_code_reproduces_the_vector_and_verifies_it() -> None:
    headers = SIGNER.sign_batch_v2(_records())
    assert [h for [(name, h)] in headers if name == BATCH_HEADER] == [
        bytes.fromhex(r["header_retention_batch_hex"]) for r in VECTOR["records"]
    ]
    verifier = Verifier([SIGNER.public])
    for (key, value), record_headers in zip(_records(), headers, strict=True):
        checked = verifier.verify(key, value, record_headers)
        assert checked.valid
        assert checked.key_id == VECTOR["key_id"]


def test_openssl_verifies_the_root_message_and_refuses_a_changed_byte(tmp_path: Path) -> None:
    message = bytes.fromhex(VECTOR["root_message_hex"])
    signature = bytes.fromhex(VECTOR["signature_hex"])
    assert _openssl_verifies(tmp_path, message, signature)
    assert not _openssl_verifies(tmp_path, message[:-1] + bytes([message[-1] ^ 1]), signature)


def test_a_fresh_salt_per_tree_by_default() -> None:
    records = [(f"user:{n}".encode(), b"{}") for n in range(6)]
    signer = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    _, batches = signer.sign_columns_v2([k for k, _ in records], [v for _, v in records], 3)
    _, again = signer.sign_columns_v2([k for k, _ in records], [v for _, v in records], 3)
    salts = {b[73:89] for b in batches + again if b is not None}
    assert len(salts) == 4


@pytest.mark.parametrize(("count", "tree"), [(1, 128), (5, 1), (129, 128), (7, 3), (6, 3)])
def test_trees_of_one_are_signed_per_record_and_the_rest_carry_one_batch_header(
    count: int, tree: int
) -> None:
    keys: list[bytes | None] = [f"k{n}".encode() for n in range(count)]
    values: list[bytes | None] = [b"v"] * count
    signatures, batches = SIGNER.sign_columns_v2(keys, values, tree)
    verifier = Verifier([SIGNER.public])
    for n, (signature, batch) in enumerate(zip(signatures, batches, strict=True)):
        alone = tree == 1 or (n == count - 1 and count % tree == 1)
        assert (signature is not None) is alone
        assert (batch is None) is alone
        headers = [(SIGNATURE_HEADER, signature)] if alone else [(BATCH_HEADER, batch)]
        assert verifier.verify(keys[n], values[n], headers).valid


def _signed(records: list[_Record], signer: Signer = SIGNER) -> list[bytes]:
    signatures, batches = signer.sign_columns_v2(
        [k for k, _ in records], [v for _, v in records], len(records)
    )
    assert all(s is None for s in signatures)
    return [b for b in batches if b is not None]


def _verdict(record: _Record, headers: list[tuple[str, bytes | None]]) -> Verdict:
    return Verifier([SIGNER.public]).verify(record[0], record[1], headers).verdict


def test_every_single_byte_change_of_key_value_or_header_is_refused(walker: str) -> None:
    records = _records()
    record, header = records[0], _signed(records)[0]
    key, value = record
    assert key is not None
    assert value is not None
    assert _verdict(record, [(BATCH_HEADER, header)]) is Verdict.VALID
    rng = random.Random(15)
    for at in range(len(header)):
        changed = bytearray(header)
        changed[at] ^= rng.randrange(1, 256)
        assert _verdict(record, [(BATCH_HEADER, bytes(changed))]) is not Verdict.VALID, at
    for at in range(len(key)):
        changed = bytearray(key)
        changed[at] ^= 1
        assert _verdict((bytes(changed), value), [(BATCH_HEADER, header)]) is not Verdict.VALID
    for at in range(len(value)):
        changed = bytearray(value)
        changed[at] ^= 1
        assert _verdict((key, bytes(changed)), [(BATCH_HEADER, header)]) is not Verdict.VALID
    assert _verdict((key, value + b" "), [(BATCH_HEADER, header)]) is Verdict.BAD_SIGNATURE
    assert _verdict((key, None), [(BATCH_HEADER, header)]) is Verdict.BAD_SIGNATURE


def test_refusals_as_docs_protocol_lists_them(walker: str) -> None:
    records = _records()
    first, second, third = _signed(records)
    record = records[0]
    v1_headers = SIGNER.sign_batch(records)[0]

    def verdict(*headers: tuple[str, bytes | None]) -> Verdict:
        return _verdict(record, list(headers))

    malformed = Verdict.MALFORMED
    assert verdict((BATCH_HEADER, first)) is Verdict.VALID
    # The value's shape.
    assert verdict((BATCH_HEADER, b"\x01" + first[1:])) is malformed
    assert verdict((BATCH_HEADER, first[:-1])) is malformed
    assert verdict((BATCH_HEADER, first + b"\x00")) is malformed
    assert verdict((BATCH_HEADER, first + bytes(16))) is malformed  # n says 2, 3 siblings
    assert verdict((BATCH_HEADER, first[:89] + b"\x03" + first[90:])) is malformed
    assert verdict((BATCH_HEADER, first[:89] + b"\x00" + first[90:94])) is malformed
    assert verdict((BATCH_HEADER, first[:93])) is malformed
    assert verdict((BATCH_HEADER, b"")) is malformed
    for bit in range(2, 32):
        sides = (3 | 1 << bit).to_bytes(4, "big")
        assert verdict((BATCH_HEADER, first[:90] + sides + first[94:])) is malformed
    # A step count of 33 with its 33 siblings: past any tree.
    long = first[:89] + b"\x21" + first[90:94] + bytes(16 * 33)
    assert verdict((BATCH_HEADER, long)) is malformed
    # Headers: repeated, null, or beside v1's.
    assert verdict((BATCH_HEADER, first), (BATCH_HEADER, first)) is malformed
    assert verdict((BATCH_HEADER, None)) is malformed
    assert verdict((BATCH_HEADER, first), v1_headers[0]) is malformed
    assert verdict(*v1_headers, (BATCH_HEADER, first)) is malformed
    assert verdict((BATCH_HEADER, first), (PROOF_HEADER, v1_headers[1][1])) is malformed
    # The key, then the signature.
    other = _signed(records, OTHER)[0]
    assert verdict((BATCH_HEADER, other)) is Verdict.UNKNOWN_KEY
    assert verdict((BATCH_HEADER, second)) is Verdict.BAD_SIGNATURE
    assert verdict((BATCH_HEADER, first[:89] + third[89:])) is Verdict.BAD_SIGNATURE
    # The v1 root signature of the same records in a v2 header (the same key).
    v1_signature = base64.b64decode(v1_headers[0][1].split(b":", 1)[1])
    assert verdict((BATCH_HEADER, first[:9] + v1_signature + first[73:])) is Verdict.BAD_SIGNATURE
    # Another tree's salt with this tree's signature.
    swapped = first[:73] + bytes(16) + first[89:]
    assert verdict((BATCH_HEADER, swapped)) is Verdict.BAD_SIGNATURE


def test_a_v1_root_signed_over_the_v2_root_bytes_is_still_refused(walker: str) -> None:
    """Even a v1 signature over the very 16 root bytes (padded as a v1 root) is not a v2
    one: the context strings differ."""
    records = _records()
    first = _signed(records)[0]
    key, value = records[0]
    assert key is not None
    root = _root_by_hand(key, value, first)
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["private_key_seed_hex"]))
    forged = private.sign(b"retention-root-v1\x00" + SALT + root)
    assert (
        _verdict(records[0], [(BATCH_HEADER, first[:9] + forged + first[73:])])
        is Verdict.BAD_SIGNATURE
    )


_keys = st.none() | st.binary(max_size=12)
_values = st.none() | st.binary(max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(st.tuples(_keys, _values), min_size=2, max_size=40),
    which=st.integers(min_value=0),
    at=st.integers(min_value=0),
    xor=st.integers(min_value=1, max_value=255),
)
def test_a_changed_byte_anywhere_in_any_tree_is_refused(
    records: list[_Record], which: int, at: int, xor: int
) -> None:
    headers = _signed(records)
    verifier = Verifier([SIGNER.public])
    for record, header in zip(records, headers, strict=True):
        assert verifier.verify(record[0], record[1], [(BATCH_HEADER, header)]).valid
    index = which % len(records)
    changed = bytearray(headers[index])
    changed[at % len(changed)] ^= xor
    key, value = records[index]
    assert not verifier.verify(key, value, [(BATCH_HEADER, bytes(changed))]).valid


FORESTS = {"python": signing._forest_v2_py, signing.HASHING: signing._forest_v2}
"""The v2 forests a signer can sign with here: the Python reference and, where the C
extension built, `schemas._merkle.forest_v2`."""


@pytest.mark.parametrize("forest", sorted(FORESTS))
def test_the_signers_bytes_are_those_of_a_tree_built_from_the_spec(forest: str) -> None:
    """`sign_columns_v2` (the relay's call) against `tests.spec_v2`, written from
    docs/protocol.md alone: every `retention-batch` value byte for byte, and a
    `retention-signature` exactly where a tree holds one record."""
    rng = random.Random(16)
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(9, 41)))
    chosen = signing._forest_v2
    signing._forest_v2 = FORESTS[forest]
    try:
        for _ in range(60):
            n, tree = rng.randrange(0, 400), rng.choice([2, 3, 5, 64, 128, 129, 1000])
            pool = rng.randbytes(16 * (n // tree + 1))
            signer = Signer(private, salts=lambda size, pool=pool: pool[:size])
            records = [
                (
                    rng.choice([None, b"", rng.randbytes(rng.randrange(1, 300))]),
                    rng.choice([None, b"", rng.randbytes(rng.randrange(1, 500))]),
                )
                for _ in range(n)
            ]
            signatures, batches = signer.sign_columns_v2(
                [k for k, _ in records], [v for _, v in records], tree
            )
            expected: list[bytes | None] = []
            for t, start in enumerate(range(0, n, tree)):
                chunk = records[start : start + tree]
                salt = pool[16 * t : 16 * t + 16]
                kid = bytes.fromhex(signer.key_id)
                expected += (
                    [None]
                    if len(chunk) == 1
                    else spec_v2.tree_values(private.sign, kid, salt, chunk)
                )
            assert batches == expected
            assert [s is None for s in signatures] == [b is not None for b in expected]
    finally:
        signing._forest_v2 = chosen


def test_a_warm_verifier_refuses_every_one_byte_change_of_what_it_just_verified(
    walker: str,
) -> None:
    """Each record of a tree verified first (its root remembered, and with the C walk
    the walk itself), then offered again with one byte of its `retention-batch`, key or
    value changed, at every position: never valid, and the genuine record still is."""
    rng = random.Random(28)
    records: list[_Record] = [(f"user:{i}".encode(), b"v%d" % i) for i in range(128)]
    _, batches = OTHER.sign_columns_v2([k for k, _ in records], [v for _, v in records], 128)
    verifier = Verifier([OTHER.public])
    for at in [*rng.sample(range(128), 6), 0, 127]:
        (key, value), batch = records[at], batches[at]
        assert key is not None
        assert value is not None
        assert batch is not None
        changes = [
            (key, value, batch[:i] + bytes([batch[i] ^ rng.randrange(1, 256)]) + batch[i + 1 :])
            for i in range(len(batch))
        ]
        changes += [
            (key[:i] + bytes([key[i] ^ 1]) + key[i + 1 :], value, batch) for i in range(len(key))
        ]
        changes += [
            (key, value[:i] + bytes([value[i] ^ 0x80]) + value[i + 1 :], batch)
            for i in range(len(value))
        ]
        for changed_key, changed_value, changed in changes:
            assert verifier.verify(key, value, [(BATCH_HEADER, batch)]).valid
            checked = verifier.verify(changed_key, changed_value, [(BATCH_HEADER, changed)])
            assert not checked.valid, (at, changed_key, changed_value, changed.hex())
        assert verifier.verify(key, value, [(BATCH_HEADER, batch)]).valid
