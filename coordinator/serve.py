"""`retention serve`'s composition root: one process, one event loop, a task per part.

* the **scheduler** (leader only) runs each schedule's policies, then drains the outbox;
* the **outbox relay** publishes committed outbox batches (on every replica: one leads
  each round by an advisory lock, the others wait);
* the **completion tracker** consumes acks and registrations (one consumer group);
* the **gauges** task recomputes the database-derived gauges on a timer;
* the **erasure** task moves erasure requests' statuses (coordinator/erasure/);
* the **notify** task, when `RETENTION_WEBHOOKS_FILE` is set, queues and posts webhook
  notifications (coordinator/operations/notify/);
* the **upkeep** task (leader only), daily: signs and publishes an audit-chain head and
  prunes the coordinator's own tables past their retention (coordinator/evidence/);
* the **HTTP API** (uvicorn, in the same loop).

Stopping (SIGTERM/SIGINT set `stop`): the scheduler lets the current run finish, the
relay finishes its batch in flight, the tracker commits what it recorded, the API stops
accepting requests; all of that is bounded by `RETENTION_SERVE_SHUTDOWN_TIMEOUT_S`,
after which the remaining tasks are cancelled (a cancelled batch rolls back and is
published again later: nothing is lost). A task that ends on its own before `stop` is a
fault: the service stops the others and `run` raises `ServiceFailed`, so a supervisor
restarts the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
import uvicorn
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import CoordinatorError
from coordinator.api import ApiContext, RunInProgress, create_app
from coordinator.api.health import KafkaHealth
from coordinator.api.tokens import TokenStore
from coordinator.clock import Clock, SystemClock
from coordinator.console.sessions import load_secret
from coordinator.copies.backups import BackupHorizon
from coordinator.copies.suppression.entries import Suppression, SuppressionPublisher
from coordinator.copies.verification.request import sample_all
from coordinator.erasure.service import Erasure
from coordinator.evidence import evidence_signer
from coordinator.evidence.pseudonyms import load_pepper
from coordinator.evidence.upkeep import Upkeep
from coordinator.kafka.admin import TopicsRefused, ensure_topics
from coordinator.kafka.clients import KafkaPublisher
from coordinator.metrics import Metrics
from coordinator.operations.notify.notifier import Notifier
from coordinator.operations.notify.webhooks import load_webhooks
from coordinator.operations.republish import RepublishSetup
from coordinator.operations.republish_jobs import RepublishJobs
from coordinator.outbox.relay import OutboxRelay
from coordinator.policy.model import PolicySet
from coordinator.purge import run_log
from coordinator.purge.runner import Runner, RunReport
from coordinator.purge.scheduler import Schedule, Scheduler
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.tracking.tracker import Tracker
from schemas.errors import error_text
from schemas.signing import SignatureMode
from schemas.suppression import PepperError

__all__ = ["GLOBAL_SCHEDULE", "RunInProgress", "Service", "ServiceFailed", "schedules_for"]

log = structlog.get_logger("retention.serve")

GLOBAL_SCHEDULE = "global"


class ServiceFailed(CoordinatorError, RuntimeError):
    """A component of the service stopped on its own; the process should exit non-zero."""


def _log_failure(task: asyncio.Task[RunReport]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("triggered_run_failed", exc_info=task.exception())


def schedules_for(policy_set: PolicySet, global_cron: str) -> list[Schedule]:
    """One schedule per policy with its own `schedule`, and the global one for the rest."""
    own = [
        Schedule(f"policy:{p.name}", p.schedule, (p.name,))
        for p in policy_set.policies
        if p.schedule is not None
    ]
    rest = tuple(p.name for p in policy_set.policies if p.schedule is None)
    return [*own, Schedule(GLOBAL_SCHEDULE, global_cron, rest)] if rest else own


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(slots=True)
class _Parts:
    engine: AsyncEngine
    metrics: Metrics
    runner: Runner
    relay: OutboxRelay
    drainer: OutboxRelay
    tracker: Tracker
    scheduler: Scheduler
    server: _Server
    kafka_health: KafkaHealth
    erasure: Erasure
    notifier: Notifier | None
    suppression: SuppressionPublisher
    upkeep: Upkeep
    republish_jobs: RepublishJobs


class Service:
    """Everything `retention serve` runs, built from settings and a policy set."""

    def __init__(
        self,
        settings: Settings,
        policy_set: PolicySet,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        port: int | None = None,
        node: str | None = None,
    ) -> None:
        self.settings = settings
        self.policy_set = policy_set
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.clock = clock if clock is not None else SystemClock()
        self.port = port if port is not None else settings.http_port
        # Host and pid: replicas on one host (tests, the demo) stay distinguishable.
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self.schedules = schedules_for(policy_set, settings.schedule)
        # Read now: a tokens file that is set but broken stops the service at start.
        self.tokens = (
            TokenStore(settings.api_tokens_file) if settings.api_tokens_file is not None else None
        )
        # Read now too: a secret file that is set but unusable stops the service at start.
        self.ui_secret = load_secret(settings.ui_secret_file)
        # Read now too: a pepper file that is set but unusable stops the service at start.
        self.pepper = load_pepper(settings.suppression_pepper_file)
        # Read now too: a webhooks file that is set but broken stops the service at start.
        self.webhooks = (
            load_webhooks(settings.webhooks_file) if settings.webhooks_file is not None else ()
        )
        for policy in policy_set.policies:
            days = policy.retention.total_seconds() / 86400
            self.metrics.policy_retention.labels(policy.name).set(days)
        backups = BackupHorizon.of(settings)
        for store, kept in (("data", backups.data), ("keys", backups.keys)):
            if kept is not None:
                self.metrics.backup_retention.labels(store).set(kept.total_seconds() / 86400)
        self._parts: _Parts | None = None
        self._triggered: asyncio.Task[RunReport] | None = None
        self._run_lock = asyncio.Lock()

    # --- the scheduled job ---------------------------------------------------------------

    async def _job(self, schedule: Schedule, fire_at: datetime) -> None:
        names = list(schedule.policies or ())
        if not names:
            return
        report = await self._run_and_drain(names, trigger=f"schedule:{schedule.name}")
        log.info("scheduled_run_finished", schedule=schedule.name, fire_at=fire_at.isoformat())
        if not report.ok:
            failed = [o.policy for o in report.outcomes if o.status != "ok"]
            raise RuntimeError(f"run {report.run_id} had failed policies: {', '.join(failed)}")

    async def _run_and_drain(
        self,
        names: list[str],
        *,
        trigger: str,
        force: bool = False,
        run_id: uuid.UUID | None = None,
        actor: str | None = None,
    ) -> RunReport:
        parts = self._require_parts()
        # One run at a time in this process: a triggered run waits for a scheduled one
        # rather than racing it over the same rows.
        async with self._run_lock:
            report = await parts.runner.run(
                names, trigger=trigger, force=force, run_id=run_id, actor=actor
            )
        log.info("run_finished", trigger=trigger, run_id=str(report.run_id), ok=report.ok)
        await self._refresh_last_successes(parts.engine)
        try:
            # Publishing right away keeps the run's events together; the relay would get
            # to them anyway, so a timeout only ends the job, never loses an event.
            published = await parts.drainer.drain(timeout_s=self.settings.serve.drain_timeout_s)
            log.info("run_drained", run_id=str(report.run_id), published=published)
        except TimeoutError:
            log.warning("run_drain_timed_out", run_id=str(report.run_id))
        return report

    async def trigger_run(self, policies: list[str] | None, force: bool, actor: str) -> uuid.UUID:
        """Start a run now (HTTP `POST /v1/runs`) for `actor`; returns its id at once.

        Raises:
            RunInProgress: the previous triggered run has not finished.
            ValueError: an unknown policy name.
        """
        parts = self._require_parts()
        if self._triggered is not None and not self._triggered.done():
            raise RunInProgress("a triggered run is still in progress")
        names = parts.runner.select(policies)
        run_id = uuid.uuid4()
        self._triggered = asyncio.create_task(
            self._run_and_drain(names, trigger="api", force=force, run_id=run_id, actor=actor),
            name=f"run-{run_id}",
        )
        self._triggered.add_done_callback(_log_failure)
        await self._until_recorded(run_id, self._triggered)
        return run_id

    async def _until_recorded(self, run_id: uuid.UUID, task: asyncio.Task[RunReport]) -> None:
        """Return once the run log has the run, so its status URL answers at once."""
        engine = self._require_parts().engine
        async with asyncio.timeout(30):
            while not task.done():
                async with engine.connect() as conn:
                    if await run_log.get_run(conn, run_id) is not None:
                        return
                await asyncio.sleep(0.02)

    # --- gauges --------------------------------------------------------------------------

    async def refresh_gauges(self) -> None:
        """Last successful run (every replica); oldest unprocessed row (the leader only).

        The oldest row is one bounded index read per policy (`planner.oldest_due`), never
        a count; only the leader exports it, the other replicas drop the gauge rather
        than export a stale value.
        """
        parts = self._require_parts()
        await self._refresh_last_successes(parts.engine)
        leader = parts.scheduler.is_leader
        self.metrics.scheduler_leader.set(1 if leader else 0)
        if not leader:
            self.metrics.oldest_unprocessed.clear()
            return
        for policy, age in (await parts.runner.oldest_unprocessed()).items():
            self.metrics.oldest_unprocessed.labels(policy).set(age or 0.0)

    async def _refresh_last_successes(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            successes = await run_log.last_successes(conn)
        for policy, at in successes.items():
            self.metrics.last_successful_run.labels(policy).set(at.timestamp())

    async def _erasure_forever(self, stop: asyncio.Event) -> None:
        """Erasure requests' status moves: completion from the acks, re-execution once
        their holds are released, and their gauges."""
        parts = self._require_parts()
        interval = self.settings.serve.erasure_interval_s
        while not stop.is_set():
            try:
                # Every replica may complete requests (one UPDATE); only the leader
                # executes released ones again, so two replicas never race for them.
                await parts.erasure.advance(reexecute=parts.scheduler.is_leader)
            except Exception:
                log.exception("erasure_advance_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _verify_forever(self, stop: asyncio.Event) -> None:
        """Sample completed deletions for verification (SPEC §12); the leader only, and an
        advisory lock in the database besides."""
        parts = self._require_parts()
        interval = self.settings.serve.verify_interval_s
        while not stop.is_set():
            if parts.scheduler.is_leader:
                try:
                    asked = await sample_all(
                        parts.engine, self.policy_set.policies, now=self.clock.now()
                    )
                    if asked:
                        log.info("verify_sampled", events=len(asked))
                except Exception:
                    log.exception("verify_sample_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _gauges_forever(self, stop: asyncio.Event) -> None:
        interval = self.settings.serve.gauges_interval_s
        while not stop.is_set():
            try:
                await self.refresh_gauges()
            except Exception:
                log.exception("gauges_refresh_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    # --- lifecycle -----------------------------------------------------------------------

    def _require_parts(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("the service is not running")
        return self._parts

    def _relay(self, engine: AsyncEngine, *, actor: str) -> OutboxRelay:
        return OutboxRelay(
            engine,
            self.settings.kafka,
            settings=self.settings.relay,
            metrics=self.metrics,
            clock=self.clock,
            actor=actor,
            signatures=self.settings.signatures,
        )

    def _build(self) -> _Parts:
        s = self.settings
        engine = make_engine(s.database_url.get_secret_value(), pool_size=5)
        scheduler = Scheduler(
            engine,
            self.schedules,
            self._job,
            clock=self.clock,
            misfire_grace=timedelta(seconds=s.serve.misfire_grace_s),
            tick_seconds=s.serve.tick_s,
            node=self.node,
        )
        kafka_health = KafkaHealth(s.kafka)
        signer = s.signatures.coordinator_signer()
        erasure = Erasure(engine, self.policy_set, s, self.clock, self.metrics)
        republish = RepublishSetup(s.kafka, signer)
        api = create_app(
            ApiContext(
                engine=engine,
                kafka_health=kafka_health,
                registry=self.metrics.registry,
                clock=self.clock,
                tokens=self.tokens,
                health_timeout_s=s.serve.health_timeout_s,
                policy_set=self.policy_set,
                global_schedule=s.schedule,
                trigger_run=self.trigger_run,
                signatures=s.signatures.mode,
                erasure=erasure,
                republish=republish,
                settings=s,
                metrics=self.metrics,
                ui_secret=self.ui_secret,
                ui_session_s=s.ui_session_hours * 3600,
                pepper=self.pepper,
            )
        )
        config = uvicorn.Config(
            api,
            host=s.serve.host,
            port=self.port,
            log_config=None,  # uvicorn's loggers go through our structlog pipeline
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(s.serve.shutdown_timeout_s / 2)),
        )
        return _Parts(
            engine=engine,
            metrics=self.metrics,
            runner=Runner(engine, self.policy_set, s, clock=self.clock, metrics=self.metrics),
            relay=self._relay(engine, actor="relay"),
            drainer=self._relay(engine, actor="scheduler"),
            tracker=Tracker(
                engine,
                s.kafka,
                s.tracker,
                clock=self.clock,
                metrics=self.metrics,
                services=self.policy_set.services,
                signatures=s.signatures.mode,
                signer=signer,
            ),
            scheduler=scheduler,
            server=_Server(config),
            kafka_health=kafka_health,
            erasure=erasure,
            notifier=(
                Notifier(engine, self.webhooks, s.notify, clock=self.clock, metrics=self.metrics)
                if self.webhooks
                else None
            ),
            suppression=SuppressionPublisher(
                engine,
                s.kafka.topics,
                KafkaPublisher(s.kafka),
                s.signatures.coordinator_signer(),
                clock=self.clock,
            ),
            upkeep=Upkeep(
                engine,
                s.kafka,
                s.own_retention(),
                self.clock,
                signer=evidence_signer(s.signatures),
                pepper=self.pepper,
                is_leader=lambda: scheduler.is_leader,
                interval_s=s.serve.upkeep_interval_s,
            ),
            republish_jobs=RepublishJobs(
                engine,
                republish,
                self.clock,
                interval_s=s.serve.republish_interval_s,
                lease_s=s.serve.republish_lease_s,
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (then shut down gracefully) or a component fails.

        Raises:
            ServiceFailed: a component ended on its own; the others were stopped.
        """
        s = self.settings
        if s.signatures.mode is not SignatureMode.REQUIRED:
            log.warning(
                "signatures_not_required",
                mode=s.signatures.mode.value,
                effect="unsigned acks and registrations count"
                if s.signatures.mode is SignatureMode.PERMISSIVE
                else "nothing is verified",
            )
        try:
            created = await ensure_topics(
                s.kafka,
                partitions=s.serve.topic_partitions,
                replication_factor=s.serve.topic_replication_factor,
            )
        except TopicsRefused as exc:
            # No CREATE permission, too few brokers for the replication factor: the
            # operator fixes the ACLs or the settings.
            raise ServiceFailed(str(exc)) from None
        if created:
            log.info("topics_created", topics=created)
        try:
            Suppression.from_settings(s)  # a bad pepper file stops `serve` here, not later
        except PepperError as exc:
            raise ServiceFailed(str(exc)) from None
        if s.suppression_pepper_file is None:
            log.warning(
                "suppression_list_off",
                effect="erased entities are not listed on the erased topic",
                setting="RETENTION_SUPPRESSION_PEPPER_FILE",
            )
        parts = self._parts = self._build()
        # What exists now (imported modules, clients, settings) lives as long as the
        # process. Frozen, it is left out of full collections, which the tracker's and
        # relay's batches trigger and which otherwise walk it all every time (about a
        # third of the tracker's CPU in bench.e2e, docs/tracking.md).
        gc.freeze()
        server = parts.server

        async def serve_http() -> None:
            try:
                await server.serve()
            except SystemExit as exc:  # uvicorn exits when it cannot bind
                raise ServiceFailed(
                    f"HTTP server could not listen on {s.serve.host}:{self.port}"
                ) from exc
            if not stop.is_set():
                raise ServiceFailed(f"HTTP server on {s.serve.host}:{self.port} stopped")

        async def stop_http() -> None:
            await stop.wait()
            server.should_exit = True

        components: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "scheduler": lambda: parts.scheduler.run_forever(stop),
            "relay": lambda: parts.relay.run_forever(stop),
            "tracker": lambda: parts.tracker.run_forever(stop),
            "gauges": lambda: self._gauges_forever(stop),
            "erasure": lambda: self._erasure_forever(stop),
            "verify": lambda: self._verify_forever(stop),
            "suppression": lambda: parts.suppression.run_forever(stop),
            "upkeep": lambda: parts.upkeep.run_forever(stop),
            "republish_jobs": lambda: parts.republish_jobs.run_forever(stop),
            "http": serve_http,
            "http_stopper": stop_http,
        }
        notifier = parts.notifier
        if notifier is not None:
            components["notify"] = lambda: notifier.run_forever(stop)
        tasks: dict[asyncio.Task[None], str] = {
            asyncio.create_task(start(), name=name): name for name, start in components.items()
        }
        log.info(
            "serve_started",
            port=self.port,
            schedules=[f"{x.name}={x.cron}" for x in self.schedules],
            policies=len(self.policy_set.policies),
        )
        try:
            failure = await self._supervise(stop, tasks)
        finally:
            await self._close(parts)
            self._parts = None
        if failure is not None:
            raise failure

    async def _supervise(
        self, stop: asyncio.Event, tasks: dict[asyncio.Task[None], str]
    ) -> ServiceFailed | None:
        pending: set[asyncio.Task[None]] = set(tasks)

        async def stopped() -> None:
            await stop.wait()

        stop_waiter = asyncio.create_task(stopped())
        done, _ = await asyncio.wait({*pending, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        failure: ServiceFailed | None = None
        for task in done - {stop_waiter}:
            failure = failure or _failure(tasks[task], task, stopping=stop_waiter in done)
        stop.set()
        await stop_waiter
        log.info("serve_stopping", timeout_s=self.settings.serve.shutdown_timeout_s)
        pending -= done
        if pending:
            done_late, still = await asyncio.wait(
                pending, timeout=self.settings.serve.shutdown_timeout_s
            )
            for task in done_late:
                failure = failure or _failure(tasks[task], task, stopping=True)
            for task in still:
                log.warning("serve_shutdown_timed_out", component=tasks[task])
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        return failure

    async def _close(self, parts: _Parts) -> None:
        triggered = self._triggered
        if triggered is not None and not triggered.done():
            # Like a scheduled run: let it finish within the shutdown bound.
            _, late = await asyncio.wait(
                {triggered}, timeout=self.settings.serve.shutdown_timeout_s
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for relay in (parts.relay, parts.drainer):
            await relay.close()
        await parts.kafka_health.close()
        await parts.engine.dispose()
        log.info("serve_stopped")


def _failure(
    name: str, task: asyncio.Task[None], *, stopping: bool = False
) -> ServiceFailed | None:
    """Why a finished task means the service failed, or None if it ended as it should."""
    if task.cancelled():
        return ServiceFailed(f"{name} was cancelled")
    exc = task.exception()
    if exc is None:
        return None if stopping else ServiceFailed(f"{name} stopped on its own")
    log.error("component_failed", component=name, error=error_text(exc), exc_info=exc)
    if isinstance(exc, ServiceFailed):
        return exc
    return ServiceFailed(f"{name} failed: {error_text(exc)}")
