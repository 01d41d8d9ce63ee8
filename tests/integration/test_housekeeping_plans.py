"""The tracker's housekeeping reads what it finds to do, on tables nobody has analyzed.

The released-holds scan and overdue escalation run every housekeeping cycle. Each used
to read every expected ack, or every open event, to find the few held or late ones: a
cost per cycle that grew with the tables (x781 and x306 from 10k to 100k users)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from coordinator.store.db import make_engine
from coordinator.tracking import deadlines, released, snapshot
from tests.integration.test_ack_path_plans import _FILL, FILLER_EVENTS, SERVICES, TABLES, _read
from tests.integration.tracking_support import insert_published

HELD_EVENTS = 10
LATE_EVENTS = 7


async def test_released_and_overdue_passes_read_only_their_work(coordinator_db: str) -> None:
    engine = make_engine(coordinator_db)
    declared = [(s, "user", "delete") for s in SERVICES]
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            for table in TABLES[:2]:
                await conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
            for statement in _FILL[:2]:
                await conn.execute(
                    text(statement), {"n": FILLER_EVENTS, "services": list(SERVICES)}
                )
            await conn.execute(
                text(
                    "UPDATE retention_event_status SET deadline = now() - interval '1 hour' "
                    "WHERE event_id IN (SELECT event_id FROM retention_event_status "
                    "WHERE policy = 'filler' LIMIT :n)"
                ),
                {"n": LATE_EVENTS},
            )
        ids = [f"held-{n}" for n in range(HELD_EVENTS)]
        events = await insert_published(engine, ids, published_at=now)
        async with engine.begin() as conn:
            tracked = await snapshot.track_published(
                conn,
                declared=declared,
                now=now,
                reminder_interval=timedelta(hours=1),
                limit=HELD_EVENTS,
            )
            assert len(tracked.tracked) == HELD_EVENTS
            # svc0 found each of them held; no hold is left, so every one is released.
            await conn.execute(
                text(
                    "UPDATE retention_expected_acks SET status = 'held' "
                    "WHERE service = 'svc0' AND event_id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": [str(e) for e in events]},
            )
        async with engine.begin() as conn:
            before = await _read(conn)
            scan = await released.released_events(conn, now=now, limit=1000)
            overdue = await deadlines.escalate_overdue(conn, now=now, limit=1000)
            seq_read, index_read = (a - b for a, b in zip(await _read(conn), before, strict=True))
    finally:
        await engine.dispose()
    assert sorted(r.event.event_id for r in scan.released) == sorted(events)
    assert all(r.services == ("svc0",) for r in scan.released)
    assert scan.after is None
    assert len(overdue) == LATE_EVENTS
    # Reading a whole table would read at least FILLER_EVENTS rows.
    assert seq_read == 0, seq_read
    assert index_read <= 20 * (HELD_EVENTS + LATE_EVENTS), index_read
