"""Runs one event through its handler: idempotency, retries with backoff, the ack to send.

Shared by the Kafka runtime and the in-memory test kit, so both behave the same. In a
batch (`first_attempt`) an event gets one attempt in its own savepoint; an event that
needs retrying is then retried on its own (`execute(first_error=...)`). A batch handler
gets a group of events in one savepoint (`batch_attempt`); if that call raises, its
events are taken one by one as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from consumer_sdk._internal.registry import HandlerSpec
from consumer_sdk.context import HandlerContext
from consumer_sdk.exceptions import (
    EntityNotFound,
    HandlerAbandoned,
    HandlerCancelled,
    HandlerTimeout,
)
from consumer_sdk.idempotency import (
    AlreadyRecorded,
    BatchTransaction,
    IdempotencyStore,
    ProcessedEvent,
)
from consumer_sdk.metrics import ConsumerMetrics, observe_many
from consumer_sdk.settings import ConsumerSettings
from schemas import AckStatus, RetentionAck, RetentionEvent, error_text, is_disconnect, utc_now

__all__ = ["Abandoned", "EventExecutor", "Outcome", "Retry"]

log = structlog.get_logger("consumer_sdk")

T = TypeVar("T")

MAX_DETAIL = 1000


class Abandoned(Exception):
    """The consumer is stopping (or lost the partition) during a retry wait: no ack, no commit."""


class Outcome(NamedTuple):
    """How handling one event ended. A named tuple: one is made per event (see
    `ProcessedEvent`)."""

    status: AckStatus
    records_affected: int
    attempts: int
    detail: str = ""
    redelivered: bool = False

    def ack(self, service: str, event: RetentionEvent) -> RetentionAck:
        return RetentionAck(
            event_id=event.event_id,
            service=service,
            entity_type=event.entity_type,
            entity_id=event.entity_id,
            status=self.status,
            records_affected=self.records_affected,
            detail=self.detail,
            attempt=self.attempts,
            acknowledged_at=utc_now(),
        )

    def processed(self, event: RetentionEvent, at: datetime | None = None) -> ProcessedEvent:
        """The event's record, processed `at` (default: now)."""
        return ProcessedEvent(
            event.event_id, self.status, self.records_affected, at if at is not None else utc_now()
        )


@dataclass(frozen=True, slots=True)
class Retry:
    """The first attempt, in a batch, failed with an error worth retrying, or was
    abandoned (`HandlerAbandoned`, which took the batch's connection): either way the
    batch ends before the event, and the event is settled on its own."""

    error: Exception


async def _settled(task: asyncio.Future[T], seconds: float) -> bool:
    """Wait until `task` is done or `seconds` have passed; whether it is done. Cancelling
    the waiter leaves `task` alone (the caller decides)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(seconds, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


class EventExecutor:
    def __init__(
        self,
        service: str,
        settings: ConsumerSettings,
        store: IdempotencyStore | None,
        metrics: ConsumerMetrics,
        *,
        on_call: Callable[[HandlerSpec, object, HandlerContext], None] | None = None,
    ) -> None:
        self.on_call = on_call
        self.service = service
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._abandoned: set[asyncio.Future[Any]] = set()
        """Handler calls that ignored their cancellation and still run."""

    async def execute(
        self,
        event: RetentionEvent,
        spec: HandlerSpec,
        known: ProcessedEvent | None,
        *,
        stopping: asyncio.Event | None = None,
        first_error: Exception | None = None,
    ) -> Outcome:
        """The outcome to ack; raises `Abandoned` if `stopping` is set during a backoff.

        `first_error`: attempt 1 was made in a batch and failed so; go on from attempt 2.
        """
        labels = (self.service, spec.entity_type, spec.action.value)
        if known is not None:
            return self.redelivered(spec, known)
        max_attempts = spec.max_attempts or self.settings.max_attempts

        async def sleep(seconds: float) -> None:
            if stopping is None:
                await asyncio.sleep(seconds)
                return
            try:
                await asyncio.wait_for(stopping.wait(), timeout=seconds)
            except TimeoutError:
                return
            raise Abandoned(str(event.event_id))

        def before_sleep(state: RetryCallState) -> None:
            self.metrics.retried.labels(*labels).inc()
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "handler_attempt_failed",
                service=self.service,
                event_id=str(event.event_id),
                entity_type=event.entity_type,
                action=spec.action.value,
                attempt=state.attempt_number,
                max_attempts=max_attempts,
                error=type(error).__name__ if error else None,
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max_attempts),
            wait=wait_exponential(
                multiplier=self.settings.retry_initial_s, max=self.settings.retry_max_s
            )
            + wait_random(0, self.settings.retry_jitter_s),
            retry=retry_if_exception(spec.is_retriable),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        attempt = 0
        try:
            async for attempt_state in retrying:
                with attempt_state:
                    attempt = attempt_state.retry_state.attempt_number
                    if attempt == 1 and first_error is not None:
                        raise first_error
                    return await self._attempt(event, spec, attempt, max_attempts)
        except Abandoned:
            raise
        except Exception as exc:
            await self._unless_database_down(event, exc)
            return self._failed(event, spec, exc, max(attempt, 1))
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _unless_database_down(self, event: RetentionEvent, exc: Exception) -> None:
        """Raise `exc` again if the service's own database is unreachable right now.

        Attempts that failed because the store's database was restarting say nothing
        about the event: acking `failed` would turn an outage of a few seconds into a
        permanent failure. Raised, the batch is re-read after `error_backoff_s`, until
        the database is back. A handler's own failure (the database answers) is acked.
        """
        reachable = getattr(self.store, "reachable", None)
        if reachable is None or not is_disconnect(exc) or await reachable():
            return
        log.warning(
            "database_unreachable",
            then="read_again",
            service=self.service,
            event_id=str(event.event_id),
            error=type(exc).__name__,
        )
        raise exc

    async def first_attempt(
        self, event: RetentionEvent, spec: HandlerSpec, batch: BatchTransaction
    ) -> Outcome | Retry:
        """Attempt 1 inside a batch, in its own savepoint: the outcome to ack (the caller
        records it unless failed), or `Retry` when the error deserves another attempt."""
        max_attempts = spec.max_attempts or self.settings.max_attempts
        try:
            async with batch.savepoint() as conn:
                context = HandlerContext(self.service, 1, max_attempts, conn)
                count = await self._timed(spec, event, context)
        except EntityNotFound as exc:
            return Outcome(AckStatus.NOT_FOUND, 0, 1, self._detail(exc))
        except Exception as exc:
            if isinstance(exc, HandlerAbandoned) or (max_attempts > 1 and spec.is_retriable(exc)):
                return Retry(exc)
            await self._unless_database_down(event, exc)
            return self._failed(event, spec, exc, 1)
        return Outcome(AckStatus.COMPLETED, count, 1)

    async def batch_attempt(
        self, events: Sequence[RetentionEvent], spec: HandlerSpec, batch: BatchTransaction
    ) -> list[Outcome] | None:
        """Attempt 1 of a batch handler for `events`, in one savepoint: an outcome per
        event (completed or not_found; the caller records them), or None when the call
        raised — its writes are rolled back and no event's attempt is counted; the caller
        then takes the events one by one."""
        max_attempts = spec.max_attempts or self.settings.max_attempts
        try:
            async with batch.savepoint() as conn:
                context = HandlerContext(self.service, 1, max_attempts, conn)
                if self.on_call is not None:
                    self.on_call(spec, list(events), context)
                started = time.perf_counter()
                try:
                    results = await self._bounded(spec, spec.call_batch(events, context), conn)
                finally:
                    self._observe(spec, time.perf_counter() - started, len(events))
        except Exception as exc:
            log.warning(
                "batch_handler_failed",
                then="one_by_one",
                service=self.service,
                entity_type=spec.entity_type,
                action=spec.action.value,
                events=len(events),
                first_event_id=str(events[0].event_id),
                error=type(exc).__name__,
            )
            return None
        # Outcomes are immutable: the events of one call that affected as many records
        # share one (a new object per event cost ~0.5 µs).
        completed: dict[int, Outcome] = {}
        outcomes: list[Outcome] = []
        for result in results:
            if isinstance(result, EntityNotFound):
                outcomes.append(Outcome(AckStatus.NOT_FOUND, 0, 1, self._detail(result)))
                continue
            outcome = completed.get(result) if type(result) is int else None
            if outcome is None:
                outcome = Outcome(AckStatus.COMPLETED, result, 1)
                if type(result) is int:
                    completed[result] = outcome
            outcomes.append(outcome)
        return outcomes

    async def verify(
        self, event: RetentionEvent, spec: HandlerSpec, conn: AsyncConnection | None
    ) -> Outcome:
        """One call of a verify handler: `verified` (0 left), `still_present` (n left), or
        `failed` when counting raised or ran past the timeout. One attempt: the coordinator
        asks again if it wants to."""
        try:
            count = await self._timed(spec, event, HandlerContext(self.service, 1, 1, conn))
        except Exception as exc:
            log.warning(
                "verify_handler_failed",
                service=self.service,
                event_id=str(event.event_id),
                entity_type=event.entity_type,
                error=type(exc).__name__,
            )
            return Outcome(AckStatus.FAILED, 0, 1, self._detail(exc))
        status = AckStatus.VERIFIED if count == 0 else AckStatus.STILL_PRESENT
        return Outcome(status, count, 1)

    def redelivered(self, spec: HandlerSpec, known: ProcessedEvent) -> Outcome:
        self.metrics.duplicates.labels(self.service, spec.entity_type, spec.action.value).inc()
        return self._redelivered(known)

    def _failed(
        self, event: RetentionEvent, spec: HandlerSpec, exc: Exception, attempts: int
    ) -> Outcome:
        self.metrics.failed.labels(self.service, spec.entity_type, spec.action.value).inc()
        log.error(
            "handler_failed",
            service=self.service,
            event_id=str(event.event_id),
            entity_type=event.entity_type,
            action=spec.action.value,
            attempts=attempts,
            error=type(exc).__name__,
        )
        return Outcome(AckStatus.FAILED, 0, attempts, self._detail(exc))

    def _detail(self, exc: BaseException) -> str:
        """Ack `detail` and DLQ error header: class and code; the message only on opt-in."""
        text = error_text(exc)
        if self.settings.error_messages and str(exc):
            # Whatever the message holds, the ack must stay valid on the wire (SPEC §3).
            message = str(exc).replace("\x00", "\\0").encode("utf-8", "replace").decode()
            text = f"{text}: {message}"
        return text[:MAX_DETAIL]

    async def _attempt(
        self, event: RetentionEvent, spec: HandlerSpec, attempt: int, max_attempts: int
    ) -> Outcome:
        if self.store is None:
            context = HandlerContext(self.service, attempt, max_attempts, None)
            try:
                count = await self._timed(spec, event, context)
            except EntityNotFound as exc:
                return Outcome(AckStatus.NOT_FOUND, 0, attempt, self._detail(exc))
            return Outcome(AckStatus.COMPLETED, count, attempt)
        try:
            async with self.store.transaction(self.service, event.event_id) as tx:
                context = HandlerContext(self.service, attempt, max_attempts, tx.connection)
                count = await self._timed(spec, event, context)
                outcome = Outcome(AckStatus.COMPLETED, count, attempt)
                await tx.record(outcome.processed(event))
            return outcome
        except EntityNotFound as exc:
            # The handler's transaction is rolled back; the verdict is recorded on its own.
            outcome = Outcome(AckStatus.NOT_FOUND, 0, attempt, self._detail(exc))
            try:
                async with self.store.transaction(self.service, event.event_id) as tx:
                    await tx.record(outcome.processed(event))
            except AlreadyRecorded:
                return await self._recorded_elsewhere(self.store, event)
            return outcome
        except AlreadyRecorded:
            return await self._recorded_elsewhere(self.store, event)

    async def _timed(self, spec: HandlerSpec, event: RetentionEvent, ctx: HandlerContext) -> int:
        if self.on_call is not None:
            self.on_call(spec, [event] if spec.batch else event, ctx)
        started = time.perf_counter()
        try:
            conn = ctx.connection if ctx.has_connection else None
            return await self._bounded(spec, spec.call(event, ctx), conn)
        finally:
            self._observe(spec, time.perf_counter() - started, 1)

    async def _bounded(
        self, spec: HandlerSpec, call: Awaitable[T], conn: AsyncConnection | None
    ) -> T:
        """`call`, cancelled past `handler_timeout_s`: a hung handler must not hold its
        partition, or its transaction, forever. The caller's `async with` rolls back.

        The call runs in a task of its own, so a handler that swallows its cancellation
        cannot hold this one: `handler_cancel_grace_s` after the cancellation it is left
        running, `conn` (the transaction it works in) is discarded, and the event fails.
        """
        limit = self.settings.handler_timeout_s
        task = asyncio.ensure_future(call)
        try:
            if await _settled(task, limit):
                if task.cancelled():
                    # Nothing here cancelled it (a stop cancels the waiter, below).
                    raise HandlerCancelled(f"handler {spec.name} raised CancelledError")
                return task.result()  # the handler's own errors, its TimeoutError too
            task.cancel()
            if await _settled(task, self.settings.handler_cancel_grace_s):
                if not task.cancelled():
                    # Ended some other way once cancelled; the attempt timed out all the same.
                    task.exception()
                raise HandlerTimeout(f"handler {spec.name} ran past {limit:g}s")
        except BaseException:
            # Our own cancellation (a stop, a rebalance): the handler's call goes too.
            task.cancel()
            raise
        await self._abandon(spec, task, conn)
        raise HandlerAbandoned(
            f"handler {spec.name} ran past {limit:g}s and ignored its cancellation"
        )

    def _forget(self, task: asyncio.Future[Any]) -> None:
        """An abandoned call ended: nobody awaits its outcome (its error, if any, is the
        one its terminated session gave it)."""
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()

    async def _abandon(
        self, spec: HandlerSpec, task: asyncio.Future[Any], conn: AsyncConnection | None
    ) -> None:
        """Stop waiting for a handler that ignores its cancellation; end its transaction.

        The task is kept referenced until it ends (an unreferenced task may be collected
        mid-run). Its connection's server session is terminated from another connection,
        which rolls the transaction back and ends a statement still running (a closed
        socket alone is noticed by the server only at its next read or write); the
        connection is then invalidated, so nothing reuses it and the batch fails as a
        whole, as after a statement cancelled mid-way.
        """
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        grace = self.settings.handler_cancel_grace_s
        log.error(
            "handler_abandoned",
            service=self.service,
            handler=spec.name,
            timeout_s=self.settings.handler_timeout_s,
            grace_s=grace,
            running=len(self._abandoned),
        )
        self.metrics.abandoned.labels(self.service, spec.entity_type, spec.action.value).inc()
        if conn is None:
            return
        try:
            raw = await conn.get_raw_connection()
            pid = getattr(raw.driver_connection, "get_server_pid", lambda: None)()
            if pid is not None:
                async with asyncio.timeout(grace), conn.engine.connect() as other:
                    await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        except Exception as exc:
            log.error("handler_session_not_terminated", service=self.service, error=error_text(exc))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(grace):
                await conn.invalidate()

    def _observe(self, spec: HandlerSpec, seconds: float, events: int) -> None:
        """One observation per event; a batch call's time is shared evenly by its events."""
        histogram = self.metrics.handler_duration.labels(
            self.service, spec.entity_type, spec.action.value
        )
        observe_many(histogram, seconds / events, events)

    async def _recorded_elsewhere(self, store: IdempotencyStore, event: RetentionEvent) -> Outcome:
        known = (await store.lookup(self.service, [event.event_id]))[event.event_id]
        return self._redelivered(known)

    @staticmethod
    def _redelivered(known: ProcessedEvent) -> Outcome:
        return Outcome(
            known.status,
            known.records_affected,
            1,
            f"redelivered; processed at {known.processed_at.isoformat()}",
            redelivered=True,
        )
