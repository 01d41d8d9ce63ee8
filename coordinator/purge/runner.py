"""A retention run: every selected policy, batch by batch, with a run log and metrics.

A policy that fails (bad config, guard, database error, hook error) is recorded with its
errors and the run goes on with the next one; its result row is written either way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import Clock, SystemClock
from coordinator.copies.crypto.keystore import KeyStore, KeyStoreError, open_keystore
from coordinator.evidence.audit import AuditAction, AuditEntry, append
from coordinator.metrics import Metrics
from coordinator.policy.binding import BoundPolicy, bind_policies
from coordinator.policy.model import Action, PolicyIssue, PolicySet
from coordinator.purge import marks
from coordinator.purge.batch import (
    ActedBatch,
    RunStatements,
    act_batch,
    acts_in_one_pass,
    ensure_archive_table,
    purge_batch,
    record_batch,
)
from coordinator.purge.planner import (
    DueCount,
    PolicyPlan,
    count_due,
    leftover,
    oldest_due,
    plan_policy,
    time_base,
)
from coordinator.settings import Settings
from coordinator.store.db import when_reachable
from coordinator.store.tables import anonymized, policy_results, runs
from schemas.errors import error_text

__all__ = ["PlanReport", "PolicyOutcome", "Progress", "RunReport", "Runner"]

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, int], None]
"""Called after each batch with (policy, processed so far, due at start)."""

_SKEW_WARNING_SECONDS = 60.0


@dataclass
class PolicyOutcome:
    policy: str
    action: str
    status: str = "ok"
    due: int = 0
    processed: int = 0
    held: int = 0
    events: int = 0
    duration_s: float = 0.0
    oldest_unprocessed_days: float | None = None
    cutoff: datetime | None = None
    errors: list[str] = field(default_factory=list)
    started_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "action": self.action,
            "status": self.status,
            "due": self.due,
            "processed": self.processed,
            "held": self.held,
            "events": self.events,
            "duration_s": round(self.duration_s, 3),
            "oldest_unprocessed_days": self.oldest_unprocessed_days,
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
            "errors": self.errors,
        }


@dataclass
class RunReport:
    run_id: uuid.UUID
    outcomes: list[PolicyOutcome]

    @property
    def ok(self) -> bool:
        return all(outcome.status == "ok" for outcome in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "ok": self.ok,
            "policies": [outcome.as_dict() for outcome in self.outcomes],
        }


@dataclass
class PlanReport:
    plans: list[PolicyPlan]
    issues: dict[str, list[PolicyIssue]]
    clock_skew_s: float

    @property
    def ok(self) -> bool:
        return not self.issues and all(plan.guard is None for plan in self.plans)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "clock_skew_s": round(self.clock_skew_s, 3),
            "policies": [plan.as_dict() for plan in self.plans],
            "errors": {name: [str(i) for i in issues] for name, issues in self.issues.items()},
        }


class Runner:
    """Plans and runs the policies of one policy file against one database."""

    def __init__(
        self,
        engine: AsyncEngine,
        policy_set: PolicySet,
        settings: Settings,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.policy_set = policy_set
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()

    def select(self, only: Sequence[str] | None) -> list[str]:
        """The policy names a run of `only` covers (all when None), in file order.

        Raises:
            ValueError: a name that is not in the policy file.
        """
        names = [p.name for p in self.policy_set.policies]
        if only is None:
            return names
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown policy {', '.join(unknown)} (known: {', '.join(names)})")
        return [name for name in names if name in only]

    async def plan(self, only: Sequence[str] | None = None) -> PlanReport:
        """Dry run: read-only queries in one transaction that is rolled back."""
        selected = self.select(only)
        async with self.engine.connect() as conn:
            bound, issues = await bind_policies(conn, self.policy_set, self.settings, only=selected)
            base = await time_base(conn, self.clock)
            plans = [
                await plan_policy(conn, bound[name], base.now) for name in selected if name in bound
            ]
            await conn.rollback()
        return PlanReport(plans, issues, base.skew_seconds)

    async def oldest_unprocessed(self) -> dict[str, float | None]:
        """policy → age in days of its oldest due, unheld row, from `oldest_due` alone.

        What the leader's gauge needs, at the cost of one bounded index read per policy
        instead of `plan()`'s counts over every table.
        """
        async with self.engine.connect() as conn:
            bound, _ = await bind_policies(conn, self.policy_set, self.settings)
            base = await time_base(conn, self.clock)
            ages = {
                name: await oldest_due(
                    conn,
                    b,
                    base.now,
                    after=await marks.start(conn, b, base.now)
                    if b.policy.action is Action.ANONYMIZE
                    else None,
                )
                for name, b in bound.items()
            }
            await conn.rollback()
        return ages

    async def run(
        self,
        only: Sequence[str] | None = None,
        *,
        force: bool = False,
        trigger: str = "cli",
        progress: Progress | None = None,
        run_id: uuid.UUID | None = None,
        actor: str | None = None,
    ) -> RunReport:
        """Run the selected policies; `run_id` lets a caller name the run before it starts.

        `actor` is who the audit entries name (an API token's name); default: `trigger`.
        """
        selected = self.select(only)
        actor = actor or trigger
        run_id = run_id or uuid.uuid4()
        await self._start(run_id, selected, trigger=trigger, force=force, actor=actor)
        async with self.engine.connect() as conn:
            bound, issues = await bind_policies(conn, self.policy_set, self.settings, only=selected)
        outcomes = []
        for name in selected:
            # A policy that did not bind is reported with its issues, not run.
            binding = issues[name] if name in issues else bound[name]
            outcome = await self._run_policy(name, binding, run_id, force=force, progress=progress)
            await self._record(run_id, outcome)
            outcomes.append(outcome)
        report = RunReport(run_id, outcomes)
        await self._finish(report, actor=actor)
        return report

    async def _start(
        self, run_id: uuid.UUID, selected: list[str], *, trigger: str, force: bool, actor: str
    ) -> None:
        """The run's row and its `run.start` audit entry, in one transaction."""
        started = self.clock.now()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(runs).values(id=run_id, started_at=started, trigger=trigger, forced=force)
            )
            await append(
                conn,
                [
                    AuditEntry(
                        AuditAction.RUN_START,
                        actor,
                        {"run_id": run_id, "policies": selected, "forced": force},
                    )
                ],
                at=started,
            )
        log.info("run_started", run_id=str(run_id), policies=len(selected), forced=force)

    async def _run_policy(
        self,
        name: str,
        binding: BoundPolicy | list[PolicyIssue],
        run_id: uuid.UUID,
        *,
        force: bool,
        progress: Progress | None,
    ) -> PolicyOutcome:
        """One policy of the run: its binding issues, or its purge under the policy's lock.
        Any error ends up in the outcome, never out of the run."""
        policy = self.policy_set.get(name)
        outcome = PolicyOutcome(
            policy=name, action=policy.action.value, started_at=self.clock.now()
        )
        begun = time.monotonic()
        if isinstance(binding, list):
            outcome.status = "error"
            outcome.errors = [str(issue) for issue in binding]
        else:
            try:
                async with self._exclusive(name) as acquired:
                    if acquired:
                        await self._execute(
                            binding, run_id, outcome, force=force, progress=progress
                        )
                    else:
                        outcome.status = "error"
                        outcome.errors.append(
                            f"policy {name!r} is already being run by another process; "
                            "skipped so that it runs once at a time"
                        )
            except Exception as exc:
                outcome.status = "error"
                outcome.errors.append(error_text(exc))
                log.error("policy_failed", run_id=str(run_id), policy=name, error=error_text(exc))
        outcome.duration_s = time.monotonic() - begun
        return outcome

    async def _finish(self, report: RunReport, *, actor: str) -> None:
        """The run's outcome and its `run.finish` audit entry, waiting out a server restart:
        the run is over, and its record must not stay `running`."""
        finished = self.clock.now()
        run_id = report.run_id

        async def finish() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(runs)
                    .where(runs.c.id == run_id)
                    .values(finished_at=finished, status="ok" if report.ok else "errors")
                )
                await append(
                    conn,
                    [
                        AuditEntry(
                            AuditAction.RUN_FINISH,
                            actor,
                            {
                                "run_id": run_id,
                                "ok": report.ok,
                                "processed": {o.policy: o.processed for o in report.outcomes},
                            },
                        )
                    ],
                    at=finished,
                )

        await when_reachable(finish, what="run outcome")
        log.info("run_finished", run_id=str(run_id), ok=report.ok)

    @asynccontextmanager
    async def _exclusive(self, policy: str) -> AsyncIterator[bool]:
        """Hold the policy's run lock for the duration, if no other process holds it.

        Scheduled runs are already single-leader, but a manual `retention run` or an API
        trigger on another replica could overlap them; two concurrent runs of one policy
        would race on the same rows.
        """
        key = func.hashtext(f"retention.policy:{policy}")
        async with self.engine.connect() as conn:
            # Autocommit: the lock is the session's; no transaction is held open meanwhile.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            acquired = bool((await conn.execute(select(func.pg_try_advisory_lock(key)))).scalar())
            try:
                yield acquired
            finally:
                if acquired:
                    await conn.execute(select(func.pg_advisory_unlock(key)))

    async def _execute(
        self,
        bound: BoundPolicy,
        run_id: uuid.UUID,
        outcome: PolicyOutcome,
        *,
        force: bool,
        progress: Progress | None,
    ) -> None:
        # One connection for the plan, every batch and the leftover count: a checkout
        # from the pool pings the server first (three round trips: BEGIN, a ping,
        # ROLLBACK), which a checkout per batch paid as often as the batch's own
        # statements. Each batch is still its own transaction. (A delete's batches
        # alternate with a second connection, checked out once: `_pipelined`.)
        async with self.engine.connect() as conn:
            await self._execute_on(conn, bound, run_id, outcome, force=force, progress=progress)

    async def _execute_on(
        self,
        conn: AsyncConnection,
        bound: BoundPolicy,
        run_id: uuid.UUID,
        outcome: PolicyOutcome,
        *,
        force: bool,
        progress: Progress | None,
    ) -> None:
        policy = bound.policy
        anonymize = policy.action is Action.ANONYMIZE
        base = await time_base(conn, self.clock)
        # Anonymize starts after its mark: the rows it already anonymized are not
        # walked again (coordinator/purge/marks.py).
        start = await marks.start(conn, bound, base.now) if anonymize else None
        plan = await count_due(conn, bound, base.now, after=start)
        refusal = None
        if plan.refused and not force:
            # Said in full, with what is held: one more count, only when refusing.
            refusal = await plan_policy(conn, bound, base.now, after=start)
        # Read-only: nothing to keep.
        await conn.rollback()
        if base.skew_seconds > _SKEW_WARNING_SECONDS:  # ahead: cutoffs now follow the DB
            log.warning(
                "clock_skew_detected", policy=policy.name, skew_s=round(base.skew_seconds, 1)
            )
        outcome.cutoff, outcome.due = plan.cutoff, plan.due
        if refusal is not None and refusal.guard is not None:
            outcome.status = "error"
            outcome.errors.append(refusal.guard)
            outcome.held = refusal.held
            outcome.oldest_unprocessed_days = refusal.oldest_age_days
            return
        # Even when nothing is due yet: rows may become due during the run, and a delete
        # and archive batch is one statement naming the archive table.
        if bound.archive is not None and not bound.archive_exists:
            async with conn.begin():
                await ensure_archive_table(conn, bound)
        keys: KeyStore | None = None
        if policy.action is Action.ARCHIVE or policy.restore_window is not None:
            try:
                keys = open_keystore(self.settings, self.engine)
            except KeyStoreError as exc:
                outcome.status = "error"
                outcome.errors.append(str(exc))
                return
        try:
            if (
                keys is None
                and acts_in_one_pass(bound)
                and self.settings.purge_batches_in_flight > 1
            ):
                await self._pipelined(conn, bound, run_id, outcome, plan, base.now, force, progress)
            else:
                await self._one_by_one(
                    conn, bound, run_id, outcome, plan, base.now, force, progress, keys, start
                )
        finally:
            if keys is not None:
                await keys.aclose()
        if anonymize and outcome.processed:
            # The ledger grew during the run; stale statistics would turn the count
            # below (and the next plan) into nested loops over the whole ledger.
            async with conn.begin():
                await conn.execute(text(f"ANALYZE {anonymized.name}"))
        left = await leftover(conn, bound, base.now, after=start)
        await conn.rollback()
        outcome.held, outcome.oldest_unprocessed_days = left.held, left.oldest_age_days

    async def _one_by_one(
        self,
        conn: AsyncConnection,
        bound: BoundPolicy,
        run_id: uuid.UUID,
        outcome: PolicyOutcome,
        plan: DueCount,
        now: datetime,
        force: bool,
        progress: Progress | None,
        keys: KeyStore | None,
        start: Any | None,
    ) -> None:
        """The batches one after the other, each its own transaction."""
        after, contiguous = start, bound.policy.action is Action.ANONYMIZE
        statements = RunStatements()
        while True:
            async with conn.begin():
                batch = await purge_batch(
                    conn,
                    bound,
                    run_id=run_id,
                    cutoff=plan.cutoff,
                    now=now,
                    after=after,
                    keys=keys,
                    mark=contiguous,
                    statements=statements,
                )
            contiguous = contiguous and batch.contiguous
            if batch.last_scanned is None:
                return
            after = batch.last_scanned
            self._count(bound, outcome, len(batch.ids), batch.events, plan, progress)
            if batch.exhausted or not self._more(bound, outcome, force):
                return

    async def _pipelined(
        self,
        conn: AsyncConnection,
        bound: BoundPolicy,
        run_id: uuid.UUID,
        outcome: PolicyOutcome,
        plan: DueCount,
        now: datetime,
        force: bool,
        progress: Progress | None,
    ) -> None:
        """The batches of a one-statement delete, two in flight on two connections.

        While batch N writes its outbox row and audit entry and commits on one
        connection, batch N+1 (whose keyset starts where N's window ended, so no row is
        shared) takes the hold lock and deletes on the other. Each batch is still its
        own transaction with every step of `purge_batch` in the same order: the hold
        lock before its holds are read, the audit chain's lock before its seq and entry.
        N+1 is recorded only once N has committed, so seq order, the audit chain's order
        and commit order stay the batches' order. A failure rolls back the batch in
        flight too, and the policy fails as a failed batch always made it.
        """
        statements = RunStatements()

        async def act(
            on: AsyncConnection | asyncio.Task[AsyncConnection], after: Any | None
        ) -> tuple[AsyncConnection, ActedBatch]:
            if not isinstance(on, AsyncConnection):
                on = await on
            await on.begin()
            acted = await act_batch(
                on,
                bound,
                run_id=run_id,
                cutoff=plan.cutoff,
                now=now,
                after=after,
                statements=statements,
            )
            return on, acted

        # The second connection opens only once a batch ahead is due (it opens while
        # that batch's predecessor records itself): a run with one batch or none checks
        # out no connection it would not use, nor waits for one from a busy pool.
        opening: asyncio.Task[AsyncConnection] | None = None
        try:
            current, done = await act(conn, None)
            spare: AsyncConnection | asyncio.Task[AsyncConnection] | None = None
            while True:
                ahead: asyncio.Task[tuple[AsyncConnection, ActedBatch]] | None = None
                if (
                    done.last_scanned is not None
                    and not done.exhausted
                    and self._more(bound, outcome, force, also=len(done.batch.ids))
                ):
                    if spare is None:
                        spare = opening = asyncio.create_task(self.engine.connect().start())
                    ahead = asyncio.create_task(act(spare, done.last_scanned))
                try:
                    batch = await record_batch(current, bound, done, run_id=run_id, now=now)
                    await current.commit()
                except BaseException:
                    if ahead is not None:
                        # This batch's locks go first: a hold's creation may be queued
                        # behind them with the batch ahead queued behind it, a wait
                        # PostgreSQL cannot see while this transaction sits idle. The batch
                        # ahead then ends (or fails) before its connection's close rolls
                        # it back.
                        try:
                            await current.rollback()
                        finally:
                            await asyncio.gather(ahead, return_exceptions=True)
                    raise
                if batch.last_scanned is None:
                    return
                self._count(bound, outcome, len(batch.ids), batch.events, plan, progress)
                if ahead is None:
                    return
                spare = current
                current, done = await ahead
        finally:
            if opening is not None:
                (other,) = await asyncio.gather(opening, return_exceptions=True)
                if isinstance(other, AsyncConnection):
                    await other.close()

    @staticmethod
    def _count(
        bound: BoundPolicy,
        outcome: PolicyOutcome,
        touched: int,
        events: int,
        plan: DueCount,
        progress: Progress | None,
    ) -> None:
        outcome.processed += touched
        outcome.events += events
        if progress is not None:
            progress(bound.policy.name, outcome.processed, plan.due)

    @staticmethod
    def _more(bound: BoundPolicy, outcome: PolicyOutcome, force: bool, also: int = 0) -> bool:
        """Whether another batch may run after `also` more rows than `outcome` counts.
        The guard counted before the run; rows that became due meanwhile wait."""
        cap = bound.policy.max_rows_per_run
        return force or cap is None or outcome.processed + also < cap

    async def _record(self, run_id: uuid.UUID, outcome: PolicyOutcome) -> None:
        finished = self.clock.now()

        async def record() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(policy_results).values(
                        run_id=run_id,
                        policy=outcome.policy,
                        action=outcome.action,
                        status=outcome.status,
                        legal_basis=self.policy_set.get(outcome.policy).legal_basis,
                        processed=outcome.processed,
                        held=outcome.held,
                        events=outcome.events,
                        duration_s=outcome.duration_s,
                        oldest_unprocessed_days=outcome.oldest_unprocessed_days,
                        cutoff=outcome.cutoff,
                        errors=outcome.errors,
                        started_at=outcome.started_at,
                        finished_at=finished,
                    )
                )

        # A policy that failed because the server restarted is recorded once it is back.
        await when_reachable(record, what="policy result")
        m = self.metrics
        m.records_processed.labels(outcome.policy, outcome.action).inc(outcome.processed)
        m.records_held.labels(outcome.policy).inc(outcome.held)
        m.run_duration.labels(outcome.policy).observe(outcome.duration_s)
        m.oldest_unprocessed.labels(outcome.policy).set(outcome.oldest_unprocessed_days or 0.0)
