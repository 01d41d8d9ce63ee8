"""End to end: users erased locally, then by three service processes, until proven done.

Ours: `Runner` (policy `inactive_users`, delete, fan-out) → relay → notifications,
preferences, billing (real processes) → tracker; the clock stops when the tracker has
every event `completed`. Seed: the article's loop (SELECT … LIMIT, DELETE … IN, commit)
then one awaited `send_and_wait` per event; it has no tracker, so the clock stops when
the acks topic holds an ack from each of the three services for every event. Services
are started and registered before the clock starts. Runs on `users` entities only: the
services process ~200 events/s each, so this phase uses a subset (BENCH_E2E_USERS).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from coordinator.clock import SystemClock
from coordinator.policies import parse_policies
from coordinator.runner import Runner
from coordinator.settings import Settings
from schemas import EventType, RetentionEvent, encode
from services import billing, notifications, preferences
from tests import infra
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    AckTail,
    Stack,
    has_registered,
    isolated_stack,
    running_relay,
    running_tracker,
    states_are,
    wait_for,
)
from tests.infra import ROOT

POLICY = """
policies:
  - name: inactive_users
    table: bench_users
    entity_type: user
    timestamp_column: last_seen
    retention: 365d
    action: delete
    legal_basis: benchmark
    fan_out: true
"""
TIMEOUT_S = 600


async def _prepare(stack: Stack, users: list[str]) -> None:
    engine = stack.engine()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE bench_users (id text PRIMARY KEY, last_seen timestamptz)")
            )
            await conn.execute(
                text("INSERT INTO bench_users SELECT unnest(CAST(:ids AS text[])), :at"),
                {"ids": users, "at": datetime.now(UTC) - timedelta(days=400)},
            )
    finally:
        await engine.dispose()
    await notifications.seed(stack.services_url, users)
    await preferences.seed(stack.services_url, users)
    await billing.seed(stack.services_url, users)


async def _seed_purge_and_publish(stack: Stack) -> int:
    """The article's executor loop on `bench_users`, then its publisher, per batch."""
    engine = stack.engine()
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs())
    await producer.start()
    sent = 0
    try:
        async with engine.connect() as conn:
            cutoff = datetime.now(UTC) - timedelta(days=365)
            while True:
                rows = await conn.execute(
                    text("SELECT id FROM bench_users WHERE last_seen < :cutoff LIMIT 5000"),
                    {"cutoff": cutoff},
                )
                ids = [row[0] for row in rows]
                if not ids:
                    break
                placeholders = ", ".join(f":id_{i}" for i in range(len(ids)))
                await conn.execute(
                    text(f"DELETE FROM bench_users WHERE id IN ({placeholders})"),
                    {f"id_{i}": id_ for i, id_ in enumerate(ids)},
                )
                await conn.commit()
                now = datetime.now(UTC)
                for user in ids:
                    event = RetentionEvent(
                        event_id=uuid.uuid4(),
                        type=EventType.DELETE,
                        entity_type="user",
                        entity_id=user,
                        policy="inactive_users",
                        legal_basis="benchmark",
                        initiated_at=now,
                        deadline=now + timedelta(days=30),
                        fields=[],
                        run_id=None,
                    )
                    await producer.send_and_wait(stack.kafka.topics.events, encode(event))
                    sent += 1
    finally:
        await producer.stop()
        await engine.dispose()
    return sent


async def _ours(users: list[str], log_dir: Path, label: str) -> float:
    async with isolated_stack(
        infra.database_url(), infra.KafkaSettings().bootstrap_servers, label, log_dir
    ) as stack:
        await _prepare(stack, users)
        await stack.start_services(*PRODUCT_SERVICES)
        async with running_tracker(stack) as tracker:
            await wait_for(
                partial(has_registered, stack, PRODUCT_SERVICES),
                timeout_s=60,
                what="registrations",
                alive=tracker.check,
            )
            start = time.perf_counter()
            engine = stack.engine()
            try:
                runner = Runner(
                    engine,
                    parse_policies(POLICY),
                    Settings(database_url=stack.coordinator_url),
                    clock=SystemClock(),
                )
                report = await runner.run()
                assert report.ok, report.as_dict()
            finally:
                await engine.dispose()
            async with running_relay(stack) as relay:
                await wait_for(
                    partial(states_are, stack, completed=len(users)),
                    timeout_s=TIMEOUT_S,
                    what="every event completed",
                    interval_s=0.2,
                    alive=lambda: (stack.check_alive(), relay.check(), tracker.check()),
                )
            return len(users) / (time.perf_counter() - start)


async def _seed(users: list[str], log_dir: Path, label: str) -> float:
    async with isolated_stack(
        infra.database_url(), infra.KafkaSettings().bootstrap_servers, label, log_dir
    ) as stack:
        await _prepare(stack, users)
        await stack.start_services(*PRODUCT_SERVICES)
        async with AckTail(stack.kafka) as acks:
            start = time.perf_counter()
            sent = await _seed_purge_and_publish(stack)
            assert sent == len(users), (sent, len(users))
            await wait_for(
                lambda: len(acks.pairs()) >= 3 * len(users),
                timeout_s=TIMEOUT_S,
                what="three acks per event",
                interval_s=0.2,
                alive=stack.check_alive,
            )
            return len(users) / (time.perf_counter() - start)


async def compare(count: int, round_no: int) -> dict[str, float]:
    users = [f"bench-u{i:07d}" for i in range(count)]
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = [("seed", _seed), ("ours", _ours)]
    if round_no % 2:
        runs.reverse()
    return {name: await run(users, log_dir, f"bench_e2e_{name}") for name, run in runs}
