"""`is_erased`: the erased topic kept as a local table (SPEC §12).

The table is read from the compacted topic's beginning without a consumer group, up to the
end offsets seen at start, before the first answer; a background task then follows the
topic. Each record must carry the coordinator's signature (as events do): one that fails
is ignored, so nobody but the coordinator can mark an entity erased or lift its entry. A
genuine record replayed later cannot lift an entry either: per key the latest expiry counts,
and a tombstone only drops an entry that has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import structlog

from consumer_sdk._internal.transport import record_of, table_reader
from consumer_sdk._internal.trust import Trust
from schemas import KafkaSettings, PoisonRecord, decode, utc_now
from schemas.suppression import ErasedEntity, suppression_key

__all__ = ["SuppressionTable"]

log = structlog.get_logger("consumer_sdk")


class SuppressionTable:
    """HMAC key → expiry of every erased entity on the topic."""

    def __init__(self, kafka: KafkaSettings, pepper: bytes, trust: Trust) -> None:
        self._kafka = kafka
        self._topic = kafka.topics.erased
        self._pepper = pepper
        self._trust = trust
        self._entries: dict[str, datetime] = {}
        self._consumer: Any = None
        self._follow: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def contains(self, entity_type: str, entity_id: str) -> bool:
        expires_at = self._entries.get(suppression_key(self._pepper, entity_type, entity_id))
        return expires_at is not None and expires_at > utc_now()

    async def start(self, *, timeout_s: float) -> None:
        """Read the topic up to its current end; then keep following it."""
        consumer = table_reader(self._kafka, self._topic)
        await consumer.start()
        self._consumer = consumer
        try:
            deadline = time.monotonic() + timeout_s
            # Without a group the consumer assigns itself every partition once the topic's
            # metadata arrives.
            while not consumer.assignment():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {self._topic} not found in {timeout_s:g}s")
                await asyncio.sleep(0.05)
            ends = await consumer.end_offsets(list(consumer.assignment()))
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {self._topic} not read to its end in {timeout_s:g}s")
                self._apply(await consumer.getmany(timeout_ms=200))
        except BaseException:
            await self.stop()
            raise
        self._follow = asyncio.create_task(self._follow_forever(), name="retention-suppression")
        log.info("suppression_list_loaded", topic=self._topic, entries=len(self._entries))

    async def _follow_forever(self) -> None:
        while True:
            try:
                self._apply(await self._consumer.getmany(timeout_ms=1000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The table keeps answering from what it has; the next poll tries again.
                log.warning("suppression_list_poll_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    def _apply(self, batches: dict[Any, list[Any]]) -> None:
        for messages in batches.values():
            for msg in messages:
                refused = self._trust.refused(record_of(msg))
                if refused is not None or msg.key is None:
                    log.warning(
                        "suppression_record_ignored",
                        partition=msg.partition,
                        offset=msg.offset,
                        reason=refused or "no key",
                    )
                    continue
                key = msg.key.decode("ascii", "replace")
                if msg.value is None:
                    # The signature covers key and value only, so an old genuine tombstone
                    # can be replayed: it may drop an entry that no longer suppresses, never
                    # a live one (an erasure renewed since).
                    expires_at = self._entries.get(key)
                    if expires_at is not None and expires_at <= utc_now():
                        del self._entries[key]
                    continue
                try:
                    entry = decode(ErasedEntity, msg.value)
                except PoisonRecord as poison:
                    log.warning(
                        "suppression_record_ignored",
                        partition=msg.partition,
                        offset=msg.offset,
                        reason=poison.reason,
                    )
                    continue
                if entry.key != key:
                    continue
                # The latest expiry wins: a replayed older entry cannot shorten a renewal.
                known = self._entries.get(key)
                if known is None or entry.expires_at > known:
                    self._entries[key] = entry.expires_at

    async def stop(self) -> None:
        follow, self._follow = self._follow, None
        if follow is not None:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
