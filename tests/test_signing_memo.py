"""A long-lived `Verifier` (its walk memo, root cache and parsed headers filled by genuine
records of several keys) against a verifier written straight from docs/protocol.md that
remembers nothing: for every record an attacker who can write the topic could make from
what it has read, both give the same verdict and the same key id.

The attacks: a genuine proof with another record's leaf; proofs that share a remembered
suffix but differ below it; side bytes flipped or out of range; steps dropped, duplicated
or added past 32; non-canonical base64 of a remembered step (padding, whitespace, the
url-safe alphabet, bits moved across a step's boundary); repeated, missing and null
headers; a key the verifier does not hold; a genuine tree re-signed by an unknown key, or
by another known key, with the signature header of the first; a signature header whose
key id names another known key. Memo sizes down to one node start it afresh mid-tree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.signing import (
    PROOF_HEADER,
    SIGNATURE_HEADER,
    Checked,
    Signer,
    Verdict,
    Verifier,
    key_id,
    signed_bytes,
)
from tests.test_signing import WALKERS, walking

A = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35))))
B = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(4, 36))))
ROTATED_OUT = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37))))
UNKNOWN = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(6, 38))))

_Headers = list[tuple[str, bytes | None]]
_Record = tuple[bytes | None, bytes | None, _Headers]


def _reference(
    keys: list[Ed25519PublicKey], key: bytes | None, value: bytes | None, headers: _Headers
) -> Checked:
    """docs/protocol.md, "Headers" and "Per batch", check by check, remembering nothing."""
    signatures = [h for n, h in headers if n == SIGNATURE_HEADER]
    proofs = [h for n, h in headers if n == PROOF_HEADER]
    if not signatures:
        return Checked(Verdict.MALFORMED if proofs else Verdict.UNSIGNED)
    if len(signatures) > 1 or len(proofs) > 1:
        return Checked(Verdict.MALFORMED)
    text = signatures[0]
    if text is None or (proofs and proofs[0] is None):
        return Checked(Verdict.MALFORMED)
    raw: bytes | None = None
    if proofs:
        proof_text = proofs[0]
        assert proof_text is not None
        if not 0 < len(proof_text) <= 32 * 44:
            return Checked(Verdict.MALFORMED)
        try:
            raw = binascii.a2b_base64(proof_text, strict_mode=True)
        except binascii.Error:
            return Checked(Verdict.MALFORMED)
        if len(raw) % 33:
            return Checked(Verdict.MALFORMED)
    kid, sep, encoded = text.partition(b":")
    try:
        kid_text = kid.decode("ascii")
        signature = binascii.a2b_base64(encoded, strict_mode=True)
    except (UnicodeDecodeError, binascii.Error):
        return Checked(Verdict.MALFORMED)
    if not sep or len(signature) != 64 or base64.b64encode(signature) != encoded:
        return Checked(Verdict.MALFORMED)
    public = {key_id(k): k for k in keys}.get(kid_text)
    if public is None:
        return Checked(Verdict.UNKNOWN_KEY, kid_text)
    message = signed_bytes(key, value)
    if raw is not None:
        node = hashlib.sha256(b"\x00" + message).digest()
        for at in range(0, len(raw), 33):
            side, sibling = raw[at], raw[at + 1 : at + 33]
            if side == 0:
                node = hashlib.sha256(b"\x01" + sibling + node).digest()
            elif side == 1:
                node = hashlib.sha256(b"\x01" + node + sibling).digest()
            else:
                return Checked(Verdict.MALFORMED, kid_text)
        message = b"retention-root-v1\x00" + node
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return Checked(Verdict.BAD_SIGNATURE, kid_text)
    return Checked(Verdict.VALID, kid_text)


def _steps(proof_text: bytes) -> list[bytes]:
    raw = base64.b64decode(proof_text)
    return [raw[i : i + 33] for i in range(0, len(raw), 33)]


def _text(steps: list[bytes]) -> bytes:
    return base64.b64encode(b"".join(steps))


def _noncanonical(proof_text: bytes, rng: random.Random) -> bytes:
    """Text a lenient decoder reads as the same steps (or nearly), a strict one refuses."""
    at = rng.randrange(0, len(proof_text) // 44) * 44
    chunk = proof_text[at : at + 44]
    how = rng.randrange(7)
    if how == 0:  # url-safe alphabet: same length, same bytes for a lenient decoder
        chunk = chunk.replace(b"+", b"-").replace(b"/", b"_")
        if b"-" not in chunk and b"_" not in chunk:
            chunk = b"-" + chunk[1:]
    elif how == 1:  # whitespace in place of nothing: length no longer a multiple of 44
        chunk = chunk[:20] + b"\n" + chunk[20:]
    elif how == 2:  # whitespace, length kept: a character moved out for it
        chunk = chunk[:20] + b" " + chunk[20:43]
    elif how == 3:  # padding in the middle of the proof
        chunk = chunk[:42] + b"=="
    elif how == 4:  # bits moved across a step boundary: whole steps, shifted
        chunk = chunk[1:] + proof_text[at + 44 : at + 45] if at + 45 <= len(proof_text) else chunk
    elif how == 5:  # the step's text in another padding form
        chunk = chunk + b"===="
    else:  # a character outside the alphabet
        chunk = chunk[:10] + b"*" + chunk[11:]
    return proof_text[:at] + chunk + proof_text[at + 44 :]


def _mutations(rng: random.Random, genuine: list[_Record], foreign: list[_Record]) -> list[_Record]:
    """Records an attacker makes from the genuine records it read (and its own trees)."""
    out: list[_Record] = []
    batch = [r for r in genuine if len(r[2]) == 2]
    for _ in range(40):
        key, value, headers = rng.choice(batch)
        sig, proof = headers[0][1], headers[1][1]
        assert sig is not None
        assert proof is not None
        steps = _steps(proof)
        other_key, other_value, other_headers = rng.choice(genuine)
        how = rng.randrange(16)
        if how == 0:  # a valid proof with another leaf
            out.append((other_key, other_value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, proof)]))
        elif how == 1:  # same suffix above step i, a step below it changed
            i = rng.randrange(len(steps))
            changed = bytearray(steps[i])
            changed[rng.randrange(1, 33)] ^= 1 << rng.randrange(8)
            bent = [*steps[:i], bytes(changed), *steps[i + 1 :]]
            out.append((key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text(bent))]))
        elif how == 2:  # a side byte flipped, or out of range
            i = rng.randrange(len(steps))
            side = rng.choice([steps[i][0] ^ 1, 2, 255, 0x80 | steps[i][0]])
            bent = [*steps[:i], bytes([side]) + steps[i][1:], *steps[i + 1 :]]
            out.append((key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text(bent))]))
        elif how == 3:  # truncated: a step dropped from the bottom, the top or between
            i = rng.randrange(len(steps))
            out.append(
                (
                    key,
                    value,
                    [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text(steps[:i] + steps[i + 1 :]))],
                )
            )
        elif how == 4:  # overlong: past 32 steps, made of remembered steps
            long = (steps * (33 // len(steps) + 1))[: rng.choice([32, 33, 40])]
            out.append((key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text(long))]))
        elif how == 5:  # non-canonical base64 of remembered steps
            bent_text = _noncanonical(proof, rng)
            out.append((key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, bent_text)]))
        elif how == 6:  # header counts and nulls
            shapes: list[_Headers] = [
                [(SIGNATURE_HEADER, sig), (SIGNATURE_HEADER, sig), (PROOF_HEADER, proof)],
                [(SIGNATURE_HEADER, sig), (PROOF_HEADER, proof), (PROOF_HEADER, proof)],
                [(SIGNATURE_HEADER, None), (SIGNATURE_HEADER, sig), (PROOF_HEADER, proof)],
                [(PROOF_HEADER, proof)],
                [(SIGNATURE_HEADER, None), (PROOF_HEADER, proof)],
                [(SIGNATURE_HEADER, sig), (PROOF_HEADER, None)],
                [(SIGNATURE_HEADER, sig), (PROOF_HEADER, b"")],
                [(PROOF_HEADER, proof), (SIGNATURE_HEADER, sig)],
                [],
                [(SIGNATURE_HEADER, sig)],
            ]
            out.append((key, value, rng.choice(shapes)))
        elif how == 7:  # the step just above the leaf, from another record of the tree
            other_proof = other_headers[1][1] if len(other_headers) == 2 else proof
            assert other_proof is not None
            mixed = _steps(other_proof)[:1] + steps[1:]
            out.append((key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text(mixed))]))
        elif how == 8:  # a remembered sibling's step moved to another level
            i, j = rng.randrange(len(steps)), rng.randrange(len(steps))
            moved = list(steps)
            moved.insert(j, moved.pop(i))
            out.append((key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text(moved))]))
        elif how == 9:  # the proof starting one level up (the leaf passed off as a node)
            out.append(
                (key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text(steps[1:] or steps))])
            )
        elif how == 10:  # another known key's id on this signature
            kid, _, encoded = sig.partition(b":")
            swapped = (B.key_id if kid == A.key_id.encode() else A.key_id).encode()
            out.append(
                (key, value, [(SIGNATURE_HEADER, swapped + b":" + encoded), (PROOF_HEADER, proof)])
            )
        elif how == 11:  # the signature of another tree of the same key
            other_sig = other_headers[0][1]
            out.append((key, value, [(SIGNATURE_HEADER, other_sig), (PROOF_HEADER, proof)]))
        elif how == 12:  # the signature's unused bits set
            kid, _, encoded = sig.partition(b":")
            alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
            last = alphabet.index(encoded[-3:-2])
            bent_sig = (
                kid + b":" + encoded[:-3] + bytes([alphabet[last ^ rng.randrange(1, 16)]]) + b"=="
            )
            out.append((key, value, [(SIGNATURE_HEADER, bent_sig), (PROOF_HEADER, proof)]))
        elif how == 13:  # a step appended above the root
            extra = bytes([rng.randrange(2)]) + rng.randbytes(32)
            out.append(
                (key, value, [(SIGNATURE_HEADER, sig), (PROOF_HEADER, _text([*steps, extra]))])
            )
        else:  # the attacker's own trees (unknown and rotated-out keys, genuine leaves)
            out.append(rng.choice(foreign))
    return out


def _trees(
    signer: Signer, records: list[tuple[bytes | None, bytes | None]], size: int
) -> list[_Record]:
    out: list[_Record] = []
    for at in range(0, len(records), size):
        chunk = records[at : at + size]
        for (key, value), headers in zip(chunk, signer.sign_batch(chunk), strict=True):
            out.append((key, value, list(headers)))
    return out


def _foreign(records: list[tuple[bytes | None, bytes | None]], size: int) -> list[_Record]:
    """Trees over the genuine records (their inner nodes are the remembered ones) signed by
    keys the verifier does not hold, or re-signed by UNKNOWN but carrying A's or B's header."""
    out = _trees(UNKNOWN, records, size) + _trees(ROTATED_OUT, records, size)
    a_trees = _trees(A, records, size)
    for (key, value, headers), (_, _, theirs) in zip(
        a_trees, _trees(UNKNOWN, records, size), strict=True
    ):
        if len(theirs) == 2:
            theirs_sig = theirs[0][1]
            assert theirs_sig is not None
            encoded = theirs_sig.partition(b":")[2]
            for claimed in (A.key_id, B.key_id):
                out.append(
                    (key, value, [(SIGNATURE_HEADER, claimed.encode() + b":" + encoded), theirs[1]])
                )
        # A's genuine header over a tree that grafts an attacker's record onto A's nodes.
        if len(headers) == 2:
            out.append(((key or b"") + b"!", value, headers))
    # A tree the attacker built: a record of its own plus A's records, re-using A's header.
    grafted = [(b"user:evil", b'{"n":-1}'), *records[: size - 1]]
    for (key, value, headers), (_, _, a_headers) in zip(
        _trees(UNKNOWN, grafted, size), a_trees, strict=False
    ):
        if len(headers) == 2 and len(a_headers) == 2:
            out.append((key, value, [a_headers[0], headers[1]]))
    return out


def _run(seed: int, memo_size: int, cache_size: int, keys: list[Signer], walker: str) -> None:
    rng = random.Random(seed)
    size = rng.choice([2, 3, 5, 8, 13, 64])
    records: list[tuple[bytes | None, bytes | None]] = [
        (f"user:{rng.randrange(10**6)}".encode(), rng.randbytes(rng.randrange(40)))
        for _ in range(rng.randrange(size, 3 * size + 2))
    ]
    # Tombstones, a null key, and a record sent twice in one tree (a leaf that is its
    # own sibling).
    records[rng.randrange(len(records))] = (b"user:gone", None)
    records[rng.randrange(len(records))] = (None, b"{}")
    twice = rng.randrange(len(records) - 1)
    records[twice + 1] = records[twice]
    genuine = _trees(A, records, size) + _trees(B, records, size)
    # B also signs other trees (other sizes): the same leaves under other nodes.
    genuine += _trees(B, list(reversed(records)), max(2, size - 1))
    foreign = _foreign(records, size)
    stream = genuine + _mutations(rng, genuine, foreign)
    rng.shuffle(stream)
    # Genuine records again among attacks, and a rotated-out key the verifier never held.
    stream += genuine + _mutations(rng, genuine, foreign)
    publics = [s.public for s in keys]
    with walking(walker):
        verifier = Verifier(publics, memo_size=memo_size, cache_size=cache_size)
    for key, value, headers in stream:
        want = _reference(publics, key, value, headers)
        got = verifier.verify(key, value, headers)
        assert got == want, (key, value, headers)
        if got.valid:
            assert (key, value) in set(records) | {(k, v) for k, v, _ in genuine}


@pytest.mark.parametrize("walker", sorted(WALKERS))
@pytest.mark.parametrize("memo_size", [16_384, 64, 5, 1, 0])
@pytest.mark.parametrize("keys", [[A, B], [A], [B]], ids=["A+B", "A", "B"])
def test_any_memo_state_gives_the_verdict_of_the_protocol(
    memo_size: int, keys: list[Signer], walker: str
) -> None:
    for seed in range(6):
        _run(seed, memo_size, cache_size=4096, keys=keys, walker=walker)


@given(
    st.integers(0, 2**32),
    st.sampled_from([16_384, 7, 1]),
    st.sampled_from([4096, 2, 1]),
    st.sampled_from(sorted(WALKERS)),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_memo_state_gives_the_verdict_of_the_protocol_hypothesis(
    seed: int, memo_size: int, cache_size: int, walker: str
) -> None:
    _run(seed, memo_size, cache_size, [A, B], walker)
