"""Anyone can write the DLQ topic, so the DLQ tools read it a fetch at a time: a flood of
forged dead letters is counted whole, listed up to `--limit`, and left by a re-drive,
without the topic ever being held in memory."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from coordinator.operations.dlq import (
    MAX_GROUPS,
    OTHERS,
    SHOWN_BYTES,
    SHOWN_HEADERS,
    DeadLetter,
    Left,
    Listing,
    Redriven,
    dead_letters,
)
from coordinator.store.migrate import upgrade
from schemas import KafkaSettings
from schemas.dlq import DlqHeader, DlqReason, dlq_headers
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


async def test_the_timeout_bounds_the_read_not_what_the_reader_does_between_fetches(
    topics: KafkaSettings,
) -> None:
    # A re-drive sends each chunk before it reads the next: a slow database or broker on
    # that side is no reason to give up reading a topic that is read quickly.
    await _flood(topics)
    chunks = 0
    async with dead_letters(topics, timeout_s=5) as read:
        async for chunk in read:
            chunks += 1
            if chunks == 1:
                await asyncio.sleep(6)
            assert chunk
    assert chunks > 1


def _letter(service: str, value: bytes) -> DeadLetter:
    return DeadLetter(
        0,
        0,
        datetime.now(UTC),
        b"user:42",
        value,
        ((DlqHeader.SERVICE, service.encode()), (DlqHeader.REASON, b"poison")),
    )


def test_a_listing_holds_a_bounded_number_of_groups_and_no_payloads() -> None:
    # Whoever writes the DLQ names the service in a header: a new name per record must
    # not make the summary grow with the topic, nor kept records hold megabyte values.
    listing = Listing(keep=10)
    listing.add(_letter(f"svc-{i}", b"x" * 1000) for i in range(MAX_GROUPS + 500))
    assert listing.total == MAX_GROUPS + 500
    assert len(listing.groups) == MAX_GROUPS + 1
    assert sum(n for n, _, _ in listing.groups.values()) == listing.total
    assert listing.groups[OTHERS][0] == 500
    assert {(d.key, d.value) for d in listing.records} == {(None, None)}
    assert listing.records[0].service == "svc-0"

    done = Redriven(keep=10)
    done.add_left((_letter("svc", b"x" * 1000) for _ in range(20)), Left.UNDECODABLE)
    assert done.left_total == 20
    assert {(d.key, d.value) for d, _ in done.left} == {(None, None)}


def test_a_listing_keeps_only_the_shown_headers_and_cuts_them() -> None:
    # The writer chooses the size and number of headers too, up to the broker's limit.
    junk = tuple((f"junk-{i}", b"j" * 100) for i in range(1000))
    huge = DeadLetter(
        0,
        0,
        datetime.now(UTC),
        None,
        None,
        ((DlqHeader.SERVICE, b"s" * 100_000), (DlqHeader.REASON, b"poison"), *junk),
    )
    listing = Listing(keep=10)
    listing.add([huge])
    [kept] = listing.records
    assert len(kept.headers) <= len(SHOWN_HEADERS)
    assert max(len(v) for _, v in kept.headers) <= SHOWN_BYTES
    [(service, reason)] = listing.groups
    assert (len(service), reason) == (SHOWN_BYTES, "poison")
    done = Redriven(keep=10)
    done.add_left([huge], Left.NOT_AN_EVENT)
    assert done.left[0][0].headers == kept.headers
