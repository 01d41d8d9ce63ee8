"""AES-256-GCM sealing with data keys, and the wrapping of data keys under a KEK.

A sealed value is `nonce (12 bytes) ‖ ciphertext ‖ tag`. The associated data binds it to
where it lives (table, row id, key id), so a sealed value copied onto another row fails
to open instead of passing for that row's data.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator import CoordinatorError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "BatchSealer",
    "KeySealer",
    "SealError",
    "new_key",
    "new_keys",
    "open_sealed",
    "seal",
]

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # random 96-bit nonces: safe far beyond any archive's row count per key


class SealError(CoordinatorError):
    """A sealed value did not open: wrong key, wrong place, or altered bytes."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def new_keys(count: int) -> list[bytes]:
    """`count` fresh keys from one read of the OS's random source (what `new_key` reads,
    in one call instead of one per key)."""
    pool = os.urandom(KEY_BYTES * count)
    return [pool[i : i + KEY_BYTES] for i in range(0, len(pool), KEY_BYTES)]


class KeySealer:
    """Sealing and opening under one key, its cipher (the AES key schedule) built once."""

    def __init__(self, key: bytes) -> None:
        self._cipher = AESGCM(key)

    def seal(self, plaintext: bytes, associated: bytes, nonce: bytes | None = None) -> bytes:
        """`nonce`: a fresh random one the caller drew (BatchSealer), else one is drawn."""
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES)
        return nonce + self._cipher.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        try:
            return self._cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
        except (InvalidTag, ValueError):
            raise SealError("sealed value did not open") from None


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    return KeySealer(key).seal(plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    return KeySealer(key).open(sealed, associated)


class BatchSealer:
    """`seal` for a batch of at most `count` values: one cipher per key, and every nonce
    cut from one read of the OS's random source (as random as one read each). It holds
    the batch's keys: drop it with the batch."""

    def __init__(self, count: int) -> None:
        self._nonces = os.urandom(NONCE_BYTES * count)
        self._used = 0
        self._sealers: dict[bytes, KeySealer] = {}

    def seal(self, key: bytes, plaintext: bytes, associated: bytes) -> bytes:
        start = self._used
        nonce = self._nonces[start : start + NONCE_BYTES]
        if len(nonce) != NONCE_BYTES:
            # Never reuse a nonce: a value past the announced count gets none.
            raise ValueError("BatchSealer: more values than its count")
        self._used = start + NONCE_BYTES
        sealer = self._sealers.get(key)
        if sealer is None:
            sealer = self._sealers[key] = KeySealer(key)
        return sealer.seal(plaintext, associated, nonce)
