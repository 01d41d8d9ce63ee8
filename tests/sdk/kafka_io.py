"""Producing to and reading back from the real broker, for SDK tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from schemas import KafkaSettings, RetentionEvent, encode
from schemas.signing import Signer
from tests import keys

COORDINATOR = keys.signer(keys.COORDINATOR)


async def produce(
    kafka: KafkaSettings,
    records: Sequence[RetentionEvent | tuple[bytes, bytes | None]],
    *,
    signer: Signer | None = COORDINATOR,
    topic: str | None = None,
    tree: int = 1,
) -> None:
    """Events (keyed as the relay keys them) or raw (key, value) pairs, in order, each
    signed as the coordinator signs (None: unsigned, like a forger without the key), to
    `topic` (default: the events topic). `tree` > 1 signs `tree` consecutive records at a
    time, one Merkle root each, as the relay does (`RETENTION_RELAY_SIGNATURE_BATCH`), in
    its default proof format v2 (a tree of one: per record)."""
    pairs = [
        (item.key.encode(), encode(item)) if isinstance(item, RetentionEvent) else item
        for item in records
    ]
    signed: list[list[tuple[str, bytes]]] = []
    for start in range(0, len(pairs), tree):
        chunk = pairs[start : start + tree]
        if signer is None:
            signed += [[] for _ in chunk]
        else:
            signed += signer.sign_batch_v2(chunk) if tree > 1 else [signer.sign_record(*chunk[0])]
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = []
        for (key, value), headers in zip(pairs, signed, strict=True):
            futures.append(
                await producer.send(topic or kafka.topics.events, value, key=key, headers=headers)
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    kafka: KafkaSettings, topic: str, *, expect: int, timeout_s: float = 20.0
) -> list[ConsumerRecord]:
    """All records of `topic` from the beginning, once at least `expect` are there."""
    # No group: every partition, from the beginning, nothing committed.
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if len(records) >= expect:
                # Anything beyond `expect` would show up right behind; give it a moment.
                more = await consumer.getmany(timeout_ms=300)
                for part in more.values():
                    records.extend(part)
                return records
        return records
    finally:
        await consumer.stop()


async def committed(kafka: KafkaSettings, group_id: str) -> dict[int, int]:
    """Committed next-offset per partition of the events topic (absent: none committed)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == kafka.topics.events and meta.offset >= 0
    }


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.1)
