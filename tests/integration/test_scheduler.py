"""One leader across replicas, each fire once, misfire grace, overlap skipping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.purge.scheduler import Schedule, Scheduler
from coordinator.store.db import make_engine
from coordinator.store.tables import scheduler_fires

T0 = datetime(2026, 11, 29, 2, 59, 30, tzinfo=UTC)
HOURLY = Schedule("nightly", "0 * * * *")


@pytest.fixture
async def engines(coordinator_db: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    a, b = make_engine(coordinator_db), make_engine(coordinator_db)
    async with a.begin() as conn:
        await conn.execute(delete(scheduler_fires))
    yield a, b
    await a.dispose()
    await b.dispose()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, datetime]] = []
        self.release = asyncio.Event()
        self.release.set()

    def job_for(self, node: str):  # type: ignore[no-untyped-def]
        async def job(schedule: Schedule, fire_at: datetime) -> None:
            self.calls.append((node, schedule.name, fire_at))
            await self.release.wait()

        return job


async def fires(engine: AsyncEngine) -> list[tuple[datetime, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                scheduler_fires.c.fire_at, scheduler_fires.c.status, scheduler_fires.c.node
            ).order_by(scheduler_fires.c.fire_at)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def pair(engines: tuple[AsyncEngine, AsyncEngine], clock: FrozenClock, rec: Recorder):  # type: ignore[no-untyped-def]
    return [
        Scheduler(
            e, [HOURLY], rec.job_for(n), clock=clock, misfire_grace=timedelta(minutes=10), node=n
        )
        for e, n in zip(engines, ("a", "b"), strict=True)
    ]


async def test_two_replicas_fire_each_time_once(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    clock, rec = FrozenClock(T0), Recorder()
    a, b = pair(engines, clock, rec)
    try:
        await a.tick()
        await b.tick()
        clock.advance(timedelta(minutes=1))  # 03:00:30
        for _ in range(4):
            await a.tick()
            await b.tick()
            await a.wait_idle()
            await b.wait_idle()
            clock.advance(timedelta(hours=1))
        assert a.is_leader != b.is_leader
        assert [c[2] for c in rec.calls] == [
            datetime(2026, 11, 29, h, 0, tzinfo=UTC) for h in (3, 4, 5, 6)
        ]
        assert {c[0] for c in rec.calls} == {"a"}
        assert [s for _, s, _ in await fires(engines[0])] == ["finished"] * 4
    finally:
        await a.close()
        await b.close()


async def test_killed_leader_hands_over(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    clock, rec = FrozenClock(T0), Recorder()
    a, b = pair(engines, clock, rec)
    try:
        await a.tick()
        await b.tick()
        assert (a.is_leader, b.is_leader) == (True, False)
        # The leader's database session dies (process killed, network gone).
        holders = (
            "FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid <> pg_backend_pid() AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        async with engines[1].connect() as conn:
            await conn.execute(text(f"SELECT pg_terminate_backend(pid) {holders}"))
            # pg_terminate_backend only signals: under load the backend (and its lock)
            # can outlive the call by a moment.
            async with asyncio.timeout(10):
                while (await conn.execute(text(f"SELECT count(*) {holders}"))).scalar():
                    await asyncio.sleep(0.05)
        clock.advance(timedelta(minutes=1))
        await b.tick()
        await b.wait_idle()
        assert b.is_leader
        assert rec.calls == [("b", "nightly", datetime(2026, 11, 29, 3, 0, tzinfo=UTC))]
        await a.tick()  # the old leader notices it lost the lock and does not fire again
        assert not a.is_leader
        assert len(rec.calls) == 1
    finally:
        await a.close()
        await b.close()


async def test_misfire_grace_runs_latest_and_records_older(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    clock, rec = FrozenClock(T0), Recorder()
    a, _ = pair(engines, clock, rec)
    try:
        await a.tick()
        clock.advance(timedelta(minutes=1))
        await a.tick()
        await a.wait_idle()
        # Down for four hours; back five minutes after a fire time, within the grace.
        clock.advance(timedelta(hours=4, minutes=4))
        await a.tick()
        await a.wait_idle()
        statuses = await fires(engines[0])
        assert [(t.hour, s) for t, s, _ in statuses] == [
            (3, "finished"),
            (4, "missed"),
            (5, "missed"),
            (6, "missed"),
            (7, "finished"),
        ]
        # Back again 30 minutes after a fire time: outside the grace, nothing runs.
        clock.advance(timedelta(hours=1, minutes=26))
        await a.tick()
        assert [(t.hour, s) for t, s, _ in await fires(engines[0])][-1] == (8, "missed")
        assert len(rec.calls) == 2
    finally:
        await a.close()


async def test_overlapping_run_is_skipped(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    clock, rec = FrozenClock(T0), Recorder()
    rec.release.clear()
    a, _ = pair(engines, clock, rec)
    try:
        await a.tick()
        clock.advance(timedelta(minutes=1))
        await a.tick()
        await asyncio.sleep(0)
        clock.advance(timedelta(hours=1))
        await a.tick()
        rec.release.set()
        await a.wait_idle()
        assert [(t.hour, s) for t, s, _ in await fires(engines[0])] == [
            (3, "finished"),
            (4, "skipped_overlap"),
        ]
    finally:
        await a.close()
