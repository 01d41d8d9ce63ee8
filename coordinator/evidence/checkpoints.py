"""Audit checkpoints (SPEC §13): signed chain heads, and the traces pruning leaves.

A `head` checkpoint says "the chain verified up to row `last_seq`, whose hash is `hash`".
`retention audit verify` starts from the newest one whose row is still there, so a check
costs the rows written since, not the whole history; `--full` walks everything left.

A `pruned` checkpoint stands for rows `first_seq`..`last_seq` that pruning removed; `hash`
is the hash of row `last_seq`, so the row after the gap still links to it and the chain
verifies across it. Only a gap a checkpoint accounts for is accepted.

Every checkpoint is one small JSON record, signed like every record the coordinator
writes (schemas/signing.py) and published to the audit topic (`heads.py`): what the
database holds can be compared with what was published. The database's copy is not the
witness: whoever can delete the newest audit rows can delete checkpoint rows too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator import CoordinatorError
from coordinator.evidence import audit
from coordinator.store.tables import audit_checkpoints, audit_log
from schemas.signing import SIGNATURE_HEADER, Signer, Verifier

__all__ = [
    "HEAD_KEY",
    "ChainBroken",
    "ChainReport",
    "Checkpoint",
    "Kind",
    "checkpoint_key",
    "parse_record",
    "record_checkpoint",
    "take_head",
    "unpublished",
    "verify_chain",
]

Kind = Literal["head", "pruned"]

HEAD_KEY = b"coordinator"
"""Kafka key of chain heads on the compacted audit topic: the newest one stays."""


def checkpoint_key(kind: Kind, last_seq: int) -> bytes:
    """Kafka key of a checkpoint: heads share one, each pruned segment keeps its own."""
    return HEAD_KEY if kind == "head" else f"pruned:{last_seq}".encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    kind: Kind
    first_seq: int
    last_seq: int
    hash: str
    at: datetime

    def record(self) -> bytes:
        """The bytes signed and published: sorted keys, no whitespace, UTC time."""
        return json.dumps(
            {
                "kind": self.kind,
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "hash": self.hash,
                "at": self.at.astimezone(UTC).isoformat(timespec="microseconds"),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()


def parse_record(raw: bytes) -> Checkpoint:
    """A published record back; ValueError (or KeyError) when it is not one of ours."""
    document: dict[str, Any] = json.loads(raw)
    kind = document["kind"]
    if kind not in ("head", "pruned"):
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    point = Checkpoint(
        kind,
        int(document["first_seq"]),
        int(document["last_seq"]),
        str(document["hash"]),
        datetime.fromisoformat(document["at"]),
    )
    if point.record() != raw:
        raise ValueError("not in canonical form")
    return point


async def record_checkpoint(
    conn: AsyncConnection, point: Checkpoint, signer: Signer | None
) -> None:
    """Store `point` with its signature (inside the caller's transaction)."""
    record = point.record()
    signature = None
    if signer is not None:
        [(_, signature)] = signer.sign_record(checkpoint_key(point.kind, point.last_seq), record)
    await conn.execute(
        insert(audit_checkpoints).values(
            kind=point.kind,
            first_seq=point.first_seq,
            last_seq=point.last_seq,
            hash=point.hash,
            at=point.at,
            record=record,
            signature=signature,
        )
    )


@dataclass(frozen=True, slots=True)
class ChainReport:
    rows_checked: int
    broken: audit.BrokenLink | None
    from_seq: int
    """The first row this check read (1, or the row after the checkpoint it started from)."""
    last_seq: int
    """The newest row present (0 for an empty chain)."""


async def _checkpoints(conn: AsyncConnection, kind: Kind) -> list[Any]:
    return list(
        (
            await conn.execute(
                select(audit_checkpoints)
                .where(audit_checkpoints.c.kind == kind)
                .order_by(audit_checkpoints.c.last_seq)
            )
        ).all()
    )


def _signature_ok(row: Any, verifier: Verifier | None) -> bool:
    """The row's signed record verifies and says what the row's columns say."""
    if verifier is None:
        return True
    if row.signature is None:
        return False
    checked = verifier.verify(
        checkpoint_key(row.kind, row.last_seq), row.record, [(SIGNATURE_HEADER, row.signature)]
    )
    if not checked.valid:
        return False
    try:
        signed = parse_record(row.record)
    except (ValueError, KeyError, TypeError):
        return False
    return signed == Checkpoint(row.kind, row.first_seq, row.last_seq, row.hash, row.at)


async def _row_hash(conn: AsyncConnection, seq: int) -> str | None:
    return (
        await conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == seq))
    ).scalar_one_or_none()


async def _start(conn: AsyncConnection, verifier: Verifier | None) -> tuple[int, str] | None:
    """The newest signed head whose row is still there and unchanged: (seq, hash)."""
    for row in reversed(await _checkpoints(conn, "head")):
        if not _signature_ok(row, verifier):
            continue
        if await _row_hash(conn, row.last_seq) == row.hash:
            return row.last_seq, row.hash
    return None


async def verify_chain(
    conn: AsyncConnection,
    *,
    full: bool = False,
    verifier: Verifier | None = None,
    chunk: int = 10_000,
) -> ChainReport:
    """Check the chain from the newest head checkpoint (or, with `full`, from its first
    row), accepting a gap only where a signed `pruned` checkpoint accounts for it.

    `verifier` checks the checkpoints' signatures (None: signing is off and they are
    taken as stored).
    """
    pruned: dict[int, Any] = {}
    for row in await _checkpoints(conn, "pruned"):
        if _signature_ok(row, verifier):
            pruned[row.first_seq] = row
    start = None if full else await _start(conn, verifier)
    if start is None:
        prev, expected, after = audit.GENESIS, 1, 0
    else:
        prev, expected, after = start[1], start[0] + 1, start[0]
    first, checked, last = expected, 0, after
    async for row in audit.chain_rows(conn, after=after, chunk=chunk):
        while row.seq != expected and expected in pruned:
            gap = pruned[expected]
            prev, expected = gap.hash, gap.last_seq + 1
        broken = audit.broken_link(row, prev=prev, expected=expected)
        if broken is not None:
            return ChainReport(checked, broken, first, last)
        prev, expected, checked, last = row.hash, expected + 1, checked + 1, row.seq
    return ChainReport(checked, None, first, last)


async def take_head(
    conn: AsyncConnection, *, now: datetime, signer: Signer | None
) -> Checkpoint | None:
    """Verify the rows since the last head and record a signed head at the chain's end.

    Holds the chain lock, so no row is appended between the check and the checkpoint.
    None when the chain is empty or the newest head is still the end. Raises
    `ChainBroken` rather than sign a chain that does not verify.
    """
    seq, digest = await audit.lock_head(conn)
    if seq == 0:
        return None
    newest = (
        await conn.execute(
            select(func.max(audit_checkpoints.c.last_seq)).where(audit_checkpoints.c.kind == "head")
        )
    ).scalar_one_or_none()
    if newest == seq:
        return None
    verifier = Verifier([signer.public]) if signer is not None else None
    report = await verify_chain(conn, verifier=verifier)
    if report.broken is not None:
        raise ChainBroken(report.broken)
    point = Checkpoint("head", report.from_seq, seq, digest, now)
    await record_checkpoint(conn, point, signer)
    return point


class ChainBroken(CoordinatorError, RuntimeError):
    """The chain does not verify: no head is signed over it."""

    def __init__(self, broken: audit.BrokenLink) -> None:
        super().__init__(f"audit chain broken at row {broken.seq}: {broken.reason}")
        self.broken = broken


async def unpublished(conn: AsyncConnection) -> Sequence[Any]:
    """Checkpoints not yet on the audit topic, oldest first."""
    return (
        await conn.execute(
            select(audit_checkpoints)
            .where(audit_checkpoints.c.published_at.is_(None))
            .order_by(audit_checkpoints.c.at, audit_checkpoints.c.last_seq)
        )
    ).all()
