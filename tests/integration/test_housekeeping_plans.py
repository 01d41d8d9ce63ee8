"""The tracker's housekeeping reads what it finds to do, on tables nobody has analyzed.

The released-holds scan and overdue escalation run every housekeeping cycle. Each used
to read every expected ack, or every open event, to find the few held or late ones: a
cost per cycle that grew with the tables (x781 and x306 from 10k to 100k users)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.db import make_engine
from coordinator.tracking import columns, deadlines, released, snapshot
from tests.integration.test_ack_path_plans import _FILL, FILLER_EVENTS, SERVICES, TABLES, _read
from tests.integration.tracking_support import insert_published

HELD_EVENTS = 10
LATE_EVENTS = 7


async def _acked_held(conn: AsyncConnection, service: str, event_ids: list[uuid.UUID]) -> None:
    """`service` found each of these events held (its acks say so)."""
    await conn.execute(
        text(
            "UPDATE retention_expected_acks SET status = 'held' "
            "WHERE service = :s AND event_id = ANY(:ids)"
        ),
        {"s": service, "ids": event_ids},
    )


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
            await _acked_held(conn, SERVICES[0], events)
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


async def test_events_still_held_never_hide_a_released_one(coordinator_db: str) -> None:
    # Four events still held come first in event order; the fifth is released. Two at a
    # time, the scan goes on past the held ones instead of finding them again each pass.
    engine = make_engine(coordinator_db)
    declared = [(s, "user", "delete") for s in SERVICES]
    now = datetime.now(UTC)
    try:
        ids = [f"queued-{n}" for n in range(5)]
        events = await insert_published(engine, ids, published_at=now)
        ordered = sorted(events)
        async with engine.begin() as conn:
            # The module's database is shared: no held ack but these five.
            await conn.execute(
                text("UPDATE retention_expected_acks SET status = 'pending' WHERE status = 'held'")
            )
            await snapshot.track_events(
                conn, events, declared=declared, now=now, reminder_interval=timedelta(hours=1)
            )
            entity_of: dict[uuid.UUID, str] = {
                row[0]: row[1]
                for row in (
                    await conn.execute(
                        text(
                            "SELECT event_id, entity_id FROM retention_event_status "
                            "WHERE event_id = ANY(CAST(:ids AS uuid[]))"
                        ),
                        {"ids": [str(e) for e in events]},
                    )
                )
            }
            await _acked_held(conn, SERVICES[0], events)
            # Their hold changes are not on the holds topic yet: still held.
            await conn.execute(
                text(
                    "INSERT INTO retention_hold_topic_queue (entity_type, entity_id, queued_at) "
                    "SELECT 'user', unnest(CAST(:ids AS text[])), now()"
                ),
                {"ids": [entity_of[e] for e in ordered[:4]]},
            )
        found: list[list[uuid.UUID]] = []
        after: uuid.UUID | None = None
        for _ in range(3):
            async with engine.begin() as conn:
                scan = await released.released_events(conn, now=now, limit=2, after=after)
            found.append([r.event.event_id for r in scan.released])
            after = scan.after
    finally:
        await engine.dispose()
    assert found == [[], [], [ordered[4]]]
    assert after is None


async def test_an_event_released_by_another_tracker_meanwhile_is_not_released_again(
    coordinator_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracker B reads the held candidates; tracker A releases the same event and commits
    before B locks it: B must neither re-publish it nor audit it a second time."""
    engine = make_engine(coordinator_db)
    now = datetime.now(UTC)
    interval = timedelta(hours=1)
    try:
        events = await insert_published(engine, ["race-1"], published_at=now)
        async with engine.begin() as conn:
            await snapshot.track_events(
                conn,
                events,
                declared=[(s, "user", "delete") for s in SERVICES],
                now=now,
                reminder_interval=interval,
            )
            await _acked_held(conn, SERVICES[0], events)
        real_by_key = columns.by_key
        raced: list[bool] = []

        @contextlib.asynccontextmanager
        async def after_tracker_a(conn: AsyncConnection, **kw: bool) -> AsyncIterator[None]:
            # B's lock statement runs inside this block: A's whole chunk commits first.
            if not raced:
                raced.append(True)
                monkeypatch.setattr(released, "by_key", real_by_key)
                async with engine.begin() as other:
                    scan_a = await released.released_events(other, now=now, limit=1000)
                    released_a = [(r.event.event_id, r.services) for r in scan_a.released]
                    assert (events[0], (SERVICES[0],)) in released_a
                    await released.record_released(
                        other, scan_a.released, now=now, reminder_interval=interval
                    )
            async with real_by_key(conn, **kw):
                yield

        monkeypatch.setattr(released, "by_key", after_tracker_a)
        async with engine.begin() as conn:
            scan_b = await released.released_events(conn, now=now, limit=1000)
            await released.record_released(
                conn, scan_b.released, now=now, reminder_interval=interval
            )
        async with engine.connect() as conn:
            audits = await conn.scalar(
                text(
                    "SELECT count(*) FROM audit_log "
                    "WHERE action = 'held_events_republished' AND data::text LIKE :e"
                ),
                {"e": f"%{events[0]}%"},
            )
    finally:
        await engine.dispose()
    assert raced
    assert events[0] not in [r.event.event_id for r in scan_b.released]
    assert all(r.services for r in scan_b.released)
    assert audits == 1
