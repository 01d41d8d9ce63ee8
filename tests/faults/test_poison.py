"""Scenario 5: garbage on the events and acks topics, mixed in with a real run.

Every kind of unreadable record (tests/faults/garbage.py: cut JSON, bad UTF-8, missing
fields, wrong types, newer schema versions, non-objects, NaN, 100,000-deep nesting,
empty values, tombstones, odd keys, records past MAX_RECORD_BYTES and, on topics that
allow them, records past the broker's default size) is produced while `retention run`'s
events are being published and acknowledged. Each service's consumer group must
dead-letter each event-topic record exactly once, the tracker must dead-letter and
ledger each ack-topic record as `malformed`, nobody may restart (same pids, no failed
batch), and the real events must end as the invariant check says.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy import func, select

from consumer_sdk import DlqHeader, DlqReason
from coordinator.store.tables import ack_ledger
from schemas import RetentionAck, RetentionEvent
from tests.e2e.harness import PRODUCT_SERVICES, Stack, TopicTail, all_of, running_tracker, wait_for
from tests.faults import garbage
from tests.faults.drive import complete, coordinator_processes, count, start_services
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import prepare_world
from tests.sdk.kafka_io import COORDINATOR

BATCH_FAILED = b'"what": "batch"'
"""What the SDK logs (`retry_scheduled`) when it tries a batch again: a poison record
must never cause one."""


def _headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {key: value.decode(errors="replace") for key, value in record.headers}


def _dead_letters(records: Sequence[ConsumerRecord[bytes, bytes]], acks_topic: str) -> Counter[str]:
    """DLQ records per consumer: each service's poison ones, and the tracker's."""
    found: Counter[str] = Counter()
    for record in records:
        headers = _headers(record)
        if headers.get(DlqHeader.REASON) == DlqReason.POISON.value:
            tracker = headers[DlqHeader.ORIGINAL_TOPIC] == acks_topic
            found["tracker" if tracker else headers[DlqHeader.SERVICE]] += 1
    return found


async def poison_scenario(
    stack: Stack,
    directory: Path,
    *,
    seed: int,
    users: int,
    on_events: int,
    on_acks: int,
    oversized: int,
    giant: int,
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 5 (poison records), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=2)
    topics = stack.kafka.topics
    if giant:
        await garbage.allow_giant_records(stack.kafka, [topics.events, topics.acks])
    bad_events = garbage.poison(
        rng, RetentionEvent, garbage.base_event(), on_events, oversized=oversized, giant=giant
    )
    bad_acks = garbage.poison(
        rng, RetentionAck, garbage.base_ack(), on_acks, oversized=oversized, giant=giant
    )
    chunks = rng.randint(4, 8)
    run, relay = coordinator_processes(stack, world)
    async with (
        running_tracker(stack) as tracker,
        TopicTail(stack.kafka, topics.dlq) as dlq,
    ):
        await start_services(stack)
        pids = {name: stack.processes[name].proc.pid for name in PRODUCT_SERVICES}  # type: ignore[union-attr]
        alive = all_of(stack.check_alive, tracker.check, dlq.check)
        await complete(run)
        relay.start()
        # Garbage before, while and after the relay publishes the run's events.
        for part in range(chunks):
            # Signed: the decoders are behind the signature check (scenario 11 covers
            # what a forger without the key gets).
            await garbage.produce_raw(
                stack.kafka, topics.events, bad_events[part::chunks], signer=COORDINATOR
            )
            await garbage.produce_raw(stack.kafka, topics.acks, bad_acks[part::chunks])
            await asyncio.sleep(rng.uniform(0, 0.3))
        assert await relay.wait(timeout_s=120) == 0, relay.log_tail()
        await settle(stack, world, timeout_s=120, alive=alive)
        want = Counter(
            {**dict.fromkeys(PRODUCT_SERVICES, len(bad_events)), "tracker": len(bad_acks)}
        )
        await wait_for(
            lambda: _dead_letters(dlq.records, topics.acks) == want,
            timeout_s=120,
            what=f"dead letters {dict(want)}",
            alive=alive,
            interval_s=0.2,
        )
        await dlq.caught_up()
        malformed = await count(
            stack,
            select(func.count())
            .select_from(ack_ledger)
            .where(ack_ledger.c.reject_reason == "malformed"),
        )
        stack.check_alive()
        restarted = {
            name: p.starts
            for name in PRODUCT_SERVICES
            if (p := stack.processes[name]).starts != 1
            or p.proc is None
            or p.proc.pid != pids[name]
        }
        failed_batches = {
            name: stack.processes[name].log().count(BATCH_FAILED) for name in PRODUCT_SERVICES
        }

    assert _dead_letters(dlq.records, topics.acks) == want
    # Records larger than the DLQ takes are dead-lettered cut to size, saying so.
    cut = Counter(
        h.get(DlqHeader.SERVICE, "?")
        for h in map(_headers, dlq.records)
        if DlqHeader.TRUNCATED in h
    )
    big = oversized + giant
    assert cut == (Counter({**dict.fromkeys(PRODUCT_SERVICES, big), "tracker": big}) if big else {})
    assert len(dlq.records) == len(bad_events) * len(PRODUCT_SERVICES) + len(bad_acks)
    assert malformed == len(bad_acks)
    assert restarted == {}
    assert failed_batches == dict.fromkeys(PRODUCT_SERVICES, 0)
    faults = Counter(garbage_events=len(bad_events), garbage_acks=len(bad_acks))
    report = await check_invariants(stack, world, scenario="5-poison", seed=seed, faults=faults)
    report.assert_ok()
    assert report.events == world.expected_events
    print(
        f"[faults] {len(bad_events)} garbage records on the events topic (each dead-lettered "
        f"once by each of {len(PRODUCT_SERVICES)} services), {len(bad_acks)} on the acks topic "
        f"(dead-lettered and ledgered as malformed by the tracker); kinds "
        f"{dict(garbage.counts(bad_events + bad_acks))}; no restart, no failed batch"
    )


async def test_poison_records_reduced(stack: Stack, tmp_path: Path) -> None:
    await poison_scenario(
        stack, tmp_path, seed=5005, users=20, on_events=120, on_acks=80, oversized=1, giant=0
    )


@pytest.mark.faults_full
async def test_poison_records_thousand(stack: Stack, tmp_path: Path) -> None:
    await poison_scenario(
        stack, tmp_path, seed=5555, users=150, on_events=700, on_acks=400, oversized=3, giant=2
    )
