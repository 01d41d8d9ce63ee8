"""`KeyProvider`: who wraps and unwraps data keys with the key-encryption key (KEK).

The coordinator never sees a KMS's KEK; it only asks the provider to wrap a fresh data
key and to unwrap a stored one. A KMS implementation maps the two calls one to one:

- AWS KMS: `Encrypt` / `Decrypt` with the key's ARN as `kek_id`;
- Google Cloud KMS: `encrypt` / `decrypt` on a CryptoKey, its resource name as `kek_id`;
- Vault transit: `transit/encrypt/<name>` / `transit/decrypt/<name>` (base64 in and out).

Rules for an implementation: `wrap` must be randomized or otherwise never reveal the data
key; `unwrap` must raise `UnwrapError` for bytes it did not produce; neither may log or
cache a data key. `kek_id` names the KEK version that wrapped a key, so that rotation can
find the keys still wrapped under an old one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from coordinator import CoordinatorError
from coordinator.copies.crypto.envelope import KEY_BYTES, KeySealer, SealError, new_key

__all__ = ["KeyProvider", "LocalKeyProvider", "UnwrapError", "write_kek"]

_WRAP_CONTEXT = b"retention.data-key.v1"


class UnwrapError(CoordinatorError):
    """A wrapped data key could not be unwrapped (another KEK, or altered bytes)."""


class KeyProvider(Protocol):
    @property
    def kek_id(self) -> str:
        """The id of the KEK (version) `wrap` uses now."""
        ...

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, kek_id: str) -> bytes: ...


class LocalKeyProvider:
    """A KEK read from a file (`RETENTION_KEK_FILE`): 32 random bytes, hex-encoded."""

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEY_BYTES:
            raise ValueError(f"a KEK is {KEY_BYTES} bytes")
        self._kek = KeySealer(kek)  # its key schedule built once for every wrap and unwrap
        # Names the KEK without revealing it: a hash of it, truncated.
        self._id = "local:" + hashlib.sha256(b"kek-id:" + kek).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyProvider:
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except ValueError:
            raise ValueError("the KEK file must hold 64 hex digits") from None

    @property
    def kek_id(self) -> str:
        return self._id

    def wrap(self, data_key: bytes) -> bytes:
        return self._kek.seal(data_key, _WRAP_CONTEXT)

    def unwrap(self, wrapped: bytes, kek_id: str) -> bytes:
        if kek_id != self._id:
            raise UnwrapError(f"wrapped under {kek_id}, this provider holds {self._id}")
        try:
            return self._kek.open(wrapped, _WRAP_CONTEXT)
        except SealError:
            raise UnwrapError("wrapped key did not open under this KEK") from None


def write_kek(path: Path) -> str:
    """Create a new KEK file, mode 0600, refusing to overwrite one; return its id."""
    kek = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(kek.hex() + "\n")
    return LocalKeyProvider(kek).kek_id
