"""Entries of the suppression list in the coordinator's database, and their publication.

An entry is written in the same transaction as the erasure it records, so it exists
exactly when the erasure does. The publisher sends what is unpublished (at least once:
the topic is compacted by key, so a repeat changes nothing), then marks it; an expired
entry is tombstoned, then deleted. A crash anywhere leaves the row to be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import Clock
from coordinator.kafka.ports import OutgoingRecord, Publisher
from coordinator.settings import Settings
from coordinator.store.tables import erased_entities
from schemas import Topics, encode
from schemas.signing import Signer
from schemas.suppression import ErasedEntity, read_pepper, suppression_key

__all__ = ["Suppression", "SuppressionPublisher", "record_erased"]

log = structlog.get_logger("retention.suppression")

_BATCH = 500


class Suppression:
    """The pepper and how long an entry lasts: what writing an entry needs."""

    def __init__(self, pepper: bytes, retention: timedelta) -> None:
        self.pepper = pepper
        self.retention = retention

    @classmethod
    def from_settings(cls, settings: Settings) -> Suppression | None:
        """None without `RETENTION_SUPPRESSION_PEPPER_FILE`; `PepperError` for a bad file."""
        if settings.suppression_pepper_file is None:
            return None
        return cls(
            read_pepper(settings.suppression_pepper_file),
            timedelta(days=settings.suppression_retention_days),
        )

    def key(self, entity_type: str, entity_id: str) -> str:
        return suppression_key(self.pepper, entity_type, entity_id)


async def record_erased(
    conn: AsyncConnection,
    suppression: Suppression,
    entity_type: str,
    entity_id: str,
    *,
    now: datetime,
) -> str:
    """List `type:id` as erased, in the caller's transaction; returns its key. Erased
    again later, its entry is renewed (a new expiry) and published again."""
    key = suppression.key(entity_type, entity_id)
    statement = pg_insert(erased_entities).values(
        key=key, erased_at=now, expires_at=now + suppression.retention, published_at=None
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[erased_entities.c.key],
            set_={
                "erased_at": statement.excluded.erased_at,
                "expires_at": statement.excluded.expires_at,
                "published_at": None,
            },
        )
    )
    return key


class SuppressionPublisher:
    """Sends the suppression list's changes to the erased topic, signed like events."""

    def __init__(
        self,
        engine: AsyncEngine,
        topics: Topics,
        publisher: Publisher,
        signer: Signer | None,
        *,
        clock: Clock,
        interval_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._topic = topics.erased
        self._publisher = publisher
        self._signer = signer
        self._clock = clock
        self._interval_s = interval_s

    async def publish_once(self) -> tuple[int, int]:
        """(entries published, entries expired) in this pass, in batches."""
        published = expired = 0
        while True:
            sent = await self._publish_batch()
            published += sent
            if sent < _BATCH:
                break
        while True:
            gone = await self._expire_batch()
            expired += gone
            if gone < _BATCH:
                break
        return published, expired

    async def _publish_batch(self) -> int:
        e = erased_entities.c
        async with self._engine.begin() as conn:
            rows = list(
                await conn.execute(
                    select(e.key, e.erased_at, e.expires_at)
                    .where(e.published_at.is_(None))
                    .order_by(e.erased_at)
                    .limit(_BATCH)
                    # Two replicas never send the same row at once.
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                return 0
            records = [
                (
                    row.key.encode(),
                    encode(
                        ErasedEntity(
                            key=row.key, erased_at=row.erased_at, expires_at=row.expires_at
                        )
                    ),
                )
                for row in rows
            ]
            await self._send(records)
            await conn.execute(
                update(erased_entities)
                .where(e.key.in_([row.key for row in rows]))
                .values(published_at=self._clock.now())
            )
        return len(rows)

    async def _expire_batch(self) -> int:
        e = erased_entities.c
        async with self._engine.begin() as conn:
            keys = list(
                (
                    await conn.execute(
                        select(e.key)
                        .where(e.expires_at <= self._clock.now())
                        .order_by(e.expires_at)
                        .limit(_BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if not keys:
                return 0
            # The tombstone first: a crash before the delete sends it again.
            await self._send([(key.encode(), None) for key in keys])
            await conn.execute(delete(erased_entities).where(e.key.in_(keys)))
        return len(keys)

    async def _send(self, records: Sequence[tuple[bytes, bytes | None]]) -> None:
        headers = (
            self._signer.sign_batch(list(records))
            if self._signer is not None
            else [[] for _ in records]
        )
        await self._publisher.publish(
            self._topic,
            [OutgoingRecord(k, v, h) for (k, v), h in zip(records, headers, strict=True)],
        )

    async def start(self) -> None:
        await self._publisher.start()

    async def stop(self) -> None:
        await self._publisher.stop()

    async def run_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            while not stop.is_set():
                try:
                    published, expired = await self.publish_once()
                    if published or expired:
                        log.info("suppression_published", entries=published, expired=expired)
                except Exception as exc:
                    log.warning("suppression_publish_failed", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
        finally:
            await self.stop()
