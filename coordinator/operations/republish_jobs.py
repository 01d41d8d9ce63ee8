"""Re-sending a whole run in the background (`POST /v1/runs/{id}/republish`).

A run can hold millions of events: sending them again takes minutes, longer than an HTTP
client waits, and their ids do not fit in a response. So the route queues a job and
answers 202 at once; every `serve` replica works off queued jobs, one at a time each,
claiming a row with `FOR UPDATE SKIP LOCKED` and a lease it renews while it sends. If the
replica dies, the lease runs out and another replica takes the job over from the start:
the events it had sent go out again, which services absorb (same event ids). A job that
fails `MAX_ATTEMPTS` times, tried again a lease after each failure (or whose claimant died
that often), is `failed`, with the error's class only (never a message, which may quote
data). Finished jobs are deleted after `KEEP_FINISHED`.

What is sent, and the audit of each batch, are `Republisher.republish`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import Clock
from coordinator.operations.republish import RepublishSetup, Selection, UnknownSelection
from coordinator.store.tables import republish_jobs
from schemas.errors import error_text

__all__ = ["KEEP_FINISHED", "MAX_ATTEMPTS", "Job", "JobState", "RepublishJobs", "get", "queue"]

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 3
PRUNE_BATCH = 10_000
"""Finished jobs deleted per transaction: however many are due, no prune holds one long."""
LEASE_EXPIRED = "LeaseExpired"
"""The error of a job failed because its last claimant stopped renewing its lease."""
KEEP_FINISHED = timedelta(days=30)
"""Finished jobs are kept this long for `GET /v1/republish-jobs/{id}`; the audit log keeps
what was sent for as long as it keeps anything."""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Job:
    job_id: uuid.UUID
    run_id: uuid.UUID
    service: str | None
    actor: str
    state: JobState
    attempts: int
    sent: int
    held: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def selection(self) -> Selection:
        return Selection(run_id=self.run_id, service=self.service)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id),
            "run_id": str(self.run_id),
            "service": self.service,
            "actor": self.actor,
            "state": self.state.value,
            "attempts": self.attempts,
            "sent": self.sent,
            "held": self.held,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
        }


_COLUMNS = [republish_jobs.c[name] for name in Job.__slots__]


def _job(row: Any) -> Job:
    values = dict(row._mapping)
    values["state"] = JobState(values["state"])
    return Job(**values)


async def queue(conn: AsyncConnection, selection: Selection, *, actor: str, now: datetime) -> Job:
    """Queue a re-send of `selection` (a run, optionally one service's events)."""
    if selection.run_id is None:
        raise ValueError("only a run is re-sent in the background")
    row = (
        await conn.execute(
            insert(republish_jobs)
            .values(
                job_id=uuid.uuid4(),
                run_id=selection.run_id,
                service=selection.service,
                actor=actor,
                created_at=now,
            )
            .returning(*_COLUMNS)
        )
    ).one()
    return _job(row)


async def get(conn: AsyncConnection, job_id: uuid.UUID) -> Job | None:
    row = (await conn.execute(select(*_COLUMNS).where(republish_jobs.c.job_id == job_id))).first()
    return None if row is None else _job(row)


class RepublishJobs:
    """The loop every `serve` replica runs: claim a job, send it, record how it ended."""

    def __init__(
        self,
        engine: AsyncEngine,
        setup: RepublishSetup,
        clock: Clock,
        *,
        interval_s: float,
        lease_s: float,
    ) -> None:
        self._engine = engine
        self._setup = setup
        self._clock = clock
        self._interval_s = interval_s
        self._lease = timedelta(seconds=lease_s)
        self._pruned_at: datetime | None = None

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                worked = await self.run_once()
            except Exception:
                # The job's lease runs out and it is claimed again; the loop stays alive.
                log.exception("republish_job_loop_failed")
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._interval_s)

    async def run_once(self) -> bool:
        """Work off one job if one is waiting (or its claimant's lease ran out)."""
        job = await self._claim()
        if job is None:
            await self._prune()
            return False
        log.info("republish_job_started", job_id=str(job.job_id), attempt=job.attempts)
        renewing = asyncio.create_task(self._renew(job))
        try:
            async with self._setup.open(self._engine, self._clock) as republisher:
                outcome = await republisher.republish(job.selection, actor=job.actor)
        except asyncio.CancelledError:
            # `serve` stopping: the other replicas take the job now, not a lease later, and
            # this stop does not count as a dead claimant.
            try:
                await self._finish(job, JobState.QUEUED)
            except Exception as exc:
                # The cancellation still ends this task; the lease hands the job on then.
                log.warning(
                    "republish_job_release_failed", job_id=str(job.job_id), error=error_text(exc)
                )
            raise
        except UnknownSelection:
            # Pruned since it was queued, or none the service is expected for: nothing to send.
            await self._finish(job, JobState.DONE, sent=0, held=0)
        except Exception as exc:
            state = JobState.FAILED if job.attempts >= MAX_ATTEMPTS else JobState.QUEUED
            # Tried again a lease later, not at once: a broker restarting must not use up
            # every attempt within a second.
            retry_at = self._clock.now() + self._lease if state is JobState.QUEUED else None
            await self._finish(job, state, error=error_text(exc), lease_until=retry_at)
            log.warning(
                "republish_job_failed",
                job_id=str(job.job_id),
                attempt=job.attempts,
                error=error_text(exc),
                state=state.value,
            )
        else:
            await self._finish(job, JobState.DONE, sent=outcome.sent_total, held=outcome.held_total)
            log.info(
                "republish_job_done",
                job_id=str(job.job_id),
                sent=outcome.sent_total,
                held=outcome.held_total,
            )
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        return True

    async def _claim(self) -> Job | None:
        j = republish_jobs.c
        now = self._clock.now()
        waiting = (
            select(j.job_id)
            .where(
                (
                    (j.state == JobState.QUEUED.value)
                    # A failed attempt's lease holds the job back until it runs out.
                    & (j.lease_until.is_(None) | (j.lease_until < now))
                )
                | ((j.state == JobState.RUNNING.value) & (j.lease_until < now))
            )
            .order_by(j.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        async with self._engine.begin() as conn:
            # A job whose every claimant died (one that kills the replica sending it) never
            # reaches the except clause; its expired leases count its attempts instead.
            await conn.execute(
                update(republish_jobs)
                .where(
                    j.state == JobState.RUNNING.value,
                    j.lease_until < now,
                    j.attempts >= MAX_ATTEMPTS,
                )
                .values(
                    state=JobState.FAILED.value,
                    lease_until=None,
                    finished_at=now,
                    error=LEASE_EXPIRED,
                )
            )
            row = (
                await conn.execute(
                    update(republish_jobs)
                    .where(j.job_id == waiting)
                    .values(
                        state=JobState.RUNNING.value,
                        attempts=j.attempts + 1,
                        started_at=func.coalesce(j.started_at, now),
                        lease_until=now + self._lease,
                        error=None,
                    )
                    .returning(*_COLUMNS)
                )
            ).first()
        return None if row is None else _job(row)

    @staticmethod
    def _held(job: Job) -> ColumnElement[bool]:
        """The job is still this claim's: once a lease ran out and another replica took the
        job over (`attempts` counts claims), the late claimant neither renews nor ends it."""
        j = republish_jobs.c
        return (
            (j.job_id == job.job_id)
            & (j.attempts == job.attempts)
            & (j.state == JobState.RUNNING.value)
        )

    async def _renew(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(
                        update(republish_jobs)
                        .where(self._held(job))
                        .values(lease_until=self._clock.now() + self._lease)
                    )
            except Exception as exc:
                # A database blip: the next renewal, a third of a lease later, may still
                # keep the job from being taken over while it is being sent.
                log.warning(
                    "republish_job_renew_failed", job_id=str(job.job_id), error=error_text(exc)
                )

    async def _finish(
        self,
        job: Job,
        state: JobState,
        *,
        sent: int | None = None,
        held: int | None = None,
        error: str | None = None,
        lease_until: datetime | None = None,
    ) -> None:
        values: dict[str, Any] = {"state": state.value, "lease_until": lease_until, "error": error}
        if state in (JobState.DONE, JobState.FAILED):
            values["finished_at"] = self._clock.now()
        if sent is not None:
            values["sent"] = sent
        if held is not None:
            values["held"] = held
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(republish_jobs).where(self._held(job)).values(**values)
            )
        if not result.rowcount:
            log.warning("republish_job_lost", job_id=str(job.job_id), attempt=job.attempts)

    async def _prune(self) -> None:
        now = self._clock.now()
        # Hourly is plenty for a 30-day horizon; idle replicas poll every few seconds.
        if self._pruned_at is not None and now - self._pruned_at < timedelta(hours=1):
            return
        j = republish_jobs.c
        due = select(j.job_id).where(j.finished_at < now - KEEP_FINISHED)
        while True:
            doomed = due.limit(PRUNE_BATCH).with_for_update(skip_locked=True)
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(republish_jobs).where(j.job_id.in_(doomed)))
            if result.rowcount < PRUNE_BATCH:
                break
        self._pruned_at = now
