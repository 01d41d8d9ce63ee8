"""A whole run is re-sent in the background: the route queues a job (202, `Location`), a
`serve` replica's `RepublishJobs` sends it, and a dead claimant's job is taken over."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.api.tokens import Scope
from coordinator.clock import FrozenClock, SystemClock
from coordinator.operations.republish import RepublishSetup
from coordinator.operations.republish_jobs import MAX_ATTEMPTS, RepublishJobs
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
    failing = RepublishJobs(
        engine, RepublishSetup(dead, None), SystemClock(), interval_s=0.1, lease_s=30
    )
    for _ in range(MAX_ATTEMPTS):
        assert await failing.run_once()
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
