"""A tracking pass tracks at most `limit` events, even of a batch larger than that: each
pass holds the audit chain's lock, which the ack batches, the relay and the purge wait for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.evidence import audit
from coordinator.outbox.lookup import published_up_to, tracked_up_to
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log, event_status, expected_acks
from coordinator.tracking import snapshot
from tests.integration.tracking_support import insert_published

DECLARED = [("svc0", "user", "delete"), ("svc1", "user", "delete")]


async def test_a_large_batch_is_tracked_over_passes_of_limit_events(coordinator_db: str) -> None:
    engine = make_engine(coordinator_db)
    now = datetime.now(UTC)
    try:
        # One purge batch of 1,500 events, published.
        events = await insert_published(engine, [f"e{n}" for n in range(1500)], published_at=now)
        passes = []
        while True:
            async with engine.begin() as conn:
                done = await snapshot.track_published(
                    conn,
                    declared=DECLARED,
                    now=now,
                    reminder_interval=timedelta(hours=1),
                    limit=400,
                )
                cursor, watermark = await tracked_up_to(conn), await published_up_to(conn)
            passes.append((len(done.tracked), done.more, cursor == watermark))
            if not done.more:
                break
        async with engine.connect() as conn:
            tracked = await conn.scalar(select(func.count()).select_from(event_status))
            expected = await conn.scalar(select(func.count()).select_from(expected_acks))
            entries = list(
                await conn.scalars(
                    select(func.jsonb_array_length(audit_log.c.data["events"])).where(
                        audit_log.c.action == audit.AuditAction.EVENTS_TRACKED
                    )
                )
            )
            checked, broken = await audit.verify(conn)
    finally:
        await engine.dispose()
    # The cursor stays before the batch until its last event is tracked.
    assert passes == [
        (400, True, False),
        (400, True, False),
        (400, True, False),
        (300, False, True),
    ]
    assert tracked == len(events)
    assert expected == 2 * len(events)
    assert entries == [400, 400, 400, 300]  # each pass audited, every event once
    assert broken is None
    assert checked >= 4


async def test_each_event_expects_exactly_the_rows_its_pass_wrote(coordinator_db: str) -> None:
    """The pass names each event's services from the declaration, not from what it
    inserted: both must agree, with a pair declared twice and a type nobody handles."""
    engine = make_engine(coordinator_db)
    now = datetime.now(UTC)
    declared = [*DECLARED, ("svc0", "user", "delete"), ("svc2", "order", "delete")]
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(expected_acks))
            await conn.execute(delete(event_status))
        for entity_type in ("user", "order", "ticket"):
            await insert_published(
                engine,
                [f"{entity_type}{n}" for n in range(3)],
                published_at=now,
                entity_type=entity_type,
            )
        async with engine.begin() as conn:
            done = await snapshot.track_published(
                conn,
                declared=declared,
                now=now,
                reminder_interval=timedelta(hours=1),
                limit=1000,
            )
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(expected_acks.c.event_id, expected_acks.c.service))
            ).all()
            statuses = {
                row.event_id: row
                for row in await conn.execute(
                    select(event_status.c.event_id, event_status.c.entity_type).add_columns(
                        event_status.c.expected, event_status.c.state
                    )
                )
            }
            [entry] = await conn.scalars(
                select(audit_log.c.data)
                .where(audit_log.c.action == audit.AuditAction.EVENTS_TRACKED)
                .order_by(audit_log.c.seq.desc())
                .limit(1)
            )
    finally:
        await engine.dispose()
    written: dict[object, set[str]] = {t.event_id: set() for t in done.tracked}
    for event_id, service in rows:
        written[event_id].add(service)
    assert len(done.tracked) == len(statuses) == 9
    by_type = {"user": ("svc0", "svc1"), "order": ("svc2",), "ticket": ()}
    for t in done.tracked:
        status = statuses[t.event_id]
        assert t.expected == tuple(sorted(written[t.event_id])) == by_type[status.entity_type]
        assert status.expected == len(t.expected)
        assert status.state == ("pending" if t.expected else "completed")
    assert entry["events"] == [
        {"event_id": str(t.event_id), "expected": list(t.expected)} for t in done.tracked
    ]


async def test_a_pass_picks_its_batches_again_if_another_moved_the_cursor_meanwhile(
    coordinator_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass picks its batches before it takes the chain's lock; another tracker may
    track them, and more, while it waits. The cursor must never go back."""
    engine = make_engine(coordinator_db)
    now = datetime.now(UTC)
    lock_head = audit.lock_head
    others: list[snapshot.Pass] = []
    waited: list[bool] = []

    async def another_tracker_first(conn: AsyncConnection) -> tuple[int, str]:
        if not waited:
            waited.append(True)
            async with engine.begin() as other:
                others.append(await _pass(other, now, limit=1000))
        return await lock_head(conn)

    try:
        async with engine.begin() as conn:
            await _pass(conn, now, limit=1000)  # whatever earlier tests left
        first = await insert_published(engine, [f"a{n}" for n in range(10)], published_at=now)
        second = await insert_published(engine, [f"b{n}" for n in range(10)], published_at=now)
        monkeypatch.setattr(snapshot.audit, "lock_head", another_tracker_first)
        async with engine.begin() as conn:
            done = await _pass(conn, now, limit=10)  # picks the first batch only
        monkeypatch.undo()
        async with engine.connect() as conn:
            cursor, watermark = await tracked_up_to(conn), await published_up_to(conn)
            tracked = await conn.scalar(
                select(func.count())
                .select_from(event_status)
                .where(event_status.c.event_id.in_([*first, *second]))
            )
            checked, broken = await audit.verify(conn)
    finally:
        await engine.dispose()
    assert [len(p.tracked) for p in others] == [20]
    assert done.tracked == []
    assert cursor == watermark
    assert tracked == 20
    assert broken is None
    assert checked > 0


async def _pass(conn: AsyncConnection, now: datetime, *, limit: int) -> snapshot.Pass:
    return await snapshot.track_published(
        conn, declared=DECLARED, now=now, reminder_interval=timedelta(hours=1), limit=limit
    )
