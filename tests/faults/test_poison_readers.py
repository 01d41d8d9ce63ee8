"""Scenario 5b: every reader survives poison on every topic it reads, and goes on after it.

Scenario 5 covers the core-SDK services (events topic) and the tracker's acks consumer.
Here, with every kind of garbage in tests/faults/garbage.py (including values PostgreSQL
or datetime can't take: `0001-01-01T00:00:00+14:00`, NUL, lone surrogates, ints past
bigint/integer, over-long strings):

- the services topic, read by `retention serve` at start (it crash-looped on one bad
  timestamp) and while it runs: each poison record is dead-lettered once, registrations
  after it are applied, the process never exits;
- the events topic, read by the Faust example service (`consumer_sdk.faust`): each
  poison record is dead-lettered once, the events after it are acknowledged, no restart.
"""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord

from consumer_sdk import DlqHeader, DlqReason
from coordinator.tracking.registry import Retirement
from schemas import RetentionEvent, ServiceRegistration, encode
from tests.e2e.harness import FAUST_SERVICE, AckTail, Stack, TopicTail, all_of, registered, wait_for
from tests.faults import garbage
from tests.faults.drive import COORDINATOR_ENV
from tests.faults.world import prepare_world
from tests.integration.tracking_support import registration
from tests.sdk.helpers import event
from tests.sdk.kafka_io import COORDINATOR

SERVICES_KINDS = tuple(k for k in garbage.KINDS if k != "tombstone")
"""A keyed tombstone on the services topic is a retirement, not poison."""

BAD_TOMBSTONES = [
    garbage.Poison("tombstone_key", key, None)
    for key in (b"nul\x00service", b"s" * 300, b"\xff\xfe")
]
"""Retirements whose key can't be a service name (the key becomes one)."""


def _keyed(records: Sequence[garbage.Poison]) -> list[garbage.Poison]:
    # A compacted topic refuses records without a key.
    return [r if r.key else garbage.Poison(r.kind, b"garbage-key", r.value) for r in records]


def _headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {key: value.decode(errors="replace") for key, value in record.headers}


def _from_source(records: Sequence[ConsumerRecord[bytes, bytes]], topic: str) -> int:
    return sum(1 for r in records if _headers(r).get(DlqHeader.ORIGINAL_TOPIC) == topic)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_starts_and_runs_past_poison_registrations(
    stack: Stack, tmp_path: Path
) -> None:
    rng = random.Random(5101)
    topic = stack.kafka.topics.services
    base = garbage.base_registration()
    before = _keyed(garbage.poison(rng, ServiceRegistration, base, 60, kinds=SERVICES_KINDS))
    during = _keyed(garbage.poison(rng, ServiceRegistration, base, 40, kinds=SERVICES_KINDS))
    now = datetime.now(UTC)
    world = await prepare_world(stack, tmp_path, users=5, per_category=1)

    async with TopicTail(stack.kafka, stack.kafka.topics.dlq) as dlq:
        # Poison first, then a good registration: the one serve crash-looped on at start.
        await garbage.produce_raw(stack.kafka, topic, [*before, *BAD_TOMBSTONES])
        first = registration("after-poison", now)
        await garbage.produce_raw(stack.kafka, topic, [(first.key.encode(), encode(first))])
        serve = stack.add_cli(
            "serve",
            "serve",
            "--port",
            str(_free_port()),
            "--policies",
            str(world.policy_file),
            env={**COORDINATOR_ENV, "RETENTION_TRACKER_POLL_INTERVAL_S": "0.2"},
        )
        serve.start()
        alive = all_of(serve.check_alive, dlq.check)
        await wait_for(
            lambda: _has(stack, "after-poison"),
            timeout_s=90,
            what="the registration after the poison applied",
            alive=alive,
        )
        # And while it runs: more poison, then another good one.
        await garbage.produce_raw(stack.kafka, topic, during)
        second = registration("after-more-poison", now)
        await garbage.produce_raw(stack.kafka, topic, [(second.key.encode(), encode(second))])
        await wait_for(
            lambda: _has(stack, "after-more-poison"),
            timeout_s=60,
            what="the registration after the second poison applied",
            alive=alive,
        )
        want = len(before) + len(BAD_TOMBSTONES) + len(during)
        await wait_for(
            lambda: _from_source(dlq.records, topic) >= want,
            timeout_s=60,
            what=f"{want} dead letters from the services topic",
            alive=alive,
            interval_s=0.2,
        )
        await dlq.caught_up()
        serve.check_alive()
        starts = serve.starts
    assert _from_source(dlq.records, topic) == want
    assert starts == 1
    assert {"after-poison", "after-more-poison"} <= await registered(stack)
    print(
        f"\n[faults] scenario 5b (serve, services topic): {want} poison records dead-lettered "
        f"({dict(garbage.counts([*before, *BAD_TOMBSTONES, *during]))}); both registrations "
        "after them applied; one start"
    )


async def _has(stack: Stack, service: str) -> bool:
    return service in await registered(stack)


async def test_faust_service_dead_letters_poison_and_acks_what_follows(stack: Stack) -> None:
    rng = random.Random(5102)
    topics = stack.kafka.topics
    bad = garbage.poison(rng, RetentionEvent, garbage.base_event(), 80, oversized=1)
    good = [event(f"faust-poison-{i}") for i in range(20)]
    chunks = [bad[:40], good[:10], bad[40:], good[10:]]
    async with TopicTail(stack.kafka, topics.dlq) as dlq, AckTail(stack.kafka) as acks:
        await stack.start_services(FAUST_SERVICE)
        process = stack.processes[FAUST_SERVICE]
        pid = process.proc.pid  # type: ignore[union-attr]
        alive = all_of(stack.check_alive, dlq.check, acks.check)
        for chunk in chunks:
            await garbage.produce_raw(
                stack.kafka,
                topics.events,
                [
                    r if isinstance(r, garbage.Poison) else (r.key.encode(), encode(r))
                    for r in chunk
                ],
                signer=COORDINATOR,
            )

        def dead_lettered() -> Counter[str]:
            return Counter(
                h.get(DlqHeader.SERVICE, "?")
                for h in map(_headers, dlq.records)
                if h.get(DlqHeader.REASON) == DlqReason.POISON.value
            )

        await wait_for(
            lambda: acks.acked_by(FAUST_SERVICE) >= len(good),
            timeout_s=120,
            what="every event after the poison acknowledged",
            alive=alive,
        )
        await wait_for(
            lambda: dead_lettered() == Counter({FAUST_SERVICE: len(bad)}),
            timeout_s=60,
            what=f"{len(bad)} poison records dead-lettered",
            alive=alive,
            interval_s=0.2,
        )
        await dlq.caught_up()
        stack.check_alive()
    assert dead_lettered() == Counter({FAUST_SERVICE: len(bad)})
    assert {pair[0] for pair in acks.pairs() if pair[1] == FAUST_SERVICE} >= {
        e.event_id for e in good
    }
    assert (process.starts, process.proc.pid) == (1, pid)  # type: ignore[union-attr]
    print(
        f"\n[faults] scenario 5b (Faust service, events topic): {len(bad)} poison records "
        f"dead-lettered once ({dict(garbage.counts(bad))}); {len(good)} events after them "
        "acknowledged; no restart"
    )


def test_tombstone_timestamps_out_of_range_are_poison() -> None:
    # The producer sets a record's timestamp; the broker may accept any int64.
    from coordinator.kafka.ports import ConsumedRecord
    from coordinator.tracking.tracker import _registration
    from schemas import PoisonRecord

    def tombstone(timestamp_ms: int) -> ConsumedRecord:
        return ConsumedRecord("t.services", 0, 0, b"billing", None, timestamp_ms=timestamp_ms)

    for timestamp in (-(2**63), -1, 2**63 - 1, 253_402_300_800_000):
        with pytest.raises(PoisonRecord, match="timestamp"):
            _registration(tombstone(timestamp))
    retirement = _registration(tombstone(0))
    assert isinstance(retirement, Retirement)
    assert retirement.service == "billing"
