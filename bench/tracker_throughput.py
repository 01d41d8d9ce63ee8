"""How fast the tracker applies acks, and how soon an event reads `completed`.

    python bench/tracker_throughput.py [--acks 100000] [--services 3] [--batch 1000]

Phase 1 (throughput): N acks (events × services) wait on the acks topic; the tracker
drains them batch by batch, one transaction each; reports acks/s. Then again with
`--replicas` trackers in one consumer group (as `retention serve` replicas run), on a
fresh topic, draining together.
Phase 2 (lag): with `run_forever` running, acks for fresh events arrive at a steady rate;
for each event, lag = when its state became `completed` (tracker clock) − when its last
ack was handed to the producer. Uses a fresh database and topic prefix; drops the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select

from coordinator.clock import FrozenClock, SystemClock
from coordinator.kafka.admin import ensure_topics
from coordinator.store.migrate import upgrade
from coordinator.store.tables import event_status
from schemas import KafkaSettings, encode
from tests import infra, keys
from tests.integration.tracking_support import (
    ack,
    insert_published,
    make_tracker,
    produce,
    registration,
)

SDK_BATCH = 500
"""Acks signed together, as the SDK signs one batch's acks (one Merkle root)."""


async def _produce_acks(kafka: KafkaSettings, acks: list, *, rate: float | None) -> dict:
    """Send acks signed per `SDK_BATCH` with the services' test key; with `rate`, pace
    them; return event_id → time its last ack was sent."""
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    signer = keys.signer()
    last_sent: dict = {}
    try:
        futures = []
        start = time.time()
        for offset in range(0, len(acks), SDK_BATCH):
            chunk = acks[offset : offset + SDK_BATCH]
            records = [(a.key.encode(), encode(a)) for a in chunk]
            for n, (a, (key, value), headers) in enumerate(
                zip(chunk, records, signer.sign_batch(records), strict=True)
            ):
                if rate is not None:
                    delay = start + (offset + n) / rate - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                futures.append(
                    await producer.send(kafka.topics.acks, value, key=key, headers=headers)
                )
                last_sent[a.event_id] = time.time()
        for f in futures:
            await f
    finally:
        await producer.stop()
    return last_sent


async def throughput(
    url: str,
    names: list[str],
    declared: list,
    clock: FrozenClock,
    *,
    n_events: int,
    batch: int,
    replicas: int,
) -> None:
    """Track `n_events` fresh events, put one ack per event and service on a fresh acks
    topic, and time `replicas` trackers of one consumer group draining it together."""
    kafka = KafkaSettings(topic_prefix=infra.unique_topic_prefix("bench"))
    await ensure_topics(kafka, partitions=6)
    t0 = datetime.now(UTC) - timedelta(days=1)
    await produce(kafka, kafka.topics.services, [registration(n, t0) for n in names])
    made = [
        make_tracker(url, kafka, clock, batch_size=batch, services=declared)
        for _ in range(replicas)
    ]
    tracker, engine, _ = made[0]
    ids = [f"r{replicas}-{i}" for i in range(n_events)]
    events = await insert_published(engine, ids, published_at=clock.now())
    for t, _, _ in made:
        await t.start()
        await t.sync_registry()
    started = time.perf_counter()
    tracked = await tracker.track_published()
    snapshot_s = time.perf_counter() - started
    acks = [ack(e, n, i, clock.now()) for e, i in zip(events, ids, strict=True) for n in names]
    started = time.perf_counter()
    await _produce_acks(kafka, acks, rate=None)
    produce_s = time.perf_counter() - started

    consumed, batches = 0, 0

    async def drain(t) -> None:
        nonlocal consumed, batches
        while consumed < len(acks):
            outcome = await t.consume_acks(timeout_s=0.5)
            if outcome is not None:
                consumed += outcome.records
                batches += 1

    started = time.perf_counter()
    await asyncio.gather(*(drain(t) for t, _, _ in made))
    apply_s = time.perf_counter() - started
    for t, _, _ in made:
        await t.stop()
    async with engine.connect() as conn:
        done = (
            await conn.execute(
                select(func.count()).where(
                    event_status.c.state == "completed", event_status.c.event_id.in_(events)
                )
            )
        ).scalar_one()
    for _, e, _ in made:
        await e.dispose()
    print(f"snapshot: {tracked} events × {len(names)} services in {snapshot_s:.2f}s")
    print(f"produce:  {len(acks)} acks in {produce_s:.2f}s")
    print(
        f"ledger:   {replicas} tracker(s), {consumed} acks in {apply_s:.2f}s = "
        f"{consumed / apply_s:,.0f} acks/s ({batches} batches of ≤{batch}); "
        f"completed events {done}/{n_events}; load {os.getloadavg()[0]:.1f}"
    )


async def main(total_acks: int, services: int, batch: int, lag_events: int, replicas: int) -> None:
    url = await infra.create_database(infra.database_url(), "bench_tracker")
    kafka = KafkaSettings(topic_prefix=infra.unique_topic_prefix("bench"))
    try:
        await upgrade(url)
        await ensure_topics(kafka, partitions=6)
        names = [f"svc{i}" for i in range(services)]
        t0 = datetime.now(UTC) - timedelta(days=1)
        await produce(kafka, kafka.topics.services, [registration(n, t0) for n in names])

        # --- phase 1: throughput, with 1 and then `replicas` trackers in one group ---
        clock = FrozenClock(datetime.now(UTC))
        declared = [keys.declared(n, {"user": ["delete", "anonymize"]}) for n in names]
        n_events = total_acks // services
        for count in sorted({1, replicas}):
            await throughput(
                url, names, declared, clock, n_events=n_events, batch=batch, replicas=count
            )

        # --- phase 2: lag from last ack to `completed` ------------------------------
        live, engine2, _ = make_tracker(
            url, kafka, SystemClock(), batch_size=batch, services=declared
        )
        lag_ids = [f"lag-{uuid.uuid4().hex[:8]}" for _ in range(lag_events)]
        lag_events_ids = await insert_published(engine2, lag_ids, published_at=datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(live.run_forever(stop))
        await asyncio.sleep(3)  # group join
        lag_acks = [
            ack(e, n, i, datetime.now(UTC))
            for e, i in zip(lag_events_ids, lag_ids, strict=True)
            for n in names
        ]
        last_sent = await _produce_acks(kafka, lag_acks, rate=1000.0)
        deadline = time.time() + 60
        while time.time() < deadline:
            async with engine2.connect() as conn:
                rows = (
                    await conn.execute(
                        select(event_status.c.event_id, event_status.c.updated_at).where(
                            event_status.c.event_id.in_(lag_events_ids),
                            event_status.c.state == "completed",
                        )
                    )
                ).all()
            if len(rows) == len(lag_events_ids):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await engine2.dispose()
        lags = sorted(r.updated_at.timestamp() - last_sent[r.event_id] for r in rows)
        print(
            f"lag:      {len(rows)}/{lag_events} events completed; last ack → completed "
            f"median {statistics.median(lags) * 1000:.0f} ms, "
            f"p95 {lags[int(len(lags) * 0.95) - 1] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms "
            f"(acks paced at 1000/s)"
        )
    finally:
        await infra.drop_database(url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acks", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--lag-events", type=int, default=500)
    parser.add_argument(
        "--replicas", type=int, default=2, help="also time this many trackers in one group"
    )
    args = parser.parse_args()
    infra.load_infra_env()
    infra.use_test_keys()  # every benchmark runs signed: acks verified per record
    asyncio.run(main(args.acks, args.services, args.batch, args.lag_events, args.replicas))
