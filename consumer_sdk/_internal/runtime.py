"""The Kafka side: poll, one worker per partition, acks before commits, rebalances, stop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer_sdk._internal.dispatch import Dispatcher
from consumer_sdk._internal.executor import EventExecutor
from consumer_sdk._internal.holds import HoldReader
from consumer_sdk._internal.registry import HandlerRegistry
from consumer_sdk._internal.transport import (
    CommitLost,
    ConsumerPort,
    Partition,
    ProducerPort,
    Record,
)
from consumer_sdk._internal.trust import Trust
from consumer_sdk.idempotency import IdempotencyStore
from consumer_sdk.metrics import ConsumerMetrics
from consumer_sdk.settings import ConsumerSettings
from schemas import ServiceRegistration, Stopped, Topics, encode, error_text, retry
from schemas.collector import fewer_collections
from schemas.retries import any_error

__all__ = ["Runtime"]

log = structlog.get_logger("consumer_sdk")


class _PartitionWorker:
    """Processes one partition's batches in order; the poll loop pauses it while busy."""

    def __init__(self, runtime: Runtime, partition: Partition) -> None:
        self.partition = partition
        self._runtime = runtime
        self._batches: asyncio.Queue[list[Record] | None] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"retention-worker-{partition}")

    def submit(self, records: list[Record]) -> None:
        self._batches.put_nowait(records)

    def request_stop(self) -> None:
        """Finish the record in hand, send the acks, commit, and end."""
        self.stopping.set()
        self._batches.put_nowait(None)

    async def _run(self) -> None:
        while (batch := await self._batches.get()) is not None:
            await self._runtime.process_batch(self.partition, batch, self.stopping)
            if self.stopping.is_set():
                return
            if self._batches.empty():
                self._runtime.consumer.resume(self.partition)


class Runtime:
    def __init__(
        self,
        *,
        service: str,
        topics: Topics,
        settings: ConsumerSettings,
        registry: HandlerRegistry,
        store: IdempotencyStore | None,
        metrics: ConsumerMetrics,
        registration: ServiceRegistration,
        consumer: ConsumerPort,
        producer: ProducerPort,
        trust: Trust,
        engine: AsyncEngine | None = None,
        holds: HoldReader | None = None,
    ) -> None:
        self.service = service
        self.holds = holds
        self.topics = topics
        self.settings = settings
        # Built once: a pydantic model validated per poll and per batch (~3 µs each).
        self._outage = settings.outage_policy
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.registration = registration
        self.consumer = consumer
        self.producer = producer
        self.trust = trust
        self.dispatcher = Dispatcher(
            service=service,
            topics=topics,
            registry=registry,
            store=store,
            metrics=metrics,
            executor=EventExecutor(service, settings, store, metrics),
            producer=producer,
            trust=trust,
            engine=engine,
            holds=holds.table if holds is not None else None,
        )
        self._workers: dict[Partition, _PartitionWorker] = {}
        self._lag: dict[Partition, int] = {}
        self._stopping = asyncio.Event()
        self._rebalancing = False
        self._poll_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        try:
            key, value = self.registration.key.encode(), encode(self.registration)
            delivered = await self.producer.send(
                self.topics.services, value, key=key, headers=self.trust.sign(key, value)
            )
            await delivered
            if self.holds is not None:
                # The whole holds table before the first event (SPEC §11).
                await self.holds.start(timeout_s=self.settings.holds_timeout_s)
                self._update_held_gauge()
            await self.consumer.start()
        except BaseException:
            try:
                if self.holds is not None:
                    await self.holds.stop()
            finally:
                await self.producer.stop()
            raise
        self._poll_task = asyncio.create_task(self._poll(), name="retention-poll")
        log.info(
            "consumer_started",
            service=self.service,
            topic=self.topics.events,
            handles=[h.model_dump(mode="json") for h in self.registration.handles],
        )

    async def wait(self) -> None:
        """Until the poll loop ends (after `stop()`), re-raising if it crashed."""
        if self._poll_task is not None:
            await asyncio.shield(self._poll_task)

    async def stop(self) -> None:
        self._stopping.set()
        try:
            if self._poll_task is not None:
                await self._poll_task
            await self._drain(set(self._workers), self.settings.shutdown_timeout_s)
        finally:
            try:
                await self.consumer.stop()
            finally:
                try:
                    if self.holds is not None:
                        await self.holds.stop()
                finally:
                    await self.producer.stop()
        log.info("consumer_stopped", service=self.service)

    # -- the poll loop -------------------------------------------------------------

    async def _poll(self) -> None:
        settings = self.settings
        while not self._stopping.is_set():
            try:
                batches = await retry(
                    lambda: self.consumer.getmany(
                        timeout_s=settings.poll_timeout_s, max_records=settings.max_batch
                    ),
                    policy=self._outage,
                    what="poll",
                    retry_on=any_error,
                    stop=self._stopping,
                    log_fields={"service": self.service},
                )
            except Stopped:
                return
            if self._rebalancing or self._stopping.is_set():
                # Positions reset to the committed offsets once the rebalance completes.
                continue
            for partition, records in batches.items():
                if not records:
                    continue
                worker = self._workers.get(partition)
                if worker is None:
                    worker = self._workers[partition] = _PartitionWorker(self, partition)
                self.consumer.pause(partition)
                worker.submit(records)

    async def _drain(self, partitions: set[Partition], limit_s: float) -> None:
        workers = [self._workers.pop(p) for p in partitions if p in self._workers]
        for worker in workers:
            worker.request_stop()
            self._lag.pop(worker.partition, None)
        self._update_lag_gauge()
        if not workers:
            return
        done, pending = await asyncio.wait([w.task for w in workers], timeout=limit_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "shutdown_handlers_cancelled",
                then="redelivered",
                service=self.service,
                workers=len(pending),
            )
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("worker_failed", exc_info=task.exception())

    async def on_revoked(self, partitions: set[Partition]) -> None:
        self._rebalancing = True
        await self._drain(partitions, self.settings.shutdown_timeout_s)

    async def on_assigned(self, partitions: set[Partition]) -> None:
        self._rebalancing = False
        log.info(
            "partitions_assigned",
            service=self.service,
            partitions=sorted(p.partition for p in partitions),
        )

    # -- one batch of one partition -------------------------------------------------

    async def process_batch(
        self, partition: Partition, records: Sequence[Record], stopping: asyncio.Event
    ) -> None:
        """Handle records in order, send every ack and DLQ record, await them all, commit.

        The garbage collector's youngest generation is collected less often meanwhile
        (`RETENTION_CONSUMER_GC_THRESHOLD`, schemas/collector.py). A failed batch is
        tried again whole, in place, until it goes through or the partition stops (then
        nothing is committed and the batch is redelivered). Not a rewind: a rewind to the
        committed offset fetched from a broker that is down did not take effect, and the
        next commit then passed events whose acks were lost.
        """
        with suppress(Stopped), fewer_collections(self.settings.gc_threshold):
            await retry(
                lambda: self._process_batch(partition, records, stopping),
                policy=self._outage,
                what="batch",
                retry_on=any_error,
                stop=stopping,
                log_fields={
                    "service": self.service,
                    "partition": partition.partition,
                    "offset": records[0].offset,
                },
            )

    async def _process_batch(
        self, partition: Partition, records: Sequence[Record], stopping: asyncio.Event
    ) -> None:
        if self.holds is not None:
            # Every hold published before this batch began is in the table; a failure
            # here retries the batch, never handles it without the holds.
            await self.holds.catch_up()
            self._update_held_gauge()
        done = await self.dispatcher.dispatch(records, stopping)
        if done.sends:
            await asyncio.gather(*done.sends)
        if done.last_done is None:
            return
        try:
            await self.consumer.commit({partition: done.last_done + 1})
        except CommitLost as exc:
            log.warning(
                "commit_lost_to_rebalance",
                then="redelivered",
                service=self.service,
                partition=partition.partition,
                error=error_text(exc),
            )
            return
        highwater = self.consumer.highwater(partition)
        if highwater is not None:
            self._lag[partition] = max(highwater - (done.last_done + 1), 0)
            self._update_lag_gauge()

    def _update_held_gauge(self) -> None:
        if self.holds is not None:
            self.metrics.held.labels(self.service).set(len(self.holds.table))

    def _update_lag_gauge(self) -> None:
        self.metrics.lag.labels(self.service).set(sum(self._lag.values()))
