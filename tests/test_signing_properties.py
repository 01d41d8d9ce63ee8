"""What an attacker who can write every topic can do to `Verifier.verify` (SPEC §9): it
calls a record valid only when its signed bytes are those of a record the key signed,
whatever headers come with it, and it answers with a verdict, never an exception.

The headers are drawn from genuine ones (the key's real batch signatures and proofs),
their mutations (flipped bits and side bytes, steps dropped, added, swapped or borrowed
from another record, non-canonical base64, null values, duplicates) and noise.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.signing import (
    MAX_PROOF_STEPS,
    PROOF_HEADER,
    SIGNATURE_HEADER,
    Signer,
    Verdict,
    Verifier,
    merkle_proofs,
    signed_bytes,
)
from tests.test_signing import _proofs_by_hand

SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
OTHER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

_keys = st.none() | st.binary(max_size=12) | st.sampled_from([b"user:1", b"user:2"])
_values = st.none() | st.binary(max_size=40) | st.sampled_from([b"{}", b"{ }"])
_records = st.lists(st.tuples(_keys, _values), min_size=2, max_size=40)
_Record = tuple[bytes | None, bytes | None]
_Headers = list[tuple[str, bytes | None]]


def _steps(proof_text: bytes) -> list[bytes]:
    raw = base64.b64decode(proof_text)
    return [raw[i : i + 33] for i in range(0, len(raw), 33)]


def _noncanonical(signature_header: bytes, variant: int) -> bytes:
    """The same 64 signature bytes with other values in the last character's unused bits."""
    kid, _, text = signature_header.partition(b":")
    last = B64.index(text[-3:-2])
    return kid + b":" + text[:-3] + bytes([B64[(last & ~0xF) | variant]]) + b"=="


@st.composite
def _proof_values(draw: st.DrawFn, proofs: list[bytes]) -> bytes | None:
    """A genuine proof, or one bent in a way a verifier must not mistake for it."""
    steps = _steps(draw(st.sampled_from(proofs)))
    how = draw(
        st.sampled_from(["as is", "flip", "side", "drop", "add", "swap", "mix", "raw", "huge"])
    )
    if how == "flip" and steps:
        at, bit = draw(st.integers(0, len(steps) * 33 - 1)), draw(st.integers(0, 7))
        raw = bytearray(b"".join(steps))
        raw[at] ^= 1 << bit
        return base64.b64encode(bytes(raw))
    if how == "side" and steps:
        at = draw(st.integers(0, len(steps) - 1))
        steps[at] = bytes([draw(st.integers(0, 255))]) + steps[at][1:]
    elif how == "drop" and steps:
        del steps[draw(st.integers(0, len(steps) - 1))]
    elif how == "add":
        steps.insert(
            draw(st.integers(0, len(steps))),
            draw(st.sampled_from([b"\x00", b"\x01"])) + draw(st.binary(min_size=32, max_size=32)),
        )
    elif how == "swap" and len(steps) > 1:
        i, j = draw(st.permutations(range(len(steps))))[:2]
        steps[i], steps[j] = steps[j], steps[i]
    elif how == "mix":
        other = _steps(draw(st.sampled_from(proofs)))
        cut = draw(st.integers(0, min(len(steps), len(other))))
        steps = steps[:cut] + other[cut:]
    elif how == "raw":
        return draw(st.none() | st.binary(max_size=120) | st.just(b""))
    elif how == "huge":
        return base64.b64encode(b"".join(steps) * draw(st.integers(2, 200)))
    return base64.b64encode(b"".join(steps))


@st.composite
def _attack(
    draw: st.DrawFn,
) -> tuple[list[_Record], list[list[tuple[str, bytes]]], _Record, _Headers]:
    """A genuine batch, and a record with headers made from it by someone without the key."""
    records = draw(_records)
    signed = SIGNER.sign_batch(records)
    lone = draw(st.tuples(_keys, _values))
    genuine_signatures = [h[0][1] for h in signed] + [SIGNER.sign_record(*lone)[0][1]]
    genuine_signatures += [OTHER.sign_batch(records)[0][0][1]]
    proofs = [h[1][1] for h in signed]
    signature_values = st.sampled_from(genuine_signatures) | st.builds(
        _noncanonical, st.sampled_from(genuine_signatures), st.integers(0, 15)
    )
    header = st.one_of(
        st.tuples(
            st.just(SIGNATURE_HEADER), signature_values | st.none() | st.binary(max_size=100)
        ),
        st.tuples(st.just(PROOF_HEADER), _proof_values(proofs)),
        st.tuples(st.sampled_from(["event_id", "Retention-Signature"]), st.binary(max_size=8)),
    )
    # Mostly the shape a genuine record has (one signature, one proof), so that the
    # mutations are checked past the header counting; otherwise any list of headers.
    well_formed = st.tuples(
        st.tuples(st.just(SIGNATURE_HEADER), signature_values),
        st.tuples(st.just(PROOF_HEADER), _proof_values(proofs)),
    ).map(list)
    headers: _Headers = draw(well_formed | st.lists(header, max_size=4))
    key, value = draw(
        st.sampled_from([*records, lone])
        | st.tuples(_keys, _values)
        | st.sampled_from(records).map(lambda r: (r[0], (r[1] or b"") + b" "))
    )
    return [*records, lone], signed, (key, value), headers


@given(_attack(), st.booleans())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_only_what_the_key_signed_verifies_and_nothing_raises(
    attack: tuple[list[_Record], list[list[tuple[str, bytes]]], _Record, _Headers], warm: bool
) -> None:
    genuine, signed, (key, value), headers = attack
    verifier = Verifier([SIGNER.public])
    if warm:
        # Every genuine root already verified and cached: the cache must not widen anything.
        for record, record_headers in zip(genuine, signed, strict=False):
            assert verifier.verify(*record, record_headers).valid
    checked = verifier.verify(key, value, headers)
    assert isinstance(checked.verdict, Verdict)
    # What a verifier remembers never changes a verdict, only what it costs.
    assert checked == Verifier([SIGNER.public]).verify(key, value, headers)
    if checked.valid:
        assert signed_bytes(key, value) in {signed_bytes(k, v) for k, v in genuine}


@given(_records)
@settings(max_examples=150, deadline=None)
def test_every_record_of_a_batch_verifies_on_its_own_with_the_documented_tree(
    records: list[_Record],
) -> None:
    root, proofs = merkle_proofs(records)
    assert (root, proofs) == _proofs_by_hand(records)
    for record, headers in zip(records, SIGNER.sign_batch(records), strict=True):
        # A fresh verifier each time: no record leans on another's cached root.
        assert Verifier([SIGNER.public]).verify(*record, headers).valid


@given(_records, st.integers(1, 9))
@settings(max_examples=100, deadline=None)
def test_sign_in_place_is_sign_batch_per_tree(records: list[_Record], tree_size: int) -> None:
    @dataclass
    class Out:
        key: bytes | None
        value: bytes | None
        headers: list[tuple[str, bytes]] = field(default_factory=list)

    outgoing = [Out(k, v) for k, v in records]
    SIGNER.sign_in_place(outgoing, tree_size)
    expected = [
        headers
        for start in range(0, len(records), tree_size)
        for headers in SIGNER.sign_batch(records[start : start + tree_size])
    ]
    assert [o.headers for o in outgoing] == expected


@given(st.sampled_from(range(2, 40)), st.integers(0, 15))
@settings(max_examples=60, deadline=None)
def test_one_signature_has_one_text(size: int, variant: int) -> None:
    """Strict decoding ignores the last character's 4 unused bits; the verifier must not."""
    records = [(f"user:{i}".encode(), b"{}") for i in range(size)]
    headers = SIGNER.sign_batch(records)[0]
    text = _noncanonical(headers[0][1], variant)
    encoded = text.partition(b":")[2]
    assert base64.b64decode(encoded) == base64.b64decode(headers[0][1].partition(b":")[2])
    checked = Verifier([SIGNER.public]).verify(*records[0], [(SIGNATURE_HEADER, text), headers[1]])
    assert checked.valid is (text == headers[0][1])
    if text != headers[0][1]:
        assert checked.verdict is Verdict.MALFORMED


def test_null_empty_and_overlong_headers_are_malformed() -> None:
    records = [(b"user:1", b"{}"), (b"user:2", b"{}")]
    [(sig_name, sig), (proof_name, proof)] = SIGNER.sign_batch(records)[0]
    verifier = Verifier([SIGNER.public])
    longest = base64.b64encode(binascii.a2b_base64(proof) * MAX_PROOF_STEPS)
    for headers in (
        [(sig_name, None)],
        [(sig_name, sig), (proof_name, None)],
        [(sig_name, sig), (proof_name, b"")],
        [(sig_name, sig), (proof_name, base64.b64encode(b"\x00" * 33 * (MAX_PROOF_STEPS + 1)))],
    ):
        assert verifier.verify(*records[0], headers).verdict is Verdict.MALFORMED, headers
    # The longest proof allowed is still walked (and, not being this tree's, refused).
    at_limit = verifier.verify(*records[0], [(sig_name, sig), (proof_name, longest)])
    assert at_limit.verdict is Verdict.BAD_SIGNATURE
