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

__all__ = ["KEY_BYTES", "NONCE_BYTES", "SealError", "new_key", "open_sealed", "seal"]

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # random 96-bit nonces: safe far beyond any archive's row count per key


class SealError(CoordinatorError):
    """A sealed value did not open: wrong key, wrong place, or altered bytes."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise SealError("sealed value did not open") from None
