"""Anyone can write the DLQ topic, so the DLQ tools read it a fetch at a time: a flood of
forged dead letters is counted whole, listed up to `--limit`, and left by a re-drive,
without the topic ever being held in memory."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from coordinator.operations.dlq import Listing, dead_letters
from coordinator.store.migrate import upgrade
from schemas import KafkaSettings
from schemas.dlq import DlqReason, dlq_headers
from tests import infra
from tests.integration.operations_support import run_cli

FLOOD = 3000
# Larger than one fetch (1 MiB per partition by default): the read takes several.
VALUE = os.urandom(1024)


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "test_dlq_flood")
    await upgrade(url)
    yield url
    await infra.drop_database(url)


async def _flood(kafka: KafkaSettings) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:
        headers = dlq_headers(
            [],
            topic=kafka.topics.events,
            partition=0,
            offset=0,
            service="flood",
            reason=DlqReason.POISON,
            error="forged",
            attempts=0,
        )
        sent = [
            await producer.send(kafka.topics.dlq, VALUE, key=str(i).encode(), headers=headers)
            for i in range(FLOOD)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def test_a_flooded_dlq_is_counted_whole_and_listed_up_to_the_limit(
    topics: KafkaSettings, database: str
) -> None:
    await _flood(topics)

    chunks = 0
    listing = Listing(keep=50)
    async with dead_letters(topics, timeout_s=60) as read:
        async for chunk in read:
            chunks += 1
            assert len(chunk) < FLOOD
            listing.add(chunk)
    assert chunks > 1
    assert (listing.total, len(listing.records), listing.truncated) == (FLOOD, 50, True)
    assert listing.groups["flood", "poison"][0] == FLOOD

    listed = await asyncio.to_thread(
        run_cli, database, topics, "dlq", "list", "--json", "--limit", "10"
    )
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert (len(body["records"]), body["total"], body["truncated"]) == (10, FLOOD, True)

    done = await asyncio.to_thread(
        run_cli, database, topics, "dlq", "redrive", "--service", "flood", "--by", "oncall",
        "--json", "--limit", "5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["selected"] == FLOOD
    assert (result["sent_total"], result["left_total"]) == (0, FLOOD)
    assert len(result["left"]) == 5
    assert result["truncated"]
    assert {r["left_because"] for r in result["left"]} == {"not_signed_by_coordinator"}
