"""The checks behind `/healthz`, on long-lived clients rather than new connections per call.

The database check borrows a connection from the engine's pool. The Kafka check keeps
one admin client and asks it for the topic list; a client that failed or timed out is
dropped (closed in the background) and the next check starts a fresh one, so a broker
that comes back is seen again at the next call.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.kafka.admin import KafkaTopicAdmin, missing_topics
from coordinator.metrics import Metrics
from coordinator.tracking import ledger
from schemas import KafkaSettings

__all__ = ["KafkaHealth", "check_database", "check_tracker"]


async def check_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(select(1))


async def check_tracker(engine: AsyncEngine, metrics: Metrics | None) -> None:
    """The database has the types the tracker binds its ack batches as: without them
    (a database not upgraded) the tracker records no ack and retries its batches, while
    the rest of `serve` works on."""
    async with engine.connect() as conn:
        missing = await ledger.missing_types(conn)
    if metrics is not None:
        metrics.tracker_types_missing.set(len(missing))
    if missing:
        raise LookupError(
            f"types missing: {', '.join(missing)} "
            f"(migrations {', '.join(ledger.migrations_for(missing))}: retention db upgrade)"
        )


class KafkaHealth:
    """The broker answers a metadata request and the events and acks topics exist."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self.clients_started = 0
        """How many admin clients this checker has started (one while the broker stays up)."""

    async def check(self) -> None:
        async with self._lock:
            try:
                if self._admin is None:
                    admin = AIOKafkaAdminClient(**self.kafka.client_kwargs())
                    self._admin = admin
                    self.clients_started += 1
                    await admin.start()
                missing = await missing_topics(
                    self.kafka,
                    [self.kafka.topics.events, self.kafka.topics.acks],
                    admin=KafkaTopicAdmin(self._admin),
                )
            except BaseException:
                # Also on cancellation (the caller's timeout): a half-started or stuck
                # client is not reused.
                self._drop()
                raise
        if missing:
            raise LookupError(f"topics missing: {', '.join(missing)}")

    def _drop(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            task = asyncio.create_task(_close_quietly(admin))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        async with self._lock:
            self._drop()
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _close_quietly(admin: AIOKafkaAdminClient) -> None:
    # A client of a dead broker may fail to close; it is dropped either way.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await admin.close()
