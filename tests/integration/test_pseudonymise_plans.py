"""`pseudonymise` reads a batch's ledger rows, not the ledger, on tables nobody has analyzed.

The daily run takes the events to pseudonymise in batches of a few thousand and reads
their ack ledger rows. Read by `event_id` alone, that matched neither partial index on
`event_id` (accepted / rejected): every batch scanned every month of the ledger, a run
costing its batches times the ledger (issue #16)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from coordinator.evidence import ledger_pseudonyms
from coordinator.store.db import make_engine
from tests.integration.test_ack_path_plans import (
    _FILL,
    FILLER_EVENTS,
    SERVICES,
    TABLES,
    _ledger_partitions,
    _read,
)
from tests.integration.tracking_support import insert_published

BATCH_EVENTS = 200

# Each batch event: an accepted ack per service; the first also a rejected one, and one
# without an entity id (nothing to rewrite: not read).
_BATCH_LEDGER = """
INSERT INTO retention_ack_ledger (received_at, kafka_topic, kafka_partition, kafka_offset,
  event_id, service, entity_type, entity_id, status, attempt, accepted, event_at)
SELECT now(), 'batch', 0, row_number() OVER (), e, s, 'user', 'u-' || e, 'completed', 1,
  s <> 'rejected', retention_ack_event_at(e, now())
FROM unnest(CAST(:events AS uuid[])) WITH ORDINALITY AS b(e, n),
     unnest(CAST(:services AS text[])) s
WHERE s <> 'rejected' OR n = 1
UNION ALL
SELECT now(), 'batch', 1, 0, CAST(:first AS uuid), 'svc0', 'user', NULL, 'completed', 2,
  true, retention_ack_event_at(CAST(:first AS uuid), now())
"""


async def test_a_batch_reads_its_ledger_rows_through_the_event_indexes(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
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
        events = sorted(
            await insert_published(
                engine, [f"b-{n}" for n in range(BATCH_EVENTS)], published_at=datetime.now(UTC)
            )
        )
        async with engine.begin() as conn:
            await conn.execute(
                text(_BATCH_LEDGER),
                {
                    "events": events,
                    "services": [*SERVICES, "rejected"],
                    "first": events[0],
                },
            )
            expected = set(
                await conn.scalars(
                    text(
                        "SELECT id FROM retention_ack_ledger "
                        "WHERE kafka_topic = 'batch' AND entity_id IS NOT NULL"
                    )
                )
            )
        async with engine.begin() as conn:
            before = await _read(conn)
            rows = (await conn.execute(ledger_pseudonyms.batch_acks(events))).all()
            seq_read, index_read = (a - b for a, b in zip(await _read(conn), before, strict=True))
    finally:
        await engine.dispose()
    assert [r.id for r in rows] == sorted(expected)
    assert len(expected) == BATCH_EVENTS * len(SERVICES) + 1
    # A scan of the ledger reads at least its FILLER_EVENTS * len(SERVICES) filler rows.
    assert seq_read == 0, seq_read
    assert index_read <= 2 * len(rows), index_read
