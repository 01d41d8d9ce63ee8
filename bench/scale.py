"""`make bench-scale`: tracking and pruning with a large history present (#16 item 7).

    python -m bench.scale      # SCALE_ROWS=10000000 SCALE_BATCH=100000 by default

On a fresh database:

1. `track.empty`: publish `SCALE_BATCH` new events and time tracking them, on an empty
   database (the floor);
2. seed `SCALE_ROWS` tracked events synthetically with COPY (then VACUUM ANALYZE, as
   autovacuum would have long since): their outbox batches
   (5,000 events each, a policy's default batch size) with the relay's watermark and the
   tracker's cursor past them, their status (completed 7 years ago), one expected ack and
   one ack ledger row per declared service (3), plus `SCALE_ROWS` audit rows in a month
   7 years back;
3. `track`: publish another `SCALE_BATCH` events and time tracking them with the history
   present; ours / limit is the throughput with the history against the floor (goal ≥
   1/1.2: tracking may cost at most 1.2× per event);
4. `prune.*`: the coordinator's own pruning of that history (coordinator/evidence/prune.py):
   the audit log, the ack ledger and the outbox batches (each a dropped monthly
   partition) and the event status with its expected acks (deleted in windows: not
   partitioned); ours is the wall time, limit the database's.

Events are published and tracked only through the public functions (the test helper
`insert_published` that writes outbox rows as a purge does, and
`Tracker.track_published`), so the timed part runs any version of the tracker; the COPY
seeding writes the current outbox layout. Writes one JSON file in the fixed schema of
bench/results.py to bench/results/scale/ (plus `bytes_per_row`: on-disk bytes per event
of each history table, per event and service for expected acks and ledger;
`own_bytes_per_event` before and after pruning; `partitions_dropped` by each prune) and
prints it; progress on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bench.__main__ import commit, env_int, machine, postgres_version
from bench.results import RESULTS, SCHEMA, phase
from coordinator.clock import FrozenClock
from coordinator.evidence.partitions import (
    AUDIT,
    LEDGER,
    OUTBOX,
    Month,
    ensure_months,
    ledger_event_at,
)
from coordinator.evidence.prune import prune_ack_ledger, prune_audit, prune_event_status
from coordinator.outbox.events import event_id
from coordinator.outbox.lookup import TRACKED, published_up_to, tracked_up_to
from coordinator.outbox.prune import prune_outbox
from coordinator.store.migrate import upgrade
from coordinator.store.tables import outbox_batches, outbox_cursors, outbox_marks
from schemas import KafkaSettings
from tests import infra, keys
from tests.integration.tracking_support import insert_published, make_tracker

SERVICES = ("billing", "search_index", "notifications")
CHUNK = 100_000
PURGE_BATCH = 5_000
YEAR = timedelta(days=365)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _copy(
    engine: Any, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]
) -> None:
    async with engine.begin() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(table, records=rows, columns=columns)


def _base(at: datetime) -> uuid.UUID:
    """A batch's id base as `enqueue` makes one: a UUIDv7 of `at` with its last 32 bits 0."""
    ms = int(at.timestamp() * 1000).to_bytes(6, "big")
    rand = bytearray(os.urandom(6))
    rand[0] = 0x70 | (rand[0] & 0x0F)
    rand[2] = 0x80 | (rand[2] & 0x3F)
    return event_id(uuid.UUID(bytes=ms + bytes(rand) + bytes(4)), 0)


def _batches(
    first_seq: int, first_entity: int, count: int, at: datetime
) -> tuple[list[tuple[Any, ...]], list[uuid.UUID]]:
    """Outbox batch rows of `PURGE_BATCH` events (the policy default) for `count` events
    numbered from `first_entity`, and the event ids they hold, in order."""
    rows: list[tuple[Any, ...]] = []
    ids: list[uuid.UUID] = []
    for k, start in enumerate(range(0, count, PURGE_BATCH)):
        size = min(PURGE_BATCH, count - start)
        base = _base(at)
        ids.extend(event_id(base, 1 + n) for n in range(size))
        rows.append(
            (
                first_seq + k,
                base,
                1,
                size,
                "inactive_users",
                "delete",
                "user",
                "GDPR Art. 5(1)(e)",
                "[]",
                at,
                at + timedelta(days=30),
                [f"s{first_entity + start + n}" for n in range(size)],
                at,
            )
        )
    return rows, ids


def _status_rows(ids: list[uuid.UUID], at: datetime, first: int) -> Iterator[tuple[Any, ...]]:
    for n, event in enumerate(ids):
        yield (
            event,
            "inactive_users",
            "delete",
            "user",
            f"s{first + n}",
            at,
            at,
            at + timedelta(days=30),
            "completed",
            len(SERVICES),
            at,
            at,
            at,
        )


def _ack_rows(ids: list[uuid.UUID], at: datetime) -> Iterator[tuple[Any, ...]]:
    for event in ids:
        for service in SERVICES:
            yield (event, service, "completed", 1, 1, at, at, 1)


def _ledger_rows(ids: list[uuid.UUID], at: datetime, first: int) -> Iterator[tuple[Any, ...]]:
    offset = first * len(SERVICES)
    for n, event in enumerate(ids):
        for service in SERVICES:
            offset += 1
            yield (
                "acks",
                0,
                offset,
                at,
                event,
                service,
                "user",
                f"s{first + n}",
                "completed",
                1,
                1,
                at,
                True,
                ledger_event_at(event, at),
            )


def _audit_rows(first: int, count: int, at: datetime) -> Iterator[tuple[Any, ...]]:
    for seq in range(first, first + count):
        yield (seq, at, "events_published", "relay", "{}", "0" * 64, f"{seq:064x}")


async def seed(engine: Any, rows: int, at: datetime) -> None:
    """`rows` completed events (outbox batches, status, expected acks) and `rows` audit
    rows, by COPY; the relay's watermark and the tracker's cursor past their batches, as
    if both had followed them."""
    async with engine.begin() as conn:
        for layout in (AUDIT, OUTBOX, LEDGER):
            await ensure_months(conn, [Month.of(at)], layout)
        seq = max(await published_up_to(conn), await tracked_up_to(conn))
        seq = max(seq, int(await conn.scalar(select(func.max(outbox_batches.c.seq))) or 0))
    done = 0
    while done < rows:
        n = min(CHUNK, rows - done)
        batches, ids = _batches(seq + 1, done, n, at)
        seq += len(batches)
        await _copy(
            engine,
            outbox_batches.name,
            [
                "seq",
                "id_base",
                "id_first",
                "events",
                "policy",
                "event_type",
                "entity_type",
                "legal_basis",
                "fields",
                "initiated_at",
                "deadline",
                "entity_ids",
                "created_at",
            ],
            iter(batches),
        )
        async with engine.begin() as conn:
            await conn.execute(insert(outbox_marks).values(up_to=seq, published_at=at, events=n))
        await _copy(
            engine,
            "retention_event_status",
            [
                "event_id",
                "policy",
                "event_type",
                "entity_type",
                "entity_id",
                "initiated_at",
                "published_at",
                "deadline",
                "state",
                "expected",
                "completed_at",
                "tracked_at",
                "updated_at",
            ],
            _status_rows(ids, at, done),
        )
        await _copy(
            engine,
            "retention_expected_acks",
            [
                "event_id",
                "service",
                "status",
                "records_affected",
                "attempt",
                "acknowledged_at",
                "first_ack_at",
                "acks_received",
            ],
            _ack_rows(ids, at),
        )
        await _copy(
            engine,
            "retention_ack_ledger",
            [
                "kafka_topic",
                "kafka_partition",
                "kafka_offset",
                "received_at",
                "event_id",
                "service",
                "entity_type",
                "entity_id",
                "status",
                "records_affected",
                "attempt",
                "acknowledged_at",
                "accepted",
                "event_at",
            ],
            _ledger_rows(ids, at, done),
        )
        await _copy(
            engine,
            "audit_log",
            ["seq", "at", "action", "actor", "data", "prev_hash", "hash"],
            _audit_rows(done + 1, n, at),
        )
        done += n
        say(f"seeded {done:,} of {rows:,}")
    async with engine.begin() as conn:
        cursor = pg_insert(outbox_cursors).values(name=TRACKED, seq=seq)
        await conn.execute(cursor.on_conflict_do_update(index_elements=["name"], set_={"seq": seq}))
    # History years old has been vacuumed by autovacuum long since (insert-only tables
    # too): its pages are all-visible, which index-only scans rely on.
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))


async def track_batch(tracker: Any, engine: Any, clock: FrozenClock, batch: int, tag: str) -> float:
    """Publish `batch` events (untimed), then time tracking all of them: events/s."""
    await insert_published(engine, [f"{tag}{i}" for i in range(batch)], published_at=clock.now())
    tracked = 0
    started = time.perf_counter()
    while tracked < batch:
        got = await tracker.track_published()
        if not got:
            raise RuntimeError(f"tracking stalled at {tracked} of {batch}")
        tracked += got
    return batch / (time.perf_counter() - started)


async def bytes_per_row(engine: Any, rows: int) -> dict[str, float]:
    """On-disk bytes (heap, indexes, TOAST) per seeded event of each history table; the
    audit log summed over its partitions."""
    sizes: dict[str, float] = {}
    async with engine.connect() as conn:
        for table, per_event in (
            (outbox_batches.name, 1),
            ("retention_event_status", 1),
            ("retention_expected_acks", len(SERVICES)),
            ("retention_ack_ledger", len(SERVICES)),
            ("audit_log", 1),
        ):
            total = (
                await conn.execute(
                    # pg_partition_tree has no rows for a table that is not partitioned.
                    text(
                        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
                        "FROM pg_partition_tree(CAST(:t AS regclass))), "
                        "pg_total_relation_size(CAST(:t AS regclass)))"
                    ),
                    {"t": table},
                )
            ).scalar_one()
            sizes[table] = round(float(total) / (rows * per_event), 1)
    return sizes


OWN_TABLES = (
    outbox_batches.name,
    "retention_outbox_marks",
    "retention_event_status",
    "retention_expected_acks",
    "retention_ack_ledger",
    "audit_log",
    "audit_checkpoints",
)


async def own_bytes(engine: Any) -> int:
    """On-disk bytes of the coordinator's own tables (partitions included)."""
    total = 0
    async with engine.connect() as conn:
        for table in OWN_TABLES:
            total += int(
                (
                    await conn.execute(
                        text(
                            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
                            "FROM pg_partition_tree(CAST(:t AS regclass))), "
                            "pg_total_relation_size(CAST(:t AS regclass)))"
                        ),
                        {"t": table},
                    )
                ).scalar_one()
            )
    return total


async def database_time(engine: Any) -> float:
    """Seconds the database spent in statements so far (pg_stat_database, this database).

    A backend reports its time to the shared statistics late (at most once a second,
    or when idle for a while), but always when it exits: the pool's connections are
    closed first, so the number includes everything they did."""
    await engine.dispose()
    async with engine.connect() as conn:
        value = await conn.execute(
            text(
                "SELECT coalesce(active_time, 0) / 1000.0 FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
        )
        seconds = float(value.scalar_one())
    await engine.dispose()
    return seconds


async def main() -> dict[str, Any]:
    infra.load_infra_env()
    rows = env_int("SCALE_ROWS", 10_000_000)
    batch = env_int("SCALE_BATCH", 100_000)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = list(os.getloadavg())
    url = await infra.create_database(infra.database_url(), "bench_scale")
    try:
        await upgrade(url)
        pg = await postgres_version(url)
        now = datetime.now(UTC)
        clock = FrozenClock(now - timedelta(minutes=1))
        declared = [keys.declared(s, {"user": ["delete"]}) for s in SERVICES]
        kafka = KafkaSettings(topic_prefix=infra.unique_topic_prefix("bench-scale"))
        tracker, engine, _ = make_tracker(url, kafka, clock, services=declared, batch_size=5_000)
        try:
            empty = await track_batch(tracker, engine, clock, batch, "a")
            say(f"tracking on an empty database: {empty:,.0f} events/s")
            old = now - 7 * YEAR
            seed_started = time.perf_counter()
            await seed(engine, rows, old)
            seed_s = time.perf_counter() - seed_started
            sizes = await bytes_per_row(engine, rows + batch)
            say(f"bytes per row: {sizes}")
            before = await own_bytes(engine)
            full = await track_batch(tracker, engine, clock, batch, "c")
            say(f"tracking with {rows:,} present: {full:,.0f} events/s ({full / empty:.2f}×)")

            timings: dict[str, tuple[int, float, float]] = {}
            dropped: dict[str, list[str]] = {}
            for name, prune in (
                (
                    "prune.audit",
                    lambda: prune_audit(engine, now=now, keep=6 * YEAR, dry_run=False, signer=None),
                ),
                (
                    "prune.ack_ledger",
                    lambda: prune_ack_ledger(engine, now=now, keep=6 * YEAR, dry_run=False),
                ),
                (
                    "prune.outbox",
                    lambda: prune_outbox(engine, now=now, keep=timedelta(days=30), dry_run=False),
                ),
                (
                    "prune.event_status",
                    lambda: prune_event_status(engine, now=now, keep=6 * YEAR, dry_run=False),
                ),
            ):
                db_before = await database_time(engine)
                began = time.perf_counter()
                pruned = await prune()
                wall = time.perf_counter() - began
                timings[name] = (pruned.rows, wall, await database_time(engine) - db_before)
                dropped[name] = list(pruned.partitions)
                say(f"{name}: {pruned.rows:,} rows in {wall:.2f} s, dropped {pruned.partitions}")
            # Dropped partitions give their space back at once; deleted rows only once
            # vacuumed and reused (never to the file system without VACUUM FULL).
            after = await own_bytes(engine)
        finally:
            await engine.dispose()
    finally:
        await infra.drop_database(url)

    phases = {
        "scale.track": phase("scale.track", batch, [{"ours": full, "limit": empty, "seed": None}]),
        **{
            f"scale.{name}": phase(f"scale.{name}", n, [{"ours": wall, "limit": db, "seed": None}])
            for name, (n, wall, db) in timings.items()
        },
    }
    return {
        "schema": SCHEMA,
        "commit": commit(),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "postgres": pg},
        "load": {"start": load_start, "end": list(os.getloadavg())},
        "settings": {
            "rows": rows,
            "batch": batch,
            "services": len(SERVICES),
            "seed_seconds": round(seed_s, 1),
        },
        "phases": phases,
        "checks": {"ours.tracked_with_history": batch, "ours.tracked_empty": batch},
        "bytes_per_row": sizes,
        # Every table of the coordinator's own, per event present (seeded and tracked).
        "own_bytes_per_event": {
            "before_prune": round(before / (rows + 2 * batch), 1),
            "after_prune": round(after / (rows + 2 * batch), 1),
        },
        "partitions_dropped": dropped,
    }


if __name__ == "__main__":
    result = asyncio.run(main())
    folder = RESULTS / "scale"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    print(json.dumps(result, indent=2))
