"""An ack batch reads about as many rows as it has acks, on tables nobody has analyzed.

The ack path joins a batch of keys to the event status, expected acks and ack ledger.
On stale statistics (or none, as here) the planner has hashed or merged such joins
against whole tables, mid-run: per batch, a cost that grows with the tables. The batch
must stay a probe per key whatever the statistics say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.db import make_engine
from coordinator.tracking import ledger, snapshot
from coordinator.tracking.columns import by_key
from tests.integration.tracking_support import ack, insert_published

SERVICES = ("svc0", "svc1", "svc2")
FILLER_EVENTS = 50_000
BATCH_EVENTS = 500
TABLES = ("retention_event_status", "retention_expected_acks", "retention_ack_ledger")

_FILL = (
    """INSERT INTO retention_event_status (event_id, policy, event_type, entity_type,
         entity_id, initiated_at, published_at, deadline, expected, tracked_at, updated_at)
       SELECT gen_random_uuid(), 'filler', 'delete', 'user', 'filler-' || g, now(), now(),
         now() + interval '30 days', 3, now(), now()
       FROM generate_series(1, :n) g""",
    """INSERT INTO retention_expected_acks (event_id, service)
       SELECT event_id, s FROM retention_event_status, unnest(CAST(:services AS text[])) s""",
    """INSERT INTO retention_ack_ledger (received_at, kafka_topic, kafka_partition,
         kafka_offset, event_id, service, status, attempt, accepted, event_at)
       SELECT now(), 'filler', 0, row_number() OVER (), event_id, service, 'completed', 1,
         true, now()
       FROM retention_expected_acks""",
)

# Rows the current transaction read from the tables (and their partitions): by
# sequential scans, and index entries returned by index scans.
_READ = """
WITH rel AS (
  SELECT c.oid FROM pg_class c
  WHERE c.relname = ANY(CAST(:tables AS text[]))
     OR c.oid IN (SELECT inhrelid FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                  WHERE p.relname = ANY(CAST(:tables AS text[])))
)
SELECT
  (SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_xact_user_tables
    WHERE relid IN (SELECT oid FROM rel)),
  (SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0) FROM pg_index
    WHERE indrelid IN (SELECT oid FROM rel))
"""


async def _read(conn: AsyncConnection) -> tuple[int, int]:
    row = (await conn.execute(text(_READ), {"tables": list(TABLES)})).one()
    return int(row[0]), int(row[1])


async def test_an_ack_batch_probes_by_key_on_unanalyzed_tables(coordinator_db: str) -> None:
    engine = make_engine(coordinator_db)
    declared = [(s, "user", "delete") for s in SERVICES]
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            # Nobody analyzes these tables during the test: their planner statistics stay
            # those of empty tables.
            for table in (*TABLES[:2], *await _ledger_partitions(conn)):
                await conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
            for statement in _FILL:
                await conn.execute(
                    text(statement), {"n": FILLER_EVENTS, "services": list(SERVICES)}
                )
        ids = [f"batch-{n}" for n in range(BATCH_EVENTS)]
        events = await insert_published(engine, ids, published_at=now)
        async with engine.begin() as conn:
            tracked = await snapshot.track_published(
                conn,
                declared=declared,
                now=now,
                reminder_interval=timedelta(hours=1),
                limit=BATCH_EVENTS,
            )
        assert len(tracked.tracked) == BATCH_EVENTS
        records = [
            ledger.ConsumedAck("acks", 0, offset, ack(event_id, service, entity_id, now))
            for offset, (event_id, entity_id, service) in enumerate(
                (e, i, s) for e, i in zip(events, ids, strict=True) for s in SERVICES
            )
        ]
        async with engine.begin() as conn:
            before = await _read(conn)
            overtaken = await ledger.track_overtaken(
                conn, records, declared=declared, now=now, reminder_interval=timedelta(hours=1)
            )
            outcome = await ledger.apply_acks(
                conn,
                records,
                declared=declared,
                now=now,
                reminder_interval=timedelta(hours=1),
            )
            seq_read, index_read = (a - b for a, b in zip(await _read(conn), before, strict=True))
        assert overtaken == 0
        assert len(outcome.accepted) == len(records)
        assert len(outcome.completed) == BATCH_EVENTS
    finally:
        await engine.dispose()
    # A probe per key reads each batch row a few times (locks, de-duplication, the
    # updates); a plan over a whole table reads at least FILLER_EVENTS rows.
    assert seq_read <= len(records), seq_read
    assert index_read <= 6 * len(records), index_read


async def _ledger_partitions(conn: AsyncConnection) -> list[str]:
    return list(
        await conn.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :parent"
            ),
            {"parent": "retention_ack_ledger"},
        )
    )


async def test_by_key_turns_the_plans_off_inside_and_restores_what_was_set(
    coordinator_db: str,
) -> None:
    """`by_key` reads the settings and turns them off in one statement: the read must
    see the values from before (a setting already off stays off after the block)."""
    names = ("enable_hashjoin", "enable_mergejoin", "enable_seqscan")
    read = text("SELECT " + ", ".join(f"current_setting('{n}')" for n in names))
    engine = make_engine(coordinator_db)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT set_config('enable_mergejoin', 'off', true)"))
            async with by_key(conn):
                assert tuple((await conn.execute(read)).one()) == ("off", "off", "off")
            assert tuple((await conn.execute(read)).one()) == ("on", "off", "on")
    finally:
        await engine.dispose()
