"""Ed25519 signatures on Kafka records (SPEC §9; byte for byte in docs/protocol.md).

Three forms, told apart by their headers:

* **per record** (the reference scheme, no proof header): the signature covers
  `signed_bytes(key, value)` directly. Services sign their registrations so, and an
  ack batch of one record.
* **per batch**: the producer builds a Merkle tree over the `signed_bytes` of a batch's
  records and signs its root once; each record carries that signature and its own
  inclusion proof, so it stays verifiable on its own. A verifier checks a root's
  signature once and remembers it and the inner nodes it walked through (`Verifier`), so
  a batch of n records costs one Ed25519 verify, log2(n) SHA-256 for its first record and
  about two for each other. The relay signs its events so (proof format v1), and the SDK
  a batch's acks (bench/signing.py).
* **per batch, compact** (proof format v2, the relay's default): the same trees over
  salted leaves with 16-byte nodes, and one binary `retention-batch` header per record
  carrying key id, root signature, salt and inclusion proof (about half v1's bytes, which
  cost the signed relay most of its rate, docs/relay.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain, cycle
from pathlib import Path
from typing import Literal, Protocol, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "BATCH_HEADER",
    "HASHING",
    "MAX_PROOF_STEPS",
    "PROOF_HEADER",
    "SIGNATURE_HEADER",
    "Checked",
    "ProofFormat",
    "SignableRecord",
    "SignatureMode",
    "SignatureSettings",
    "Signer",
    "SigningKeyError",
    "Verdict",
    "Verifier",
    "accepts",
    "format_public_key",
    "generate_key_files",
    "key_id",
    "load_private_key",
    "merkle_proofs",
    "parse_public_key",
    "signed_bytes",
]

SIGNATURE_HEADER = "retention-signature"
PROOF_HEADER = "retention-proof"
RECORD_CONTEXT = b"retention-sig-v1\x00"
ROOT_CONTEXT = b"retention-root-v1\x00"
_LEAF, _NODE = b"\x00", b"\x01"
_LEAF_PREFIX = _LEAF + RECORD_CONTEXT
_LEFT, _RIGHT = 0, 1
"""Proof step sides: where the sibling hash goes when combining."""
_SIDES = (bytes([_LEFT]), bytes([_RIGHT]))
_STEP_B64 = 44
"""Base64 characters of one 33-byte proof step."""
MAX_PROOF_STEPS = 32
"""A longer proof is refused before any hashing: it would be a tree of over 2**32 records
(the relay's trees hold at most 50,000), and each step costs a verifier a SHA-256."""
_PUBLIC_PREFIX = "ed25519:"

BATCH_HEADER = "retention-batch"
ROOT_CONTEXT_V2 = b"retention-root-v2\x00"
"""A v2 root signature covers this, the tree's salt and its root: never a v1 message, so
no v1 root signature can pass for a v2 one."""
_FORMAT_V2 = b"\x02"
_HALF = 16
"""Bytes of a v2 node (SHA-256 truncated) and of a v2 salt."""
_BATCH_FIXED = 94
"""Bytes of a `retention-batch` value before its siblings: format 1, key id 8, signature
64, salt 16, steps 1, sides 4."""


class ProofFormat(StrEnum):
    """`RETENTION_RELAY_PROOF_FORMAT`: the headers the relay proves a tree's records with."""

    V1 = "v1"
    """`retention-signature` (base64 text) and `retention-proof` (base64 steps) per record:
    what SDKs older than proof format v2 read."""
    V2 = "v2"
    """One binary `retention-batch` per record (docs/protocol.md)."""


class SigningKeyError(ValueError):
    """A key file or key text that is not an Ed25519 key of ours (the text says why)."""


class SignatureMode(StrEnum):
    """`RETENTION_SIGNATURES`: what a reader does with unsigned records."""

    REQUIRED = "required"
    """Only records with a valid signature from a known key count."""
    PERMISSIVE = "permissive"
    """Signed records are verified; unsigned ones count, with a warning (fleet rollout)."""
    OFF = "off"
    """Nothing is verified (logged at start, reported by /healthz)."""


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 lower-case hex characters of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def format_public_key(public: Ed25519PublicKey) -> str:
    return _PUBLIC_PREFIX + base64.b64encode(_raw(public)).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """`ed25519:<standard base64 of the 32-byte raw public key>`."""
    text = text.strip()
    if not text.startswith(_PUBLIC_PREFIX):
        raise SigningKeyError(f"a public key starts with {_PUBLIC_PREFIX!r}")
    try:
        raw = base64.b64decode(text[len(_PUBLIC_PREFIX) :], validate=True)
    except binascii.Error:
        raise SigningKeyError("a public key is standard base64 after 'ed25519:'") from None
    if len(raw) != 32:
        raise SigningKeyError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """A PEM PKCS#8 Ed25519 private key (what `retention keys generate` writes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # Never echo the file's content: it is a secret.
        raise SigningKeyError(f"{path} is not a PEM PKCS#8 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def generate_key_files(out: Path | str, name: str) -> tuple[Path, Path]:
    """Write `NAME.key` (PEM PKCS#8, mode 0600) and `NAME.pub` (`ed25519:<base64>`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created with 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    pub_path.write_text(format_public_key(private.public_key()) + "\n", encoding="ascii")
    return key_path, pub_path


def signed_bytes(key: bytes | None, value: bytes | None) -> bytes:
    """What a record's signature covers: context, 4-byte big-endian key length, key, value."""
    k, v = key or b"", value or b""
    return RECORD_CONTEXT + len(k).to_bytes(4, "big") + k + v


def _leaf(key: bytes | None, value: bytes | None) -> bytes:
    return hashlib.sha256(_LEAF + signed_bytes(key, value)).digest()


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


Headers = list[tuple[str, bytes]]


class SignableRecord(Protocol):
    """A record about to be sent: what `Signer.sign_in_place` reads and extends."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Headers: ...


class Signer:
    """Signs records with one private key."""

    def __init__(
        self, private: Ed25519PrivateKey, *, salts: Callable[[int], bytes] = os.urandom
    ) -> None:
        """`salts(n)`: n random bytes, the v2 trees' salts (fixed only in tests and test
        vectors: a salt must be unpredictable to whoever chose a tree's records)."""
        self._private = private
        self._salts = salts
        self.public = private.public_key()
        self.key_id = key_id(self.public)
        self._key_id_raw = bytes.fromhex(self.key_id)

    @classmethod
    def from_file(cls, path: Path | str) -> Signer:
        return cls(load_private_key(path))

    def _header(self, message: bytes) -> tuple[str, bytes]:
        signature = base64.b64encode(self._private.sign(message))
        return (SIGNATURE_HEADER, self.key_id.encode("ascii") + b":" + signature)

    def sign_record(self, key: bytes | None, value: bytes | None) -> Headers:
        """The reference scheme: one signature over this record's signed bytes."""
        return [self._header(signed_bytes(key, value))]

    def sign_batch(self, records: Sequence[tuple[bytes | None, bytes | None]]) -> list[Headers]:
        """One signature over the Merkle root of `records`; headers per record, in order.

        A batch of one is signed per record (no proof: it would be empty)."""
        if not records:
            return []
        [(message, proofs)] = _forest(
            [k for k, _ in records], [v for _, v in records], len(records)
        )
        signature = self._header(message)
        if not proofs:
            return [[signature]]
        return [[signature, (PROOF_HEADER, proof)] for proof in proofs]

    def sign_in_place(self, records: Sequence[SignableRecord], tree_size: int) -> None:
        """Sign `records` one Merkle tree per `tree_size` consecutive records, appending the
        signature and proof headers to each record's own header list.

        The wire bytes are those of `sign_batch` on each chunk; this form exists for the
        relay, which signs every event it publishes: no per-record lists or records are
        rebuilt, so signing costs little more than the hashing itself.
        """
        start = 0
        for message, proofs in _forest(
            [r.key for r in records], [r.value for r in records], tree_size
        ):
            signature = self._header(message)
            if not proofs:
                # A tree of one: signed per record, no proof header.
                records[start].headers.append(signature)
                start += 1
                continue
            for record, proof in zip(records[start : start + len(proofs)], proofs, strict=True):
                record.headers.extend((signature, (PROOF_HEADER, proof)))
            start += len(proofs)

    def sign_columns(
        self,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        tree_size: int,
    ) -> tuple[list[bytes], list[bytes | None]]:
        """`sign_in_place` for records held as columns: each record's `retention-signature`
        and `retention-proof` header values, in order (a proof None: a tree of one, whose
        record carries the signature alone). The same trees and bytes as `sign_in_place`;
        what it saves is the header tuples and list growth per record (the relay's
        `coordinator.kafka.producer.RecordColumns` carries these columns as they are).
        """
        signatures: list[bytes] = []
        proofs: list[bytes | None] = []
        for message, tree_proofs in _forest(keys, values, tree_size):
            signature = self._header(message)[1]
            if not tree_proofs:
                signatures.append(signature)
                proofs.append(None)
                continue
            signatures += [signature] * len(tree_proofs)
            proofs += tree_proofs
        return signatures, proofs

    def sign_columns_v2(
        self,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        tree_size: int,
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        """Proof format v2 of `sign_columns`: each record's `retention-signature` and
        `retention-batch` header values, in order, exactly one of the two not None (a
        tree of one is signed per record, as in v1). One Ed25519 signature and one fresh
        16-byte salt per tree."""
        if tree_size < 1:
            raise ValueError("a signature tree holds at least one record")
        n = len(keys)
        batches = _forest_v2(
            keys,
            values,
            tree_size,
            self._salts(_HALF * -(-n // tree_size)),
            self._private.sign,
            self._key_id_raw,
        )
        signatures: list[bytes | None] = [None] * n
        # Trees of one: every record when trees hold one, else at most the last record.
        singles = range(n) if tree_size == 1 else range(n - 1 if n % tree_size == 1 else n, n)
        for i in singles:
            signatures[i] = self._header(signed_bytes(keys[i], values[i]))[1]
        return signatures, batches

    def sign_batch_v2(self, records: Sequence[tuple[bytes | None, bytes | None]]) -> list[Headers]:
        """`sign_batch` in proof format v2: one `retention-batch` header per record (a
        batch of one: the per-record signature)."""
        signatures, batches = self.sign_columns_v2(
            [k for k, _ in records], [v for _, v in records], max(len(records), 1)
        )
        return [
            [(SIGNATURE_HEADER, signature)]
            if signature is not None
            else [(BATCH_HEADER, cast("bytes", batch))]
            for signature, batch in zip(signatures, batches, strict=True)
        ]


_Forest = list[tuple[bytes, list[bytes]]]
"""Per tree, in order: the message its signature covers and each record's
`retention-proof` header value (none for a tree of one, signed per record)."""

_LENGTHS = [n.to_bytes(4, "big") for n in range(256)]
"""The 4-byte big-endian lengths of short record keys, looked up instead of encoded."""


def _forest_py(
    keys: Sequence[bytes | None], values: Sequence[bytes | None], tree_size: int
) -> _Forest:
    """Trees of `tree_size` consecutive records (the last may be smaller): what each
    tree's signature covers and every record's proof (see `_Forest`).

    The reference for `schemas._merkle.forest` (the same bytes; `_forest` is whichever
    runs). Its cost is almost all Python around SHA-256: a call, a bytes object and the
    concatenations per leaf and per inner node, about 0.3 µs each through hashlib where
    OpenSSL's own hashing of a 65-byte node takes under 0.1 µs.
    """
    if tree_size < 1:
        raise ValueError("a signature tree holds at least one record")
    sha256, lengths = hashlib.sha256, _LENGTHS
    forest: _Forest = []
    for start in range(0, len(keys), tree_size):
        tree_keys, tree_values = keys[start : start + tree_size], values[start : start + tree_size]
        if len(tree_keys) == 1:
            forest.append((signed_bytes(tree_keys[0], tree_values[0]), []))
            continue
        # Tombstones and null keys are rare: only their trees pay for replacing None.
        ks = cast("Sequence[bytes]", tree_keys)
        vs = cast("Sequence[bytes]", tree_values)
        if None in tree_keys or None in tree_values:
            ks, vs = [k or b"" for k in tree_keys], [v or b"" for v in tree_values]
        leaves = [
            sha256(
                _LEAF_PREFIX
                + (lengths[len(k)] if len(k) < 256 else len(k).to_bytes(4, "big"))
                + k
                + v
            ).digest()
            for k, v in zip(ks, vs, strict=True)
        ]
        root, proofs = _tree(leaves)
        forest.append((ROOT_CONTEXT + root, proofs))
    return forest


def _forest_v2_py(
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    tree_size: int,
    salts: bytes,
    sign: Callable[[bytes], bytes],
    kid: bytes,
) -> list[bytes | None]:
    """Trees of `tree_size` consecutive records, as `_forest_py`, in proof format v2: each
    record's `retention-batch` header value (None for a tree of one, signed per record).
    Tree t's salt is `salts[16 * t : 16 * t + 16]`; `sign` signs each tree's root message
    and `kid` is the signing key's id as 8 bytes.

    The reference for `schemas._merkle.forest_v2` (the same bytes)."""
    if tree_size < 1:
        raise ValueError("a signature tree holds at least one record")
    if len(kid) != 8:
        raise ValueError("a key id is 8 bytes")
    if len(salts) < _HALF * -(-len(keys) // tree_size):
        raise ValueError("16 bytes of salt per tree")
    sha256 = hashlib.sha256
    out: list[bytes | None] = []
    for tree, start in enumerate(range(0, len(keys), tree_size)):
        tree_keys, tree_values = keys[start : start + tree_size], values[start : start + tree_size]
        if len(tree_keys) == 1:
            out.append(None)
            continue
        salt = salts[_HALF * tree : _HALF * tree + _HALF]
        level = [
            sha256(_LEAF + salt + signed_bytes(k, v)).digest()[:_HALF]
            for k, v in zip(tree_keys, tree_values, strict=True)
        ]
        # Per leaf: its steps' sides (bit i set: step i's sibling is on the right) and
        # siblings, from the leaf up; `at` is the leaf's node index on the current level.
        sides = [0] * len(level)
        siblings: list[list[bytes]] = [[] for _ in level]
        at = list(range(len(level)))
        while len(level) > 1:
            for leaf, index in enumerate(at):
                sibling = index ^ 1
                if sibling < len(level):
                    if sibling > index:
                        sides[leaf] |= 1 << len(siblings[leaf])
                    siblings[leaf].append(level[sibling])
                at[leaf] = index // 2
            # Neighbours paired left to right; the odd one out moves up unchanged.
            level = [
                sha256(_NODE + level[i] + level[i + 1]).digest()[:_HALF]
                if i + 1 < len(level)
                else level[i]
                for i in range(0, len(level), 2)
            ]
        signature = sign(ROOT_CONTEXT_V2 + salt + level[0])
        if len(signature) != 64:
            raise ValueError("sign() returns the 64 bytes of a signature")
        prefix = _FORMAT_V2 + kid + signature + salt
        out += [
            prefix + bytes([len(path)]) + side.to_bytes(4, "big") + b"".join(path)
            for side, path in zip(sides, siblings, strict=True)
        ]
    return out


def _root_v2_py(key: bytes | None, value: bytes | None, batch: bytes) -> bytes:
    """The root a `retention-batch` value's proof leads to from the record's salted leaf.
    The value must be 94 + 16 * n bytes with n of 1 to 32 (ValueError), which the verifier
    checks first, with the rest of its shape. The reference for `schemas._merkle.root_v2`."""
    steps = batch[89] if len(batch) >= _BATCH_FIXED else 0
    if not 1 <= steps <= MAX_PROOF_STEPS or len(batch) != _BATCH_FIXED + _HALF * steps:
        raise ValueError("not a retention-batch value's length")
    sides = int.from_bytes(batch[90:94], "big")
    node = _sha256(_LEAF + batch[73:89] + signed_bytes(key, value)).digest()[:_HALF]
    for at in range(_BATCH_FIXED, len(batch), _HALF):
        sibling = batch[at : at + _HALF]
        node = _sha256(_NODE + node + sibling if sides & 1 else _NODE + sibling + node).digest()[
            :_HALF
        ]
        sides >>= 1
    return node


_Hashing = Literal["native", "python"]
_Forester = Callable[[Sequence[bytes | None], Sequence[bytes | None], int], _Forest]
_ForesterV2 = Callable[
    [
        Sequence[bytes | None],
        Sequence[bytes | None],
        int,
        bytes,
        Callable[[bytes], bytes],
        bytes,
    ],
    list[bytes | None],
]


class _Walker(Protocol):
    def walk(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
        /,
    ) -> tuple[bytes, bytes] | None: ...


_RootV2 = Callable[[bytes | None, bytes | None, bytes], bytes]


def _choose() -> tuple[_Forester, _ForesterV2, _RootV2, Callable[[], _Walker] | None, _Hashing]:
    try:
        from schemas._merkle import Walker, forest, forest_v2, root_v2
    except ImportError:
        # Built only where a C compiler and OpenSSL's headers were at install (setup.py).
        # A build older than proof format v2 is not used at all: its walker would judge
        # a record's v1 headers without seeing a `retention-batch` beside them.
        return _forest_py, _forest_v2_py, _root_v2_py, None, "python"
    return forest, forest_v2, root_v2, Walker, "native"


_forest, _forest_v2, _root_v2, _walker, HASHING = _choose()
"""Which `_forest` and `_forest_v2` sign: `native` (schemas/_merkle.c) or `python`
(`_forest_py`, `_forest_v2_py`), chosen once at import; the relay logs it when it starts
(docs/relay.md). With `native`, each `Verifier` walks v1 batch-signed records' proofs with
a `schemas._merkle.Walker` (`_walker`) and v2 ones with `root_v2` (`_root_v2`) too; with
`python`, `_walker` is None (`Verifier._batch_valid` walks) and `_root_v2` is
`_root_v2_py`."""


def merkle_proofs(
    records: Sequence[tuple[bytes | None, bytes | None]],
) -> tuple[bytes, list[bytes]]:
    """The Merkle root over `records` (two or more) and each record's `retention-proof`
    header value (standard base64 of its steps)."""
    return _tree([_leaf(k, v) for k, v in records])


def _tree(level: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The root over `level` (two or more leaf hashes) and each leaf's proof, in one pass:
    every node is hashed once and encoded once, and proofs are assembled from the root
    down."""
    sha256 = hashlib.sha256
    # A step is 33 bytes, so its base64 is exactly 44 characters with no padding, and a
    # proof's base64 is the concatenation of its steps' base64: each level is encoded in
    # one call and sliced, never re-encoded per record.
    steps_by_level: list[list[bytes]] = []
    while len(level) > 1:
        above = [
            sha256(_NODE + left + right).digest()
            for left, right in zip(level[::2], level[1::2], strict=False)
        ]
        if len(level) % 2:
            # The odd one out moves up unchanged (and gets no step at this level).
            above.append(level[-1])
        # A node is only ever a sibling from one side: an even index is the left sibling
        # of its right neighbour, an odd index the right sibling of its left neighbour.
        encoded = binascii.b2a_base64(
            b"".join(chain.from_iterable(zip(cycle(_SIDES), level))), newline=False
        )
        steps_by_level.append(
            [encoded[i : i + _STEP_B64] for i in range(0, len(encoded), _STEP_B64)]
        )
        level = above
    proofs = [b""]
    for steps in reversed(steps_by_level):
        # A node's proof is its sibling's step, then its parent's proof.
        parents, proofs = proofs, []
        append = proofs.append
        for left, right, parent in zip(steps[::2], steps[1::2], parents, strict=False):
            append(right + parent)
            append(left + parent)
        if len(steps) % 2:
            append(parents[-1])
    return level[0], proofs


class Verdict(StrEnum):
    VALID = "valid"
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed_signature"


@dataclass(frozen=True, slots=True)
class Checked:
    verdict: Verdict
    key_id: str | None = None

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID


_Header = tuple[str, bytes, Ed25519PublicKey, Checked]
"""A parsed signature header (see `Verifier._parse`)."""

_Memo = tuple[bytes, int, bytes, bytes, bytes]
"""A remembered node's entry (see `Verifier._paths`): the proof text of the valid record
whose walk hashed with it, where the rest above the node's step starts in that text, the
root, the signature header text that root verified under, and the node's step (33
bytes)."""


class Verifier:
    """Verifies records against a set of public keys (several during a rotation).

    Batch roots whose signature verified are remembered (at most `cache_size`), so the
    other records of a batch cost only their proof's hashes. Only verified roots enter the
    cache: a record with a copied signature and a made-up proof computes another root.
    """

    def __init__(
        self,
        public_keys: Iterable[Ed25519PublicKey],
        *,
        cache_size: int = 4096,
        memo_size: int = 16_384,
    ):
        # Fixed for the verifier's life: the memo, the parsed headers and the root cache
        # all stand for checks made under these keys (a rotation builds a new Verifier).
        self._keys = {key_id(k): k for k in public_keys}
        self._raw_keys = {
            bytes.fromhex(kid): (public, Checked(Verdict.VALID, kid))
            for kid, public in self._keys.items()
        }
        """The keys by their id's 8 bytes (what a `retention-batch` value carries), each with
        its VALID verdict."""
        self._roots_v2: OrderedDict[bytes, None] = OrderedDict()
        """Proof format v2's verified roots (at most `cache_size`), each with the key id,
        signature and salt it verified under: a tree's other records cost their walk only."""
        self._walk = _walker().walk if _walker is not None else None
        self._last: tuple[tuple[bytes, bytes] | None, Checked] = (None, Checked(Verdict.VALID))
        """The last (signature header, root) the C walk found valid, and its verdict: a
        tree's records, read one after another, are then judged by one comparison."""
        self._roots: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()
        self._cache_size = cache_size
        self._memo_size = memo_size
        self._paths: dict[bytes, _Memo] = {}
        """The Python walk's memo (docs/protocol.md; with the C walker, `_walk`, only
        records it declines use it): every sibling a valid record's walk hashed
        with, mapped to that sibling's own next step (back to the node it was hashed with,
        from the other side) and where the rest of the proof above starts in that record's
        proof text. A node followed by that very step and byte-for-byte that rest leads to
        the remembered root. The nodes walked through are not kept: a later record of the
        tree meets a sibling first, unless it is that very record again. A tree's records
        arrive together, though spread over partitions read one after another: at most
        `memo_size` nodes (up to ~10 MB with the proof texts they keep alive), then
        started afresh."""
        self._signatures: dict[bytes, _Header] = {}
        """Signature headers a signature verified under, parsed, with the VALID verdict for
        their key id (immutable, shared): the records of one tree share one header, so
        each is parsed once (at most `cache_size`, then started afresh). Only verified
        ones: headers an attacker makes up never verify, so they cannot push a genuine
        one out."""

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
    ) -> Checked:
        """Never raises on what a record carries: anything not as docs/protocol.md states
        it is `MALFORMED`.

        What nearly every record is (one signature header of a known key, one proof
        whose steps decode and whose root verifies) is judged by `_batch_valid` at the
        cost of its leaf and the steps below the first remembered node; everything else
        by `_judged`, which checks in the order docs/protocol.md lists, remembering only
        headers and roots a signature verified. Both give the verdict a verifier
        remembering nothing gives.

        With the C core (`_walker`), such a record's leaf and walk are one C call and the
        memo is not used: the walker stops where the walk meets the last one it made (the
        same node with the same rest of the proof text), which a tree's next record
        usually does one or two levels up, and hashing a step in C costs about what the
        memo's dict lookup and slice comparison do. Whatever the walker declines
        (`schemas._merkle.Walker.walk`: a repeated, null or missing header, a proof not
        of 1 to 32 well-formed steps, a key or value that is not bytes or None) takes the
        Python path below, so every verdict is the reference's.

        A proof format v2 record (one `retention-batch`, no v1 header) is walked by the
        same C call, from its salted leaf, stopping likewise where it meets the last v2
        walk; without the walker by `_batch_v2` (a plain walk, no memo). Its verified
        roots are remembered with the key id, signature and salt they verified under."""
        walk = self._walk
        if walk is not None:
            walked = walk(key, value, headers)
            if walked is not None:
                last_walked, last_valid = self._last
                if walked == last_walked:
                    return last_valid
                text, root = walked
                if len(root) == _HALF:
                    # Proof format v2: `text` is the value's key id, signature and salt.
                    verdict = self._signed_root_v2(text, root)
                    if verdict.valid:
                        self._last = walked, verdict
                    return verdict
                parsed = self._parsed(text)
                if isinstance(parsed, Checked):
                    return parsed
                if not self._signed_root(text, parsed, root):
                    return Checked(Verdict.BAD_SIGNATURE, parsed[0])
                self._last = walked, parsed[3]
                return parsed[3]
        signature: bytes | None = None
        proof: bytes | None = None
        batch: bytes | None = None
        for name, header in headers:
            if name == SIGNATURE_HEADER:
                if signature is not None:
                    return Checked(Verdict.MALFORMED)
                signature = header if isinstance(header, bytes) else _NULL
            elif name == PROOF_HEADER:
                if proof is not None:
                    return Checked(Verdict.MALFORMED)
                proof = header if isinstance(header, bytes) else _NULL
            elif name == BATCH_HEADER:
                if batch is not None:
                    return Checked(Verdict.MALFORMED)
                batch = header if isinstance(header, bytes) else _NULL
        if batch is not None:
            if signature is not None or proof is not None or batch is _NULL:
                return Checked(Verdict.MALFORMED)
            return self._batch_v2(key, value, batch)
        if signature is None or proof is None or signature is _NULL or proof is _NULL:
            return self._judged(key, value, signature, proof)
        checked = self._batch_valid(key, value, signature, proof)
        return self._judged(key, value, signature, proof) if checked is None else checked

    def _batch_v2(self, key: bytes | None, value: bytes | None, batch: bytes) -> Checked:
        """The verdict on a record carrying one `retention-batch` value and no v1 header,
        each check in the order docs/protocol.md lists: the value's shape, the key id,
        then the walk from the record's salted leaf to a root its signature must sign."""
        size = len(batch)
        if size < _BATCH_FIXED or batch[0] != 2:
            return Checked(Verdict.MALFORMED)
        steps = batch[89]
        if not 1 <= steps <= MAX_PROOF_STEPS or size != _BATCH_FIXED + _HALF * steps:
            return Checked(Verdict.MALFORMED)
        sides = int.from_bytes(batch[90:94], "big")
        if sides >> steps:
            return Checked(Verdict.MALFORMED)
        if batch[1:9] not in self._raw_keys:
            return Checked(Verdict.UNKNOWN_KEY, batch[1:9].hex())
        return self._signed_root_v2(batch[1:89], _root_v2(key, value, batch))

    def _signed_root_v2(self, signed: bytes, root: bytes) -> Checked:
        """The verdict on a v2 `root` under `signed`, a `retention-batch` value's key id,
        signature and salt (its bytes 1 to 88): only verified ones are remembered, with
        the root (at most `cache_size`)."""
        known = self._raw_keys.get(signed[:8])
        if known is None:
            return Checked(Verdict.UNKNOWN_KEY, signed[:8].hex())
        public, valid = known
        cached = signed + root
        roots = self._roots_v2
        if cached in roots:
            roots.move_to_end(cached)
        elif _verifies(public, signed[8:72], ROOT_CONTEXT_V2 + signed[72:] + root):
            roots[cached] = None
            if len(roots) > self._cache_size:
                roots.popitem(last=False)
        else:
            return Checked(Verdict.BAD_SIGNATURE, valid.key_id)
        return valid

    def _batch_valid(
        self, key: bytes | None, value: bytes | None, text: bytes, proof: bytes
    ) -> Checked | None:
        """The verdict on a batch-signed record if it is VALID or BAD_SIGNATURE after every
        other check passed, or MALFORMED for a proof with a step that is not one (what
        `_judged` would answer then); None for anything else (a proof not of whole steps,
        a header refused), which `_judged` checks in its order before hashing anything.

        The proof is decoded a step at a time, only up to the first node the memo knows
        with the same next step and the same rest: that rest was decoded (or matched)
        when remembered, so the whole proof is then standard base64 of whole steps with
        valid sides, as `_judged` requires."""
        size = len(proof)
        if size % _STEP_B64 or not 0 < size <= MAX_PROOF_STEPS * _STEP_B64:
            return None
        parsed = self._parsed(text)
        if isinstance(parsed, Checked):
            return None
        # `_leaf`, inlined: this runs for every event a service reads.
        k, v = key or b"", value or b""
        length = len(k)
        node = _sha256(
            _LEAF_PREFIX + (_LENGTHS[length] if length < 256 else length.to_bytes(4, "big")) + k + v
        ).digest()
        paths, a2b = self._paths, binascii.a2b_base64
        walked: list[tuple[bytes, int, bytes]] = []
        root: bytes | None = None
        verified = False
        try:
            for at in range(0, size, _STEP_B64):
                step = a2b(proof[at : at + _STEP_B64], strict_mode=True)
                if len(step) != 33:
                    return _malformed(proof, parsed[0])
                known = paths.get(node)
                if (
                    known is not None
                    and known[4] == step
                    and proof[at + _STEP_B64 :] == known[0][known[1] :]
                ):
                    root, verified = known[2], known[3] == text
                    break
                walked.append((node, at, step))
                side = step[0]
                if side == _LEFT:
                    node = _sha256(_NODE + step[1:] + node).digest()
                elif side == _RIGHT:
                    node = _sha256(_NODE + node + step[1:]).digest()
                else:
                    return _malformed(proof, parsed[0])
        except binascii.Error:
            return _malformed(proof, parsed[0])
        if root is None:
            root = node
        if not verified:
            if not self._signed_root(text, parsed, root):
                return Checked(Verdict.BAD_SIGNATURE, parsed[0])
        elif text not in self._signatures:
            # The memo proved this root signed under `text`: after a flush of the header
            # cache, the tree's later records then find their header without parsing it.
            self._remember(text, parsed)
        if len(paths) + len(walked) > self._memo_size:
            paths.clear()
            # A walk longer than the whole memo keeps its top nodes (more of the tree's
            # records meet them).
            del walked[: max(len(walked) - self._memo_size, 0)]
        for node, at, step in walked:
            # The sibling's own step is back to `node`, from the other side.
            paths[step[1:]] = (proof, at + _STEP_B64, root, text, _OTHER_SIDE[step[0]] + node)
        return parsed[3]

    def _judged(
        self,
        key: bytes | None,
        value: bytes | None,
        text: bytes | None,
        proof_text: bytes | None,
    ) -> Checked:
        """The verdict on one signature header and at most one proof header (None: absent;
        `_NULL`: a null value), each check in the order docs/protocol.md lists."""
        if text is None:
            return Checked(Verdict.MALFORMED if proof_text is not None else Verdict.UNSIGNED)
        if text is _NULL or proof_text is _NULL:
            return Checked(Verdict.MALFORMED)
        # A proof longer than any tree's is refused before it is decoded or hashed.
        if proof_text is not None and not 0 < len(proof_text) <= MAX_PROOF_STEPS * _STEP_B64:
            return Checked(Verdict.MALFORMED)
        try:
            # Strict: standard base64 with its padding, nothing around it.
            proof = (
                binascii.a2b_base64(proof_text, strict_mode=True)
                if proof_text is not None
                else None
            )
        except binascii.Error:
            return Checked(Verdict.MALFORMED)
        if proof is not None and len(proof) % 33:
            return Checked(Verdict.MALFORMED)
        parsed = self._parsed(text)
        if isinstance(parsed, Checked):
            return parsed
        kid_text, signature, public, valid = parsed
        if proof is None:
            if not _verifies(public, signature, signed_bytes(key, value)):
                return Checked(Verdict.BAD_SIGNATURE, kid_text)
            self._remember(text, parsed)
            return valid
        root = _walk(_leaf(key, value), proof)
        if root is None:
            return Checked(Verdict.MALFORMED, kid_text)
        if not self._signed_root(text, parsed, root):
            return Checked(Verdict.BAD_SIGNATURE, kid_text)
        return valid

    def _signed_root(self, text: bytes, parsed: _Header, root: bytes) -> bool:
        """Whether the signature of the header `text` (`parsed`) signs `root`; only
        verified roots, and the headers they verified under, are remembered (at most
        `cache_size` of each)."""
        kid_text, signature, public, _ = parsed
        cached = (kid_text, signature, root)
        if cached in self._roots:
            self._roots.move_to_end(cached)
        elif _verifies(public, signature, ROOT_CONTEXT + root):
            self._roots[cached] = None
            if len(self._roots) > self._cache_size:
                self._roots.popitem(last=False)
        else:
            return False
        self._remember(text, parsed)
        return True

    def _parsed(self, text: bytes) -> _Header | Checked:
        """The signature header `text` parsed (remembered once a signature verified under
        it), or the verdict on a header that is malformed or names a key not ours."""
        known = self._signatures.get(text)
        return known if known is not None else self._parse(text)

    def _remember(self, text: bytes, parsed: _Header) -> None:
        """Keep the header `text` parsed: a signature just verified under it."""
        signatures = self._signatures
        if text not in signatures:
            if len(signatures) >= self._cache_size:
                signatures.clear()
            signatures[text] = parsed

    def _parse(self, text: bytes) -> _Header | Checked:
        """A signature header's key id, signature, public key and VALID verdict; or the
        verdict on a header that is malformed or names a key not ours."""
        kid, sep, encoded = text.partition(b":")
        try:
            kid_text = kid.decode("ascii")
            signature = binascii.a2b_base64(encoded, strict_mode=True)
        except (UnicodeDecodeError, binascii.Error):
            return Checked(Verdict.MALFORMED)
        if not sep or len(signature) != 64:
            return Checked(Verdict.MALFORMED)
        # Canonical too: 64 bytes leave 4 unused bits in the last character, which strict
        # decoding ignores, so 16 texts would carry one signature. A proof (whole 33-byte
        # steps, a multiple of 3) has no unused bits.
        if binascii.b2a_base64(signature, newline=False) != encoded:
            return Checked(Verdict.MALFORMED)
        public = self._keys.get(kid_text)
        if public is None:
            return Checked(Verdict.UNKNOWN_KEY, kid_text)
        return kid_text, signature, public, Checked(Verdict.VALID, kid_text)


_sha256 = hashlib.sha256
_NULL = b"\x00null"
"""Stands for a null header value (aiokafka gives None) while headers are sorted out;
compared by identity only, so no header's bytes can pass for it."""
_OTHER_SIDE = {_LEFT: bytes([_RIGHT]), _RIGHT: bytes([_LEFT])}


def _malformed(proof: bytes, kid_text: str) -> Checked:
    """`_judged`'s verdict on a record of a known key's well-formed header whose proof
    (of whole 44-character steps) has a step that does not decode to 33 bytes or has a
    side that is neither: without the key id unless the proof as a whole decodes to
    whole steps (then a side is wrong, found by `_walk`)."""
    try:
        steps = binascii.a2b_base64(proof, strict_mode=True)
    except binascii.Error:
        return Checked(Verdict.MALFORMED)
    return Checked(Verdict.MALFORMED, None if len(steps) % 33 else kid_text)


def _walk(leaf: bytes, proof: bytes) -> bytes | None:
    """The root `proof` leads to from `leaf` (None: a step's side is neither)."""
    node = leaf
    for at in range(0, len(proof), 33):
        side, sibling = proof[at], proof[at + 1 : at + 33]
        if side == _LEFT:
            node = _sha256(_NODE + sibling + node).digest()
        elif side == _RIGHT:
            node = _sha256(_NODE + node + sibling).digest()
        else:
            return None
    return node


def _verifies(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def accepts(mode: SignatureMode, checked: Checked) -> bool:
    """Whether a reader in `mode` may act on a record with this verdict."""
    if mode is SignatureMode.OFF or checked.valid:
        return True
    return mode is SignatureMode.PERMISSIVE and checked.verdict is Verdict.UNSIGNED


class SignatureSettings(BaseSettings):
    """Keys and mode, read alike by the coordinator and the SDK (`RETENTION_*`)."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTION_", extra="ignore", populate_by_name=True
    )

    mode: SignatureMode = Field(
        default=SignatureMode.REQUIRED,
        validation_alias=AliasChoices("mode", "RETENTION_SIGNATURES"),
        description="required | permissive | off (SPEC §9).",
    )
    signing_key_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("signing_key_file", "RETENTION_SIGNING_KEY_FILE"),
        description="The coordinator's private key (PEM PKCS#8): it signs every event.",
    )
    coordinator_public_keys: str = Field(
        default="",
        validation_alias=AliasChoices(
            "coordinator_public_keys", "RETENTION_COORDINATOR_PUBLIC_KEYS"
        ),
        description="Comma-separated `ed25519:<base64>` keys a service accepts events from.",
    )
    service_signing_key_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "service_signing_key_file", "RETENTION_SERVICE_SIGNING_KEY_FILE"
        ),
        description="A service's private key: it signs the service's acks and registration.",
    )

    @field_validator("signing_key_file", "service_signing_key_file", mode="before")
    @classmethod
    def _unset(cls, value: object) -> object:
        # An empty variable (compose's `KEY: ""`) means no key, not the current folder.
        return None if value == "" else value

    def coordinator_signer(self) -> Signer | None:
        """None when signing is off; an error when it is on and the key is missing."""
        if self.mode is SignatureMode.OFF:
            return None
        if self.signing_key_file is None:
            if self.mode is SignatureMode.PERMISSIVE:
                return None
            raise SigningKeyError(
                "RETENTION_SIGNATURES=required needs RETENTION_SIGNING_KEY_FILE "
                "(`retention keys generate --out DIR --name coordinator`)"
            )
        return Signer.from_file(self.signing_key_file)

    def service_signer(self) -> Signer | None:
        if self.mode is SignatureMode.OFF:
            return None
        if self.service_signing_key_file is None:
            if self.mode is SignatureMode.PERMISSIVE:
                return None
            raise SigningKeyError(
                "RETENTION_SIGNATURES=required needs RETENTION_SERVICE_SIGNING_KEY_FILE "
                "(`retention keys generate --out DIR --name <service>`)"
            )
        return Signer.from_file(self.service_signing_key_file)

    def trusted_coordinator_keys(self) -> list[Ed25519PublicKey]:
        """`coordinator_public_keys` parsed: every key an event may be signed with."""
        return [parse_public_key(k) for k in self.coordinator_public_keys.split(",") if k.strip()]

    def coordinator_verifier(self) -> Verifier:
        keys = self.trusted_coordinator_keys()
        if not keys and self.mode is SignatureMode.REQUIRED:
            raise SigningKeyError(
                "RETENTION_SIGNATURES=required needs RETENTION_COORDINATOR_PUBLIC_KEYS"
            )
        return Verifier(keys)
