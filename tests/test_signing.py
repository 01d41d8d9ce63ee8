"""Signatures (SPEC §9): the committed test vector, checked by our code and by openssl,
the verifier's refusals, and `retention keys generate`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from coordinator.cli import app
from schemas.signing import (
    PROOF_HEADER,
    SIGNATURE_HEADER,
    Signer,
    Verdict,
    Verifier,
    load_private_key,
    parse_public_key,
    signed_bytes,
)
from tests.infra import ROOT

VECTOR: dict[str, Any] = json.loads(
    (ROOT / "schemas" / "testvectors" / "signature-v1.json").read_text(encoding="utf-8")
)
OPENSSL = shutil.which("openssl")


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
