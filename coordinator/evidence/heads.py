"""The audit topic (SPEC §13): checkpoints published, and the chain compared with them.

Heads go out under the key `coordinator` (the compacted topic keeps the newest), pruned
segments under `pruned:<last seq>`. Each record carries the coordinator's signature
header, so a reader needs only the coordinator's public key to trust it. Comparing the
database with the newest published head detects what no hash chain can see by itself:
that the newest rows were cut off (with the head checkpoints that named them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.evidence import audit
from coordinator.evidence.checkpoints import (
    Checkpoint,
    checkpoint_key,
    parse_record,
    unpublished,
)
from coordinator.kafka.admin import missing_topics
from coordinator.kafka.clients import KafkaPublisher, KafkaTopicReader
from coordinator.kafka.ports import ConsumedRecord
from coordinator.kafka.producer import OutgoingRecord
from coordinator.store.tables import audit_checkpoints, audit_log
from schemas import KafkaSettings
from schemas.signing import SIGNATURE_HEADER, Verifier

__all__ = ["HeadCheck", "compare_with_head", "newest_published_head", "publish_checkpoints"]


async def publish_checkpoints(engine: AsyncEngine, kafka: KafkaSettings, *, now: datetime) -> int:
    """Publish every checkpoint not yet on the topic, oldest first; return how many.

    Marked published only after the broker acknowledged (acks=all): a crash in between
    publishes the same record again, which is harmless.
    """
    async with engine.connect() as conn:
        rows = await unpublished(conn)
    if not rows:
        return 0
    publisher = KafkaPublisher(kafka)
    await publisher.start()
    try:
        await publisher.publish(
            kafka.topics.audit,
            [
                OutgoingRecord(
                    key=checkpoint_key(row.kind, row.last_seq),
                    value=row.record,
                    headers=[(SIGNATURE_HEADER, row.signature)] if row.signature else [],
                )
                for row in rows
            ],
        )
    finally:
        await publisher.stop()
    async with engine.begin() as conn:
        for row in rows:
            await conn.execute(
                update(audit_checkpoints)
                .where(
                    audit_checkpoints.c.kind == row.kind,
                    audit_checkpoints.c.last_seq == row.last_seq,
                )
                .values(published_at=now)
            )
    return len(rows)


async def newest_published_head(
    kafka: KafkaSettings, verifier: Verifier | None, *, timeout_s: float = 10.0
) -> Checkpoint | None:
    """The published head with the highest seq whose signature verifies (any head when
    `verifier` is None: signing off); records that are not ours are skipped. Anyone may
    write the topic, so it is read a fetch at a time and only the newest head is kept.

    Raises:
        LookupError: the topic has no partitions yet.
        TimeoutError: it was not read to its end within `timeout_s`.
    """
    if await missing_topics(kafka, [kafka.topics.audit]):
        return None  # nothing was ever published (no serve has run upkeep yet)
    newest: Checkpoint | None = None
    reader = KafkaTopicReader(kafka, kafka.topics.audit)
    await reader.start(timeout_s=timeout_s)
    try:
        async for records in reader.chunks_to_end(timeout_s=timeout_s):
            for record in records:
                point = _head(record, verifier)
                if point is not None and (newest is None or point.last_seq > newest.last_seq):
                    newest = point
    finally:
        await reader.stop()
    return newest


def _head(record: ConsumedRecord, verifier: Verifier | None) -> Checkpoint | None:
    if record.key != checkpoint_key("head", 0) or record.value is None:
        return None
    if verifier is not None and not verifier.verify(record.key, record.value, record.headers).valid:
        return None
    try:
        point = parse_record(record.value)
    except (ValueError, KeyError, TypeError):
        return None
    return point if point.kind == "head" else None


@dataclass(frozen=True, slots=True)
class HeadCheck:
    published: Checkpoint | None
    broken: audit.BrokenLink | None


async def compare_with_head(
    conn: AsyncConnection, published: Checkpoint | None, *, last_seq: int
) -> HeadCheck:
    """Does the chain (ending at `last_seq`) still hold the published head's row?"""
    if published is None:
        return HeadCheck(None, None)
    if last_seq < published.last_seq:
        reason = (
            f"rows after {last_seq} are missing: the head published at "
            f"{published.at.isoformat()} is row {published.last_seq}"
        )
        return HeadCheck(published, audit.BrokenLink(last_seq + 1, reason))
    stored = (
        await conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == published.last_seq))
    ).scalar_one_or_none()
    if stored is not None and stored != published.hash:
        reason = "row differs from the published head (rewritten chain)"
        return HeadCheck(published, audit.BrokenLink(published.last_seq, reason))
    return HeadCheck(published, None)
