"""Entity ids in old evidence, kept only as HMAC (SPEC §13).

Past the outbox retention an event's stored entity id becomes `hmac:<hex>`, the
HMAC-SHA256 of `type:id` under the suppression pepper (`RETENTION_SUPPRESSION_PEPPER_FILE`,
the key SPEC §12 uses for erased entities), so the same pepper finds both. Whoever knows an
id can still find its evidence (status, certificate) by computing the HMAC; a dump of the
tables no longer lists who was erased.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

__all__ = ["PREFIX", "Pepper", "load_pepper"]

PREFIX = "hmac:"
"""What a pseudonymous id starts with (for readers; which rows are done is recorded in
`retention_event_status.pseudonymised_at`, so a clear id that happens to start with it is
still pseudonymised)."""

MIN_PEPPER_BYTES = 32


class Pepper:
    """The suppression pepper; never logged, never shown."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_PEPPER_BYTES:
            raise ValueError(f"the suppression pepper needs at least {MIN_PEPPER_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Pepper(…)"

    def pseudonym(self, entity_type: str, entity_id: str) -> str:
        digest = hmac.new(self._key, f"{entity_type}:{entity_id}".encode(), hashlib.sha256)
        return PREFIX + digest.hexdigest()


def load_pepper(path: Path | None) -> Pepper | None:
    """The pepper from its file (None when unset): a set but unreadable file is an error."""
    if path is None:
        return None
    return Pepper(path.read_bytes().strip())
