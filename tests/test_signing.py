"""Signatures (SPEC §9): the committed test vector, checked by our code and by openssl,
the verifier's refusals, and `retention keys generate`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from coordinator.cli import app
from schemas import signing
from schemas.signing import (
    PROOF_HEADER,
    SIGNATURE_HEADER,
    Checked,
    Signer,
    Verdict,
    Verifier,
    key_id,
    load_private_key,
    parse_public_key,
    signed_bytes,
)
from tests.infra import ROOT

VECTOR: dict[str, Any] = json.loads(
    (ROOT / "schemas" / "testvectors" / "signature-v1.json").read_text(encoding="utf-8")
)
OPENSSL = shutil.which("openssl")


WALKERS = (
    {"python": None} if signing._walker is None else {"python": None, "native": signing._walker}
)
"""The proof walks a `Verifier` can be built with here: `native` (schemas._merkle.Walker)
where the extension built, and the Python reference it falls back to."""


@contextmanager
def walking(name: str) -> Iterator[None]:
    """Verifiers built inside walk proofs with `name`'s implementation."""
    chosen = signing._walker
    signing._walker = WALKERS[name]
    try:
        yield
    finally:
        signing._walker = chosen


@pytest.fixture(params=sorted(WALKERS))
def walker(request: pytest.FixtureRequest) -> Iterator[str]:
    with walking(request.param):
        yield request.param


def _signer() -> Signer:
    seed = bytes.fromhex(VECTOR["private_key_seed_hex"])
    return Signer(Ed25519PrivateKey.from_private_bytes(seed))


def _value(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def test_our_code_reproduces_the_vector() -> None:
    signer = _signer()
    record = VECTOR["record"]
    key, value = record["key_utf8"].encode(), record["value_utf8"].encode()
    assert (
        signer.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        == VECTOR["public_key_raw_hex"]
    )
    assert signer.key_id == VECTOR["key_id"]
    assert parse_public_key(VECTOR["public_key"]) is not None
    assert signed_bytes(key, value).hex() == record["signed_bytes_hex"]
    # Ed25519 is deterministic: the same key and bytes give the same signature.
    [(name, header)] = signer.sign_record(key, value)
    assert (name, header.decode()) == (SIGNATURE_HEADER, record["header_retention_signature"])
    batch = VECTOR["batch"]
    records = [(r["key_utf8"].encode(), _value(r["value_utf8"])) for r in batch["records"]]
    signed = signer.sign_batch(records)
    for expected, headers in zip(batch["records"], signed, strict=True):
        assert dict((k, v.decode()) for k, v in headers) == {
            SIGNATURE_HEADER: expected["header_retention_signature"],
            PROOF_HEADER: expected["header_retention_proof"],
        }
    verifier = Verifier([parse_public_key(VECTOR["public_key"])])
    for (key_, value_), headers in zip(records, signed, strict=True):
        assert verifier.verify(key_, value_, headers).valid


def _root_by_hand(key: bytes, value: bytes | None, proof_b64: str) -> bytes:
    """The proof walk as docs/protocol.md states it, without schemas.signing."""
    node = hashlib.sha256(
        b"\x00" + b"retention-sig-v1\x00" + len(key).to_bytes(4, "big") + key + (value or b"")
    ).digest()
    proof = base64.b64decode(proof_b64)
    for i in range(0, len(proof), 33):
        side, sibling = proof[i], proof[i + 1 : i + 33]
        pair = sibling + node if side == 0 else node + sibling
        node = hashlib.sha256(b"\x01" + pair).digest()
    return node


def _openssl_verifies(tmp: Path, message: bytes, signature: bytes) -> bool:
    assert OPENSSL is not None, "an independent check needs openssl 3 (pkeyutl -rawin)"
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTOR["public_key_raw_hex"]))
    (tmp / "pub.pem").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp / "msg.bin").write_bytes(message)
    (tmp / "sig.bin").write_bytes(signature)
    done = subprocess.run(
        [
            OPENSSL,
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(tmp / "pub.pem"),
            "-rawin",
            "-in",
            str(tmp / "msg.bin"),
            "-sigfile",
            str(tmp / "sig.bin"),
        ],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0 and b"Signature Verified Successfully" in done.stdout


def test_openssl_verifies_the_vector_and_refuses_a_changed_byte(tmp_path: Path) -> None:
    record = VECTOR["record"]
    message = bytes.fromhex(record["signed_bytes_hex"])
    signature = bytes.fromhex(record["signature_hex"])
    assert _openssl_verifies(tmp_path, message, signature)
    assert not _openssl_verifies(tmp_path, message[:-1] + b"X", signature)

    batch = VECTOR["batch"]
    for entry in batch["records"]:
        root = _root_by_hand(
            entry["key_utf8"].encode(), _value(entry["value_utf8"]), entry["header_retention_proof"]
        )
        assert root.hex() == batch["root_hex"]
        signature = base64.b64decode(entry["header_retention_signature"].split(":", 1)[1])
        assert _openssl_verifies(tmp_path, b"retention-root-v1\x00" + root, signature)
    assert bytes.fromhex(batch["root_message_hex"]) == b"retention-root-v1\x00" + bytes.fromhex(
        batch["root_hex"]
    )


def test_the_verifier_refuses_what_it_must() -> None:
    signer, other = _signer(), Signer(Ed25519PrivateKey.generate())
    verifier = Verifier([signer.public])
    key, value = b"user:1", b"{}"
    [good] = signer.sign_record(key, value)
    records = [(b"user:1", b"{}"), (b"user:2", b"{}"), (b"user:3", b"{}")]
    batch = signer.sign_batch(records)
    cases = {
        "unsigned": ([], Verdict.UNSIGNED),
        "other key": (other.sign_record(key, value), Verdict.UNKNOWN_KEY),
        "two signatures": ([good, good], Verdict.MALFORMED),
        "not base64": ([(SIGNATURE_HEADER, signer.key_id.encode() + b":???")], Verdict.MALFORMED),
        "no key id": ([(SIGNATURE_HEADER, good[1].split(b":")[1])], Verdict.MALFORMED),
        "proof without signature": ([batch[0][1]], Verdict.MALFORMED),
        # A genuine batch signature with another record's proof: a different root.
        "borrowed proof": ([batch[0][0], batch[1][1]], Verdict.BAD_SIGNATURE),
    }
    for name, (headers, verdict) in cases.items():
        assert verifier.verify(key, value, headers).verdict is verdict, name
    assert verifier.verify(key, b"{ }", [good]).verdict is Verdict.BAD_SIGNATURE
    assert verifier.verify(key, value, [good]).valid
    # A cached root does not make a changed record valid.
    assert verifier.verify(*records[0], batch[0]).valid
    assert verifier.verify(b"user:1", b"{ }", batch[0]).verdict is Verdict.BAD_SIGNATURE
    # Rotation: either of two keys.
    both = Verifier([signer.public, other.public])
    assert both.verify(key, value, other.sign_record(key, value)).valid
    assert both.verify(key, value, [good]).valid


def _proofs_by_hand(records: list[tuple[bytes | None, bytes | None]]) -> tuple[bytes, list[bytes]]:
    """docs/protocol.md's tree, leaf by leaf and level by level, without schemas.signing."""
    level = [
        hashlib.sha256(
            b"\x00"
            + b"retention-sig-v1\x00"
            + len(k or b"").to_bytes(4, "big")
            + (k or b"")
            + (v or b"")
        ).digest()
        for k, v in records
    ]
    steps: list[list[bytes]] = [[] for _ in records]
    positions = list(range(len(records)))
    while len(level) > 1:
        for leaf, at in enumerate(positions):
            sibling = at ^ 1
            if sibling < len(level):
                side = b"\x00" if sibling < at else b"\x01"
                steps[leaf].append(side + level[sibling])
        above = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            above.append(level[-1])
        level, positions = above, [at // 2 for at in positions]
    return level[0], [base64.b64encode(b"".join(s)) for s in steps]


def test_batch_headers_match_the_tree_by_hand_for_every_shape() -> None:
    """The relay's fast tree builder against the protocol text: every size up to 70 and
    around the powers of two, tombstones and empty keys included, byte for byte."""
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["private_key_seed_hex"]))
    signer = Signer(private)
    verifier = Verifier([signer.public])
    for size in [*range(2, 71), 127, 128, 129, 255, 256, 257, 1000]:
        records: list[tuple[bytes | None, bytes | None]] = [
            (f"user:{i}".encode() if i % 7 else b"", None if i % 5 == 3 else os.urandom(i % 40))
            for i in range(size)
        ]
        root, proofs = _proofs_by_hand(records)
        signed = signer.sign_batch(records)
        # Ed25519 is deterministic: the root's signature can be made here independently.
        expected_signature = (
            signer.key_id.encode()
            + b":"
            + base64.b64encode(private.sign(b"retention-root-v1\x00" + root))
        )
        for (key, value), headers, proof in zip(records, signed, proofs, strict=True):
            assert headers == [(SIGNATURE_HEADER, expected_signature), (PROOF_HEADER, proof)]
            assert _root_by_hand(key or b"", value, proof.decode()) == root
            assert verifier.verify(key, value, headers).valid


@dataclass
class _Outgoing:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def test_sign_in_place_appends_each_trees_headers_after_the_records_own() -> None:
    signer = _signer()
    pairs = [(f"user:{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(9)]
    records = [_Outgoing(k, v, [("event_id", str(i).encode())]) for i, (k, v) in enumerate(pairs)]
    signer.sign_in_place(records, 4)
    # Trees of 4, 4 and 1: the lone last record is signed per record (no proof).
    expected = [
        *signer.sign_batch(pairs[:4]),
        *signer.sign_batch(pairs[4:8]),
        *signer.sign_batch(pairs[8:]),
    ]
    assert expected[-1] == signer.sign_record(*pairs[8])
    for i, (record, headers) in enumerate(zip(records, expected, strict=True)):
        assert record.headers == [("event_id", str(i).encode()), *headers]
    verifier = Verifier([signer.public])
    assert all(verifier.verify(r.key, r.value, r.headers).valid for r in records)


def test_base64_around_the_signature_or_proof_is_refused() -> None:
    signer = _signer()
    verifier = Verifier([signer.public])
    records = [(b"user:1", b"{}"), (b"user:2", b"{}")]
    [(sig_name, sig), (proof_name, proof)] = signer.sign_batch(records)[0]
    for changed in (
        [(sig_name, sig + b"\n"), (proof_name, proof)],
        [(sig_name, sig), (proof_name, b" " + proof)],
    ):
        assert verifier.verify(*records[0], changed).verdict is Verdict.MALFORMED
    unpadded = [(sig_name, sig.rstrip(b"=")), (proof_name, proof)]
    assert verifier.verify(*records[0], unpadded).verdict is Verdict.MALFORMED


def test_keys_generate_writes_a_private_pem_0600_and_the_public_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path), "--name", "svc"])
    assert result.exit_code == 0, result.output
    key_path, pub_path = tmp_path / "svc.key", tmp_path / "svc.pub"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    public = parse_public_key(pub_path.read_text())
    assert load_private_key(key_path).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # Never overwrites a key.
    again = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path), "--name", "svc"])
    assert again.exit_code == 2


@pytest.mark.parametrize("memo_size", [16_384, 24])
@pytest.mark.usefixtures("walker")
def test_a_verifier_that_remembers_paths_judges_every_record_as_a_fresh_one(
    memo_size: int,
) -> None:
    """The remembered paths of valid records never change a verdict: records of one tree
    in any order, each also with one proof step, its side, its value or another record's
    proof changed, get the verdict a new verifier (remembering nothing) gives them; so do
    they when the memo is started afresh every few records."""
    rng = random.Random(5)
    signer = _signer()
    pairs = [(f"user:{n}".encode(), f'{{"n":{n}}}'.encode()) for n in range(300)]
    signed = [
        h for start in range(0, 300, 128) for h in signer.sign_batch(pairs[start : start + 128])
    ]
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    for (key, value), headers in zip(pairs, signed, strict=True):
        records.append((key, value, headers))
        sig, (_, proof_text) = headers
        proof = bytearray(base64.b64decode(proof_text))
        step = rng.randrange(len(proof) // 33)
        changed = bytearray(proof)
        changed[step * 33 + 1 + rng.randrange(32)] ^= 1
        flipped = bytearray(proof)
        flipped[step * 33] ^= 1
        other = signed[rng.randrange(len(signed))][1]
        for bad in (changed, flipped):
            records.append((key, value, [sig, (PROOF_HEADER, base64.b64encode(bytes(bad)))]))
        records.append((key, value, [sig, other]))
        records.append((key, value + b" ", headers))
    rng.shuffle(records)
    remembering = Verifier([signer.public], memo_size=memo_size)
    verdicts = Counter()
    for key, value, headers in records:
        got = remembering.verify(key, value, headers).verdict
        assert got is Verifier([signer.public]).verify(key, value, headers).verdict
        verdicts[got] += 1
    assert verdicts[Verdict.VALID] >= 300
    assert verdicts[Verdict.BAD_SIGNATURE] + verdicts[Verdict.MALFORMED] >= 2 * 300


def _batch(n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    pairs = [(f"user:{i}".encode(), f'{{"n":{i}}}'.encode()) for i in range(n)]
    return [(k, v, h) for (k, v), h in zip(pairs, _signer().sign_batch(pairs), strict=True)]


@pytest.mark.usefixtures("walker")
def test_made_up_headers_of_a_known_key_do_not_push_the_genuine_one_out() -> None:
    """Only headers a signature verified under are remembered: an attacker writing many
    distinct signature headers naming our key fills nothing, and the genuine header
    stays parsed."""
    signer = _signer()
    verifier = Verifier([signer.public], cache_size=4)
    key, value, headers = _batch(8)[0]
    assert verifier.verify(key, value, headers).valid
    kid = key_id(signer.public).encode()
    for n in range(50):
        made_up = kid + b":" + base64.b64encode(hashlib.sha512(bytes([n])).digest())
        forged = [(SIGNATURE_HEADER, made_up), headers[1]]
        assert verifier.verify(key, value, forged).verdict is Verdict.BAD_SIGNATURE
    assert list(verifier._signatures) == [headers[0][1]]
    assert verifier.verify(key, value, headers).valid


@pytest.mark.usefixtures("walker")
def test_a_proof_step_with_a_wrong_side_is_refused_without_the_plain_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A known key's record whose proof has a wrong side is walked once, by the fast
    path, with the plain check's verdict (MALFORMED with the key id; without it when
    the proof does not decode as a whole)."""
    signer = _signer()
    key, value, (sig, (_, proof_text)) = _batch(64)[5]
    proof = bytearray(base64.b64decode(proof_text))
    proof[-33] = 7
    wrong_side = [sig, (PROOF_HEADER, base64.b64encode(bytes(proof)))]
    undecodable = [sig, (PROOF_HEADER, b"!" + proof_text[1:])]
    plain = Verifier([signer.public])
    want = [plain._judged(key, value, h[0][1], h[1][1]) for h in (wrong_side, undecodable)]
    assert want == [
        Checked(Verdict.MALFORMED, key_id(signer.public)),
        Checked(Verdict.MALFORMED),
    ]
    judged: list[bytes | None] = []
    real = Verifier._judged

    def counted(self: Verifier, *args: Any) -> Checked:
        judged.append(args[3])
        return real(self, *args)

    monkeypatch.setattr(Verifier, "_judged", counted)
    got = [plain.verify(key, value, h) for h in (wrong_side, undecodable)]
    assert got == want
    assert judged == []


@pytest.mark.parametrize("memo_size", [0, 1, 5])
def test_the_walk_memo_never_holds_more_than_memo_size_nodes(memo_size: int) -> None:
    """The memo of the Python walk (the C walk keeps only its last walk)."""
    signer = _signer()
    with walking("python"):
        verifier = Verifier([signer.public], memo_size=memo_size)
    # 2**6 leaves: every walk is six steps, more than the smaller memos hold.
    for key, value, headers in _batch(64):
        assert verifier.verify(key, value, headers).valid
        assert len(verifier._paths) <= memo_size


@pytest.mark.usefixtures("walker")
def test_a_header_flushed_from_the_cache_is_parsed_once_more_not_once_per_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record whose walk meets the memo of an already verified root puts its header
    back in the cache: after another tree's header pushed it out, the tree's other
    records are judged without parsing it again."""
    signer = _signer()
    ours = _batch(8)
    pairs = [(f"other:{i}".encode(), b"{}") for i in range(8)]
    theirs = [(k, v, h) for (k, v), h in zip(pairs, signer.sign_batch(pairs), strict=True)]
    verifier = Verifier([signer.public], cache_size=1)
    assert verifier.verify(*ours[0]).valid
    assert verifier.verify(*theirs[0]).valid
    parsed: list[bytes] = []
    real = Verifier._parse

    def counted(self: Verifier, text: bytes) -> Any:
        parsed.append(text)
        return real(self, text)

    monkeypatch.setattr(Verifier, "_parse", counted)
    for record in ours[1:]:
        assert verifier.verify(*record).valid
    assert parsed == [ours[0][2][0][1]]
