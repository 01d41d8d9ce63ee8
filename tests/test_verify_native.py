"""The C walk of batch-signed records (`schemas._merkle.Walker`, what `Verifier` uses when
the extension is built) against the Python walk it replaces (`Verifier._batch_valid` and
`_judged`, the reference and the fallback): over genuine trees and every record an
attacker can make from them (a byte flipped in the key, value, proof text, decoded proof
or signature; steps dropped, added, moved or beyond 32; headers repeated, null, missing,
of another type, or huge), a long-lived native verifier, a long-lived Python one and a
fresh Python one give the same verdict and key id, or raise the same error.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import signing
from schemas.signing import PROOF_HEADER, SIGNATURE_HEADER, Checked, Signer, Verdict, Verifier
from tests.native import native_or_skip
from tests.test_signing import WALKERS, walking

A = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39))))
B = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(8, 40))))
UNKNOWN = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(9, 41))))

_Headers = list[tuple[str, bytes | None]]
_Record = tuple[bytes | None, bytes | None, _Headers]

native_or_skip(signing._walker is not None, "schemas._merkle's Walker", whole_module=True)


def _verifier(name: str, keys: list[Signer], **sizes: int) -> Verifier:
    with walking(name):
        return Verifier([k.public for k in keys], **sizes)


def _outcome(verifier: Verifier, key: object, value: object, headers: object) -> object:
    """The verdict, or the error's type: the two implementations must agree on both."""
    try:
        return verifier.verify(key, value, headers)  # type: ignore[arg-type]
    except Exception as exc:
        return type(exc)


def _genuine(rng: random.Random, signer: Signer) -> list[_Record]:
    size = rng.choice([2, 3, 7, 16, 33, 128])
    records: list[tuple[bytes | None, bytes | None]] = [
        (
            rng.choice([None, b"", rng.randbytes(rng.randrange(1, 12)), rng.randbytes(300)]),
            rng.choice([None, b"", rng.randbytes(rng.randrange(600))]),
        )
        for _ in range(rng.randrange(size, 2 * size + 1))
    ]
    out: list[_Record] = []
    for at in range(0, len(records), size):
        chunk = records[at : at + size]
        for (key, value), headers in zip(chunk, signer.sign_batch(chunk), strict=True):
            out.append((key, value, [("event_id", b"%036d" % at), *headers]))
    return out


def _flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return b"\x00"
    at = rng.randrange(len(data))
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


def _mutated(rng: random.Random, record: _Record, genuine: list[_Record]) -> _Record:
    key, value, headers = record
    names = [n for n, _ in headers]
    sig = headers[names.index(SIGNATURE_HEADER)][1]
    proof = headers[names.index(PROOF_HEADER)][1] if PROOF_HEADER in names else None
    assert sig is not None
    raw = base64.b64decode(proof) if proof is not None else b""

    def with_proof(text: bytes | None) -> _Record:
        return key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, text)]

    how = rng.randrange(16)
    if how == 0:
        return _flip(key or b"", rng), value, headers
    if how == 1:
        return key, _flip(value or b"", rng), headers
    if how == 2:
        return key, value, [(SIGNATURE_HEADER, _flip(sig, rng)), (PROOF_HEADER, proof)]
    if how == 3 and proof is not None:  # a character of the proof text
        return with_proof(_flip(proof, rng))
    if how == 4 and raw:  # a bit of a side (the record's index) or of a sibling
        return with_proof(base64.b64encode(_flip(raw, rng)))
    if how == 5 and raw:  # a side set out of range
        at = rng.randrange(len(raw) // 33) * 33
        bent = raw[:at] + bytes([rng.randrange(2, 256)]) + raw[at + 1 :]
        return with_proof(base64.b64encode(bent))
    if how == 6 and raw:  # steps dropped or added
        steps = [raw[i : i + 33] for i in range(0, len(raw), 33)]
        if rng.random() < 0.5:
            del steps[rng.randrange(len(steps))]
        else:
            steps.insert(
                rng.randrange(len(steps) + 1), bytes([rng.randrange(2)]) + rng.randbytes(32)
            )
        return with_proof(base64.b64encode(b"".join(steps)))
    if how == 7:  # longer than any tree's, whole steps or not
        steps = rng.choice([32, 33, 40, 1000])
        text = base64.b64encode(bytes([0]) + bytes(32)) * steps
        return with_proof(text + rng.choice([b"", b"A", b"===="]))
    if how == 8:  # a huge signature header
        return (
            key,
            value,
            [(SIGNATURE_HEADER, sig + b"A" * rng.choice([4, 1 << 16])), (PROOF_HEADER, proof)],
        )
    if how == 9:  # header shapes
        shapes: list[_Headers] = [
            [(SIGNATURE_HEADER, sig), (SIGNATURE_HEADER, sig), (PROOF_HEADER, proof)],
            [(SIGNATURE_HEADER, sig), (PROOF_HEADER, proof), (PROOF_HEADER, proof)],
            [(SIGNATURE_HEADER, None), (PROOF_HEADER, proof)],
            [(SIGNATURE_HEADER, sig), (PROOF_HEADER, None)],
            [(SIGNATURE_HEADER, sig), (PROOF_HEADER, b"")],
            [(PROOF_HEADER, proof), ("x", b""), (SIGNATURE_HEADER, sig)],
            [(PROOF_HEADER, proof)],
            [(SIGNATURE_HEADER, sig)],
            [],
        ]
        return key, value, rng.choice(shapes)
    if how == 10 and proof is not None:  # another record's proof, or another tree's signature
        other = rng.choice(genuine)[2]
        return key, value, [(SIGNATURE_HEADER, sig), *[h for h in other if h[0] == PROOF_HEADER]]
    if how == 11:
        other = rng.choice(genuine)[2]
        return key, value, [*[h for h in other if h[0] == SIGNATURE_HEADER], (PROOF_HEADER, proof)]
    if how == 12 and proof is not None:  # padding, whitespace, url-safe: not strict base64
        at = rng.randrange(len(proof) // 44) * 44
        chunk = rng.choice([b"=" * 44, b"\n" + proof[at + 1 : at + 44], proof[at : at + 43] + b"-"])
        return with_proof(proof[:at] + chunk + proof[at + 44 :])
    if how == 13:  # not the types aiokafka gives (Python judges them, or raises alike)
        return rng.choice(
            [
                (bytearray(key or b""), value, headers),
                (key, memoryview(value or b""), headers),
                (key, value, [(SIGNATURE_HEADER, sig.decode()), (PROOF_HEADER, proof)]),  # type: ignore[list-item]
                (key, value, [(SIGNATURE_HEADER.encode(), sig), (PROOF_HEADER, proof)]),  # type: ignore[list-item]
                (key, value, [[SIGNATURE_HEADER, sig], (PROOF_HEADER, proof)]),  # type: ignore[list-item]
                (key, value, [(SIGNATURE_HEADER, sig, b""), (PROOF_HEADER, proof)]),  # type: ignore[list-item]
                (1, value, headers),  # type: ignore[list-item]
            ]
        )
    if how == 14:  # the unknown key's own tree over the same records
        return rng.choice(genuine)
    return record


@given(st.integers(0, 2**32), st.sampled_from([16_384, 3, 0]), st.sampled_from([4096, 1]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_native_and_python_walks_give_the_same_verdicts(
    seed: int, memo_size: int, cache_size: int
) -> None:
    rng = random.Random(seed)
    genuine = _genuine(rng, A) + _genuine(rng, B) + _genuine(rng, UNKNOWN)
    stream = list(genuine)
    for _ in range(3):
        stream += [_mutated(rng, rng.choice(genuine), genuine) for _ in range(len(genuine))]
    rng.shuffle(stream)
    stream += genuine
    native = _verifier("native", [A, B], memo_size=memo_size, cache_size=cache_size)
    python = _verifier("python", [A, B], memo_size=memo_size, cache_size=cache_size)
    verdicts: set[object] = set()
    for key, value, headers in stream:
        want = _outcome(_verifier("python", [A, B]), key, value, headers)
        assert _outcome(python, key, value, headers) == want
        assert _outcome(native, key, value, headers) == want, (key, value, headers)
        verdicts.add(want.verdict if isinstance(want, Checked) else want)
    assert Verdict.VALID in verdicts


def test_the_mutations_reach_every_verdict() -> None:
    """The stream above is not only valid records: every verdict and the errors occur."""
    seen: set[object] = set()
    for seed in range(20):
        rng = random.Random(seed)
        genuine = _genuine(rng, A) + _genuine(rng, UNKNOWN)
        verifier = _verifier("native", [A])
        for _ in range(200):
            got = _outcome(verifier, *_mutated(rng, rng.choice(genuine), genuine))
            seen.add(got.verdict if isinstance(got, Checked) else got)
    assert seen >= {*Verdict, TypeError}


def test_headers_the_walker_declines_are_not_consumed() -> None:
    """A header iterator is left to the Python path whole (the C walk reads lists and
    tuples only), so it still verifies."""
    key, value, headers = _genuine(random.Random(1), A)[0]
    verifier = _verifier("native", [A])
    assert verifier.verify(key, value, iter(headers)).valid
    assert verifier.verify(key, value, tuple(headers)).valid


def test_genuine_records_are_walked_in_c() -> None:
    """The C walk takes genuine records, their headers as a list or a tuple, and returns
    their tree's root: the verdicts above would hold even if it declined everything."""
    native = WALKERS["native"]
    assert native is not None
    for key, value, headers in _genuine(random.Random(2), A):
        proof = dict(headers)[PROOF_HEADER]  # type: ignore[arg-type]
        root = signing._walk(signing._leaf(key, value), base64.b64decode(proof, validate=True))
        for form in (list(headers), tuple(headers)):
            assert _walk(native(), key, value, form) == (
                dict(headers)[SIGNATURE_HEADER],  # type: ignore[arg-type]
                root,
            )


def _walk(
    walker: object, key: bytes | None, value: bytes | None, headers: Iterable[object]
) -> object:
    return walker.walk(key, value, headers)  # type: ignore[attr-defined]


@given(st.integers(0, 2**32))
@settings(max_examples=100, deadline=None)
def test_a_walker_that_remembers_its_last_walk_finds_the_roots_a_fresh_one_does(
    seed: int,
) -> None:
    """The walk stops where it meets the last one: the roots it returns are those of a walker
    that remembers nothing, and of the Python walk, over genuine and mutated records in any
    order (a mutated record walked last leaves its nodes behind)."""
    native = WALKERS["native"]
    assert native is not None
    rng = random.Random(seed)
    genuine = _genuine(rng, A)
    stream = genuine + [_mutated(rng, rng.choice(genuine), genuine) for _ in range(len(genuine))]
    rng.shuffle(stream)
    remembering = native()
    for key, value, headers in stream:
        got = _walk(remembering, key, value, headers)
        assert got == _walk(native(), key, value, headers)
        if got is None:
            continue
        assert isinstance(got, tuple)
        text, root = got
        proof = dict(headers)[PROOF_HEADER]  # type: ignore[arg-type]
        leaf = signing._leaf(key, value)
        assert root == signing._walk(leaf, base64.b64decode(proof, validate=True))
        assert text == dict(headers)[SIGNATURE_HEADER]  # type: ignore[arg-type]
