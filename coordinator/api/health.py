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

from schemas import KafkaSettings

__all__ = ["KafkaHealth", "check_database"]


async def check_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(select(1))


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
                existing = set(await self._admin.list_topics())
            except BaseException:
                # Also on cancellation (the caller's timeout): a half-started or stuck
                # client is not reused.
                self._drop()
                raise
        missing = sorted({self.kafka.topics.events, self.kafka.topics.acks} - existing)
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
