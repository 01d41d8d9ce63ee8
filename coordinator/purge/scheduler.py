"""Cron scheduling with one leader across replicas.

Leadership is a PostgreSQL session-level advisory lock held on a dedicated connection:
when the leader's process or connection dies, the server releases the lock and another
replica takes it at its next tick. Every fire time the leader handles is written to
`scheduler_fires` (primary key: schedule + fire time) before the job starts, so a fire
runs at most once even if two replicas ever believed they both led, and a new leader
knows where the old one stopped.

Missed fires (downtime): the most recent one runs at start if it is within the misfire
grace window; older ones are recorded as `missed`, never replayed in bulk.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from croniter import croniter
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import Clock
from coordinator.store.db import when_reachable
from coordinator.store.tables import scheduler_fires
from schemas import RetryPolicy, Stopped, retry
from schemas.errors import error_text
from schemas.retries import any_error

__all__ = ["LEADER_LOCK", "Fire", "Job", "Schedule", "Scheduler", "validate_cron"]

log = structlog.get_logger(__name__)

LEADER_LOCK = 0x7265_7465_6E00
"""Advisory lock key the leader holds; fixed so every replica contends for the same one."""

_MAX_MISSES_RECORDED = 100


def validate_cron(expression: str) -> str:
    """Return `expression` if croniter accepts it; raise ValueError naming it otherwise."""
    if not croniter.is_valid(expression):
        raise ValueError(f"invalid cron expression {expression!r}")
    return expression


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron expression and the policies it runs (None: every policy without its own)."""

    name: str
    cron: str
    policies: tuple[str, ...] | None = None

    def fires_between(self, after: datetime, until: datetime) -> list[datetime]:
        """Fire times t with after < t <= until, oldest first."""
        times: list[datetime] = []
        it = croniter(self.cron, after)
        while (t := it.get_next(datetime)) <= until:
            times.append(t)
        return times

    def next_after(self, at: datetime) -> datetime:
        result: datetime = croniter(self.cron, at).get_next(datetime)
        return result


@dataclass(frozen=True, slots=True)
class Fire:
    """What the leader decided about one fire time."""

    schedule: str
    fire_at: datetime
    status: str  # started | missed | skipped_overlap


Job = Callable[[Schedule, datetime], Awaitable[None]]


class Scheduler:
    """Fires `job` for each schedule's due times, on the leader replica only."""

    def __init__(
        self,
        engine: AsyncEngine,
        schedules: Sequence[Schedule],
        job: Job,
        *,
        clock: Clock,
        misfire_grace: timedelta,
        tick_seconds: float = 1.0,
        lock_key: int = LEADER_LOCK,
        node: str | None = None,
    ) -> None:
        names = [s.name for s in schedules]
        if len(set(names)) != len(names):
            raise ValueError(f"schedule names must be unique: {names}")
        self._engine = engine
        self._schedules = list(schedules)
        self._job = job
        self._clock = clock
        self._grace = misfire_grace
        self._tick = tick_seconds
        self._lock_key = lock_key
        self.node = node or socket.gethostname()
        self._lock_conn: AsyncConnection | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        # Before any fire is recorded, "history" starts when this scheduler first led.
        self._baseline: datetime | None = None
        self.retry_policy = RetryPolicy(initial_s=tick_seconds, max_s=tick_seconds)
        """A failed tick is tried again a tick later, not later still: a leader that backs
        off longer lets fires pass their misfire grace."""

    @property
    def is_leader(self) -> bool:
        return self._lock_conn is not None

    async def _hold_leadership(self) -> bool:
        if self._lock_conn is not None:
            try:
                await self._lock_conn.execute(select(1))
                return True
            except Exception:
                log.warning("scheduler_leadership_lost", node=self.node)
                await self._drop_lock_conn()
        conn = await self._engine.connect()
        # Autocommit: holding the lock must not hold a transaction (and a snapshot) open.
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            won = (await conn.execute(select(func.pg_try_advisory_lock(self._lock_key)))).scalar()
        except Exception:
            await conn.close()
            raise
        if not won:
            await conn.close()
            return False
        self._lock_conn = conn
        log.info("scheduler_leading", node=self.node)
        return True

    async def _drop_lock_conn(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                await conn.invalidate()
            except Exception:  # the connection is already gone; nothing left to release
                log.debug("scheduler_lock_connection_invalidate_failed", node=self.node)

    async def tick(self) -> list[Fire]:
        """Take or keep leadership, then deal with every due fire time. Returns decisions."""
        now = self._clock.now()
        if self._baseline is None:
            self._baseline = now
        if not await self._hold_leadership():
            return []
        decisions: list[Fire] = []
        for schedule in self._schedules:
            decisions.extend(await self._tick_schedule(schedule, now))
        return decisions

    async def _tick_schedule(self, schedule: Schedule, now: datetime) -> list[Fire]:
        async with self._engine.begin() as conn:
            last = (
                await conn.execute(
                    select(func.max(scheduler_fires.c.fire_at)).where(
                        scheduler_fires.c.schedule == schedule.name
                    )
                )
            ).scalar()
        after = last if last is not None else self._baseline
        assert after is not None
        due = schedule.fires_between(after, now)
        if not due:
            return []
        latest, older = due[-1], due[:-1]
        decisions = [Fire(schedule.name, t, "missed") for t in older[-_MAX_MISSES_RECORDED:]]
        if len(older) > _MAX_MISSES_RECORDED:
            log.warning(
                "scheduler_misses_truncated",
                schedule=schedule.name,
                missed=len(older),
                recorded=_MAX_MISSES_RECORDED,
            )
        running = self._running.get(schedule.name)
        if now - latest > self._grace:
            decisions.append(Fire(schedule.name, latest, "missed"))
        elif running is not None and not running.done():
            decisions.append(Fire(schedule.name, latest, "skipped_overlap"))
        else:
            decisions.append(Fire(schedule.name, latest, "started"))
        recorded = await self._record(decisions)
        for fire in recorded:
            log.info(
                "scheduler_fire_recorded",
                status=fire.status,
                schedule=fire.schedule,
                fire_at=fire.fire_at.isoformat(),
                node=self.node,
            )
            if fire.status == "started":
                self._running[schedule.name] = asyncio.create_task(self._execute(schedule, fire))
        return recorded

    async def _record(self, decisions: list[Fire]) -> list[Fire]:
        """Insert the decisions; keep only those no other replica recorded first."""
        if not decisions:
            return []
        async with self._engine.begin() as conn:
            inserted = (
                await conn.execute(
                    pg_insert(scheduler_fires)
                    .values(
                        [
                            {
                                "schedule": d.schedule,
                                "fire_at": d.fire_at,
                                "status": d.status,
                                "node": self.node,
                            }
                            for d in decisions
                        ]
                    )
                    .on_conflict_do_nothing()
                    .returning(scheduler_fires.c.schedule, scheduler_fires.c.fire_at)
                )
            ).all()
        won = {(row.schedule, row.fire_at) for row in inserted}
        return [d for d in decisions if (d.schedule, d.fire_at) in won]

    async def _execute(self, schedule: Schedule, fire: Fire) -> None:
        status, detail = "finished", ""
        try:
            await self._job(schedule, fire.fire_at)
        except asyncio.CancelledError:
            status, detail = "cancelled", "scheduler stopped during the run"
            raise
        except Exception as exc:
            status, detail = "failed", error_text(exc)
            log.exception("scheduler_job_failed", schedule=schedule.name)
        finally:
            await self._finish(fire, status, detail)

    async def _finish(self, fire: Fire, status: str, detail: str) -> None:
        async def record() -> None:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(scheduler_fires)
                    .where(
                        scheduler_fires.c.schedule == fire.schedule,
                        scheduler_fires.c.fire_at == fire.fire_at,
                    )
                    .values(status=status, detail=detail, finished_at=self._clock.now())
                )

        # The job may have failed because the server went away: wait for it to come
        # back rather than leave the fire `started` forever. Nobody awaits this task,
        # so a failure to record is logged here, never raised into the void.
        try:
            await when_reachable(record, what="scheduler fire outcome")
        except Exception:
            log.exception(
                "scheduler_fire_unrecorded", schedule=fire.schedule, status=status, node=self.node
            )

    async def wait_idle(self) -> None:
        """Wait for every job this scheduler started."""
        tasks = [t for t in self._running.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def next_fire(self) -> datetime | None:
        now = self._clock.now()
        return min((s.next_after(now) for s in self._schedules), default=None)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set, then let running jobs finish and release leadership."""
        try:
            while not stop.is_set():
                try:
                    # A database outage must not kill the scheduler: every error is retried.
                    await retry(
                        self._tick_or_resign,
                        policy=self.retry_policy,
                        what="scheduler_tick",
                        retry_on=any_error,
                        stop=stop,
                    )
                except Stopped:
                    break
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._tick)
            await self.wait_idle()
        finally:
            await self.close()

    async def _tick_or_resign(self) -> None:
        try:
            await self.tick()
        except Exception:
            # The lock's session may be gone with the server: take leadership afresh.
            await self._drop_lock_conn()
            raise

    async def close(self) -> None:
        """Release leadership (closing the lock connection frees the advisory lock)."""
        conn = self._lock_conn
        if conn is None:
            return
        try:
            await conn.execute(select(func.pg_advisory_unlock(self._lock_key)))
            self._lock_conn = None
            await conn.close()
        except Exception:
            # The session is already gone, and with it the lock.
            await self._drop_lock_conn()
