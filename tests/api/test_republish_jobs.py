"""A whole run is re-sent in the background: the route queues a job (202, `Location`), a
`serve` replica's `RepublishJobs` sends it, and a dead claimant's job is taken over."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.api.tokens import Scope
from coordinator.clock import FrozenClock, SystemClock
from coordinator.operations import republish_jobs as jobs_module
from coordinator.operations.republish import Outcome, RepublishSetup, Selection
from coordinator.operations.republish_jobs import KEEP_FINISHED, MAX_ATTEMPTS, RepublishJobs, queue
from coordinator.outbox.lookup import events_by
from coordinator.store.tables import audit_log, republish_jobs
from schemas import KafkaSettings, RetentionEvent, decode
from tests import keys
from tests.api.conftest import auth, make_client
from tests.integration.tracking_support import insert_published
from tests.sdk.kafka_io import read_topic


async def _run_of(engine: AsyncEngine, event_id: uuid.UUID) -> uuid.UUID:
    async with engine.connect() as conn:
        [stored] = await events_by(conn, now=datetime.now(UTC), event_ids=[event_id])
    return stored.event.run_id


async def test_a_run_is_queued_sent_by_a_replica_and_followed_to_done(
    ctx: ApiContext, engine: AsyncEngine, topics: KafkaSettings, tokens: dict[Scope, str]
) -> None:
    now = datetime.now(UTC)
    ids = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    events = await insert_published(engine, ids, published_at=now)
    run_id = await _run_of(engine, events[0])
    setup = RepublishSetup(topics, keys.signer(keys.COORDINATOR))
    admin = auth(tokens[Scope.ADMIN])
    async with make_client(dataclasses.replace(ctx, republish=setup)) as client:
        refused = await client.post(
            f"/v1/runs/{run_id}/republish", json={}, headers=auth(tokens[Scope.WRITE])
        )
        assert refused.status_code == 403, refused.text
        unknown = await client.post(f"/v1/runs/{uuid.uuid4()}/republish", json={}, headers=admin)
        assert unknown.status_code == 404, unknown.text

        queued = await client.post(f"/v1/runs/{run_id}/republish", json={}, headers=admin)
        assert queued.status_code == 202, queued.text
        job = queued.json()
        assert (job["state"], job["actor"], job["run_id"]) == ("queued", "admin-bot", str(run_id))
        location = queued.headers["Location"]
        assert location == f"/v1/republish-jobs/{job['job_id']}"

        worker = RepublishJobs(engine, setup, SystemClock(), interval_s=0.1, lease_s=30)
        assert await worker.run_once()
        assert not await worker.run_once()  # nothing else waiting

        followed = await client.get(location, headers=auth(tokens[Scope.READ]))
        assert followed.status_code == 200, followed.text
        assert {k: followed.json()[k] for k in ("state", "sent", "held", "attempts")} == {
            "state": "done",
            "sent": 3,
            "held": 0,
            "attempts": 1,
        }
        missing = await client.get(f"/v1/republish-jobs/{uuid.uuid4()}", headers=admin)
        assert missing.status_code == 404, missing.text

    records = await read_topic(topics, topics.topics.events, expect=3)
    assert sorted(decode(RetentionEvent, r.value).event_id for r in records) == sorted(events)
    async with engine.connect() as conn:
        actors = set(
            (
                await conn.execute(
                    select(audit_log.c.actor).where(audit_log.c.action == "events_republished")
                )
            ).scalars()
        )
    assert actors == {"admin-bot"}


async def test_a_dead_claimants_job_is_taken_over_and_a_failing_one_ends_failed(
    ctx: ApiContext, engine: AsyncEngine, topics: KafkaSettings, tokens: dict[Scope, str]
) -> None:
    now = datetime.now(UTC)
    [event_id] = await insert_published(engine, [f"u-{uuid.uuid4().hex[:8]}"], published_at=now)
    run_id = await _run_of(engine, event_id)
    setup = RepublishSetup(topics, keys.signer(keys.COORDINATOR))
    async with make_client(dataclasses.replace(ctx, republish=setup)) as client:
        queued = await client.post(
            f"/v1/runs/{run_id}/republish", json={}, headers=auth(tokens[Scope.ADMIN])
        )
    job_id = uuid.UUID(queued.json()["job_id"])
    # A replica claimed it, then died: its lease still runs, so nobody else takes it yet.
    async with engine.begin() as conn:
        await conn.execute(
            update(republish_jobs)
            .where(republish_jobs.c.job_id == job_id)
            .values(state="running", attempts=1, lease_until=now + timedelta(seconds=60))
        )
    worker = RepublishJobs(engine, setup, FrozenClock(now), interval_s=0.1, lease_s=30)
    assert not await worker.run_once()
    later = RepublishJobs(
        engine, setup, FrozenClock(now + timedelta(seconds=61)), interval_s=0.1, lease_s=30
    )
    assert await later.run_once()

    # A broker nobody answers on: each attempt fails, the job is queued again, then failed.
    dead = topics.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    async with engine.begin() as conn:
        await conn.execute(
            update(republish_jobs)
            .where(republish_jobs.c.job_id == job_id)
            .values(state="queued", attempts=0, finished_at=None)
        )
    clock = FrozenClock(datetime.now(UTC))
    failing = RepublishJobs(engine, RepublishSetup(dead, None), clock, interval_s=0.1, lease_s=30)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert await failing.run_once()
        if attempt < MAX_ATTEMPTS:
            # Tried again once the failed attempt's lease ran out, not at once: a broker
            # restart must not use every attempt up in a second.
            assert not await failing.run_once()
            clock.advance(timedelta(seconds=31))
    async with engine.connect() as conn:
        state, attempts, error = (
            await conn.execute(
                select(
                    republish_jobs.c.state, republish_jobs.c.attempts, republish_jobs.c.error
                ).where(republish_jobs.c.job_id == job_id)
            )
        ).one()
    assert (state, attempts) == ("failed", MAX_ATTEMPTS)
    assert error == "KafkaConnectionError"


class _Gated:
    """A stand-in for `RepublishSetup` whose re-send ends when the test says so."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.end: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    @contextlib.asynccontextmanager
    async def open(self, engine: AsyncEngine, clock: object) -> AsyncIterator[_Gated]:
        yield self

    async def republish(self, selection: object, *, actor: str) -> Outcome:
        self.started.set()
        return await self.end


async def _job_row(engine: AsyncEngine, job_id: uuid.UUID) -> tuple[str, int, str | None]:
    j = republish_jobs.c
    async with engine.connect() as conn:
        state, attempts, error = (
            await conn.execute(select(j.state, j.attempts, j.error).where(j.job_id == job_id))
        ).one()
    return state, attempts, error


async def test_a_claimant_whose_lease_ran_out_cannot_end_the_job_it_lost(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        job = await queue(conn, Selection(run_id=uuid.uuid4()), actor="admin-bot", now=now)
    slow, taker = _Gated(), _Gated()
    first = RepublishJobs(engine, slow, FrozenClock(now), interval_s=0.1, lease_s=30)  # type: ignore[arg-type]
    later = FrozenClock(now + timedelta(seconds=61))
    second = RepublishJobs(engine, taker, later, interval_s=0.1, lease_s=30)  # type: ignore[arg-type]
    sending = asyncio.create_task(first.run_once())
    await slow.started.wait()
    # The first replica stalled past its lease: the second one took the job over.
    taking_over = asyncio.create_task(second.run_once())
    await taker.started.wait()
    slow.end.set_exception(RuntimeError("the stalled replica's late failure"))
    assert await sending
    assert await _job_row(engine, job.job_id) == ("running", 2, None)
    # So nobody else takes it a third time while the second replica sends.
    third = RepublishJobs(engine, _Gated(), later, interval_s=0.1, lease_s=30)  # type: ignore[arg-type]
    assert not await third.run_once()

    taker.end.set_result(Outcome(sent=[uuid.uuid4()]))
    assert await taking_over
    assert await _job_row(engine, job.job_id) == ("done", 2, None)


async def test_a_job_whose_claimants_all_died_ends_failed_instead_of_being_claimed_again(
    engine: AsyncEngine,
) -> None:
    # A job that kills the replica sending it (memory, say) never reaches the except
    # clause: only its expired leases tell. After MAX_ATTEMPTS of them it is not taken again.
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        job = await queue(conn, Selection(run_id=uuid.uuid4()), actor="admin-bot", now=now)
        await conn.execute(
            update(republish_jobs)
            .where(republish_jobs.c.job_id == job.job_id)
            .values(state="running", attempts=MAX_ATTEMPTS, lease_until=now)
        )
    gate = _Gated()
    gate.end.set_result(Outcome())
    worker = RepublishJobs(
        engine, gate, FrozenClock(now + timedelta(seconds=1)), interval_s=0.1, lease_s=30
    )  # type: ignore[arg-type]
    assert not await worker.run_once()
    assert not gate.started.is_set()
    assert await _job_row(engine, job.job_id) == ("failed", MAX_ATTEMPTS, "LeaseExpired")


async def test_a_replica_that_stops_mid_job_hands_the_job_back_at_once(
    engine: AsyncEngine,
) -> None:
    # `serve` cancels a job still running when its shutdown time is up: the job is queued
    # again for the other replicas then, rather than waiting for its lease to run out and
    # counting as a dead claimant (a rolling restart must not fail a long job).
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        job = await queue(conn, Selection(run_id=uuid.uuid4()), actor="admin-bot", now=now)
    gate = _Gated()
    worker = RepublishJobs(engine, gate, FrozenClock(now), interval_s=0.1, lease_s=30)  # type: ignore[arg-type]
    sending = asyncio.create_task(worker.run_once())
    await gate.started.wait()
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    assert sending.cancelled()
    assert await _job_row(engine, job.job_id) == ("queued", 1, None)

    taker = _Gated()
    taker.end.set_result(Outcome(sent=[uuid.uuid4()]))
    other = RepublishJobs(engine, taker, FrozenClock(now), interval_s=0.1, lease_s=30)  # type: ignore[arg-type]
    assert await other.run_once()
    assert await _job_row(engine, job.job_id) == ("done", 2, None)


class _FailsOnce:
    """The engine, but its `nth` transaction fails to start (a database blip)."""

    def __init__(self, engine: AsyncEngine, nth: int) -> None:
        self._engine = engine
        self._nth = nth
        self._begun = 0

    def begin(self) -> object:
        self._begun += 1
        if self._begun == self._nth:
            raise ConnectionResetError("the database went away for a moment")
        return self._engine.begin()


async def test_one_failed_lease_renewal_does_not_end_the_renewals(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        job = await queue(conn, Selection(run_id=uuid.uuid4()), actor="admin-bot", now=now)
    gate, clock = _Gated(), FrozenClock(now)
    # Transaction 1 claims, 2 is the first renewal.
    flaky = _FailsOnce(engine, nth=2)
    worker = RepublishJobs(flaky, gate, clock, interval_s=0.1, lease_s=0.3)  # type: ignore[arg-type]
    sending = asyncio.create_task(worker.run_once())
    await gate.started.wait()
    clock.advance(timedelta(minutes=5))
    await asyncio.sleep(1)
    async with engine.connect() as conn:
        lease_until = (
            await conn.execute(
                select(republish_jobs.c.lease_until).where(republish_jobs.c.job_id == job.job_id)
            )
        ).scalar_one()
    # Otherwise another replica takes the job over while this one still sends it.
    assert lease_until > now + timedelta(minutes=5)
    gate.end.set_result(Outcome())
    assert await sending
    assert (await _job_row(engine, job.job_id))[0] == "done"


async def test_finished_jobs_are_pruned_a_bounded_batch_at_a_time(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "PRUNE_BATCH", 2)
    now = datetime.now(UTC)
    old = now - KEEP_FINISHED - timedelta(days=1)
    async with engine.begin() as conn:
        for finished_at in [old] * 5 + [now]:
            job = await queue(conn, Selection(run_id=uuid.uuid4()), actor="admin-bot", now=now)
            await conn.execute(
                update(republish_jobs)
                .where(republish_jobs.c.job_id == job.job_id)
                .values(state="done", finished_at=finished_at)
            )
    deleted: list[int] = []

    def count(conn: object, cursor: Any, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM RETENTION_REPUBLISH_JOBS"):
            deleted.append(cursor.rowcount)

    event.listen(engine.sync_engine, "after_cursor_execute", count)
    try:
        worker = RepublishJobs(engine, _Gated(), FrozenClock(now), interval_s=0.1, lease_s=30)  # type: ignore[arg-type]
        assert not await worker.run_once()
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", count)
    assert sum(deleted) == 5
    assert max(deleted) <= 2
    async with engine.connect() as conn:
        left = await conn.execute(
            select(func.count()).where(republish_jobs.c.finished_at < now - KEEP_FINISHED)
        )
        assert left.scalar_one() == 0


async def test_a_stop_mid_job_ends_the_task_even_when_the_job_cannot_be_handed_back(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        job = await queue(conn, Selection(run_id=uuid.uuid4()), actor="admin-bot", now=now)
    gate = _Gated()
    # Transaction 1 claims, 2 would hand the job back.
    worker = RepublishJobs(
        _FailsOnce(engine, nth=2), gate, FrozenClock(now), interval_s=0.1, lease_s=30
    )  # type: ignore[arg-type]
    sending = asyncio.create_task(worker.run_once())
    await gate.started.wait()
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    assert sending.cancelled()
    # Left to its lease, as after a crash.
    assert await _job_row(engine, job.job_id) == ("running", 1, None)
    async with engine.begin() as conn:
        await conn.execute(
            update(republish_jobs)
            .where(republish_jobs.c.job_id == job.job_id)
            .values(state="failed", lease_until=None, finished_at=now)
        )
