"""Proof format v2 built from docs/protocol.md alone ("Proof format v2", "The signed bytes
of one record"), without schemas.signing: what tests hold the signer's and the relay's
bytes against, so a change made alike to our Python reference and our C core still shows."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

Sign = Callable[[bytes], bytes]
"""An Ed25519 private key's `sign` (deterministic: the same message, the same signature)."""


def signed_bytes(key: bytes | None, value: bytes | None) -> bytes:
    key, value = key or b"", value or b""
    return b"retention-sig-v1\x00" + len(key).to_bytes(4, "big") + key + value


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def tree_values(
    sign: Sign, key_id: bytes, salt: bytes, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[bytes]:
    """Each record's `retention-batch` value for one tree of `records` (two or more), in
    send order: leaves paired left to right, an odd last node moved up unchanged."""
    assert len(records) >= 2
    assert len(key_id) == 8
    assert len(salt) == 16
    levels = [[_h(b"\x00" + salt + signed_bytes(k, v)) for k, v in records]]
    while len(levels[-1]) > 1:
        nodes = levels[-1]
        levels.append(
            [
                _h(b"\x01" + nodes[i] + nodes[i + 1]) if i + 1 < len(nodes) else nodes[i]
                for i in range(0, len(nodes), 2)
            ]
        )
    signature = sign(b"retention-root-v2\x00" + salt + levels[-1][0])
    values = []
    for position in range(len(records)):
        at, sides, siblings = position, 0, []
        for nodes in levels[:-1]:
            other = at ^ 1
            if other < len(nodes):  # else this node moves up unchanged: no step
                if other > at:
                    sides |= 1 << len(siblings)
                siblings.append(nodes[other])
            at //= 2
        values.append(
            b"\x02"
            + key_id
            + signature
            + salt
            + bytes([len(siblings)])
            + sides.to_bytes(4, "big")
            + b"".join(siblings)
        )
    return values
