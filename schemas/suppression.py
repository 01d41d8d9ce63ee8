"""The suppression list (SPEC §12): erased entities on `data.retention.erased`, keyed by
HMAC-SHA256 of `type:id` under a pepper, never by clear ids.

The coordinator writes one signed record per erased entity (a tombstone once it expires);
the SDK keeps the topic as a table and answers `is_erased` from it. Both sides compute the
key here, so a service needs the pepper file too (docs/suppression.md says how to hand it
out). The HMAC key is the pepper file's bytes with surrounding whitespace removed, at least
32 of them; `retention keys generate --pepper` writes 64 random hexadecimal characters. Old
evidence keeps entity ids as HMACs under the same key (SPEC §13).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field

from schemas.models import UtcDatetime, WireModel

__all__ = [
    "PEPPER_BYTES",
    "ErasedEntity",
    "PepperError",
    "read_pepper",
    "suppression_key",
    "write_pepper",
]

PEPPER_BYTES = 32
"""The least a pepper may have; the generated one has 64 (hex characters of 32 random bytes)."""
_HEX_KEY = r"^[0-9a-f]{64}$"


class PepperError(ValueError):
    """The pepper file is unreadable or shorter than `PEPPER_BYTES` (its content is never
    quoted: it is a secret)."""


class ErasedEntity(WireModel):
    """One erased entity on `data.retention.erased`; the record key is `key`."""

    key: Annotated[str, Field(pattern=_HEX_KEY)]
    """Lower-case hex HMAC-SHA256 of `"{entity_type}:{entity_id}"` under the pepper."""
    erased_at: UtcDatetime
    expires_at: UtcDatetime
    """After this the entry no longer suppresses (SPEC §12: the evidence retention); the
    coordinator then writes a tombstone so compaction drops it."""


def suppression_key(pepper: bytes, entity_type: str, entity_id: str) -> str:
    """The record key naming `type:id` on the erased topic."""
    message = f"{entity_type}:{entity_id}".encode()
    return hmac.new(pepper, message, hashlib.sha256).hexdigest()


def read_pepper(path: Path) -> bytes:
    """The HMAC key in `path`: its bytes, surrounding whitespace removed."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise PepperError(
            f"cannot read the suppression pepper file: {type(exc).__name__}"
        ) from None
    if len(key) < PEPPER_BYTES:
        raise PepperError(f"the suppression pepper file must hold at least {PEPPER_BYTES} bytes")
    return key


def write_pepper(path: Path) -> None:
    """Create a new pepper file (64 random hex characters), mode 0600, refusing to
    overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(os.urandom(PEPPER_BYTES).hex() + "\n")
