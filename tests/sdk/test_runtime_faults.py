"""The runtime with in-memory transport fakes: its commit rule under a failing acks
producer (an offset is committed only once its ack is written, nothing is lost or
re-applied), a database outage, handlers that raise or swallow cancellation, and another
replica recording an event first."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from consumer_sdk import ConsumerSettings, InMemoryIdempotencyStore, RetentionEvent
from consumer_sdk._internal.runtime import Runtime
from consumer_sdk._internal.transport import Partition, Record
from consumer_sdk.idempotency import ProcessedEvent
from schemas import (
    AckStatus,
    RetentionAck,
    Topics,
    decode,
    encode,
    utc_now,
)
from tests.sdk.helpers import event, user_delete_runtime

TOPICS = Topics("fake.retention")
P0 = Partition(TOPICS.events, 0)


class FakeConsumer:
    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.position = 0
        self.committed: list[int] = []
        self.paused: set[Partition] = set()

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def getmany(self, *, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        await asyncio.sleep(0.01)
        if P0 in self.paused or self.position >= len(self.records):
            return {}
        batch = self.records[self.position : self.position + max_records]
        self.position += len(batch)
        return {P0: batch}

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.committed.append(offsets[P0])

    def assignment(self) -> set[Partition]:
        return {P0}

    def pause(self, partition: Partition) -> None:
        self.paused.add(partition)

    def resume(self, partition: Partition) -> None:
        self.paused.discard(partition)

    def highwater(self, partition: Partition) -> int | None:
        return len(self.records)


class FlakyProducer:
    """Fails the delivery of the first `failures` acks, as a broker outage would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delivered: list[tuple[str, bytes]] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Awaitable[Any]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if topic == TOPICS.acks and self.failures > 0:
            self.failures -= 1
            future.set_exception(ConnectionError("broker unavailable"))
        else:
            self.delivered.append((topic, value))
            future.set_result(None)
        return future

    async def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        *,
        headers: Sequence[Sequence[tuple[str, bytes]]] | None = None,
    ) -> Awaitable[Any]:
        return asyncio.gather(*[await self.send(topic, v, key=k) for k, v in records])


async def test_failed_ack_delivery_means_no_commit_then_redelivery_without_reapplying() -> None:
    events = [event(f"f{i}") for i in range(5)]
    records = [
        Record(TOPICS.events, 0, offset, e.key.encode(), encode(e), ())
        for offset, e in enumerate(events)
    ]
    consumer, producer = FakeConsumer(records), FlakyProducer(failures=1)
    calls: list[str] = []

    async def delete_user(event: RetentionEvent) -> int:
        calls.append(event.entity_id)
        return 1

    runtime = user_delete_runtime(
        delete_user,
        topics=TOPICS,
        settings=ConsumerSettings(
            database_url=None, max_batch=5, error_backoff_s=0.01, poll_timeout_s=0.01
        ),
        consumer=consumer,
        producer=producer,
    )
    await runtime.start()
    for _ in range(200):
        if consumer.committed == [5]:
            break
        await asyncio.sleep(0.01)
    await runtime.stop()

    # The first batch's ack failed: nothing was committed for it; the re-read re-acked all.
    assert consumer.committed == [5]
    assert calls == [e.entity_id for e in events]
    acks = [v for t, v in producer.delivered if t == TOPICS.acks]
    assert len(acks) == 4 + 5  # four delivered the first time, all five again
    assert sum(1 for t, _ in producer.delivered if t == TOPICS.services) == 1


class OutageStore(InMemoryIdempotencyStore):
    """An in-memory store whose "database" answers only from probe `outage_probes + 1` on."""

    def __init__(self, outage_probes: int) -> None:
        super().__init__()
        self.outage_probes = outage_probes
        self.probes = 0

    async def reachable(self) -> bool:
        self.probes += 1
        return self.probes > self.outage_probes


async def _run(store: OutageStore, failing: Callable[[], bool]) -> tuple[list[Any], list[int]]:
    """One event whose handler raises a disconnect while `failing()`; its acks and commits."""
    records = [Record(TOPICS.events, 0, 0, b"u1", encode(event("u1")), ())]
    consumer, producer = FakeConsumer(records), FlakyProducer(failures=0)

    async def delete_user(event: RetentionEvent) -> int:
        if failing():
            raise ConnectionRefusedError(111, "Connect call failed")
        return 1

    runtime = user_delete_runtime(
        delete_user,
        topics=TOPICS,
        settings=ConsumerSettings(
            database_url=None,
            error_backoff_s=0.01,
            poll_timeout_s=0.01,
            retry_initial_s=0.0,
            retry_jitter_s=0.0,
        ),
        consumer=consumer,
        producer=producer,
        store=store,
        max_attempts=2,
    )
    await runtime.start()
    for _ in range(300):
        if consumer.committed:
            break
        await asyncio.sleep(0.01)
    await runtime.stop()
    acks = [decode(RetentionAck, v) for t, v in producer.delivered if t == TOPICS.acks]
    return acks, consumer.committed


async def test_attempts_ending_on_an_unreachable_database_are_read_again_not_failed() -> None:
    # Down for two rounds of attempts (two probes say so), then back.
    store = OutageStore(outage_probes=2)
    acks, committed = await _run(store, lambda: store.probes < store.outage_probes)
    assert [a.status for a in acks] == [AckStatus.COMPLETED]
    assert committed == [1]
    assert store.probes == 2


async def test_a_disconnect_while_the_database_answers_is_the_handlers_failure() -> None:
    store = OutageStore(outage_probes=0)
    acks, committed = await _run(store, lambda: True)
    assert [a.status for a in acks] == [AckStatus.FAILED]
    assert committed == [1]
    assert store.probes == 1


async def test_batches_collect_garbage_less_often_and_leave_the_collector_as_found() -> None:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    records = [
        Record(TOPICS.events, 0, offset, e.key.encode(), encode(e), ())
        for offset, e in enumerate(event(f"g{i}") for i in range(3))
    ]
    consumer, producer = FakeConsumer(records), FlakyProducer(failures=0)
    seen: list[tuple[int, int, int]] = []

    async def delete_user(event: RetentionEvent) -> int:
        seen.append(gc.get_threshold())
        return 1

    runtime = user_delete_runtime(
        delete_user,
        topics=TOPICS,
        settings=ConsumerSettings(database_url=None, poll_timeout_s=0.01, gc_threshold=12_345),
        consumer=consumer,
        producer=producer,
    )
    try:
        await runtime.start()
        for _ in range(200):
            if consumer.committed and consumer.committed[-1] == 3:
                break
            await asyncio.sleep(0.01)
        await runtime.stop()
        after = gc.get_threshold()
    finally:
        gc.set_threshold(*before)
    assert seen == [(12_345, 10, 10)] * 3
    assert after == (700, 10, 10)


async def _delete_three(
    delete_user: Callable[[RetentionEvent], Awaitable[int]], **settings: Any
) -> tuple[FakeConsumer, FlakyProducer, Runtime]:
    """A runtime on three events u0..u2, started; stopped by the caller."""
    records = [
        Record(TOPICS.events, 0, offset, f"u{offset}".encode(), encode(event(f"u{offset}")), ())
        for offset in range(3)
    ]
    consumer, producer = FakeConsumer(records), FlakyProducer(failures=0)
    runtime = user_delete_runtime(
        delete_user,
        topics=TOPICS,
        settings=ConsumerSettings(
            database_url=None,
            poll_timeout_s=0.01,
            retry_initial_s=0.0,
            retry_jitter_s=0.0,
            **settings,
        ),
        consumer=consumer,
        producer=producer,
        max_attempts=2,
    )
    await runtime.start()
    return consumer, producer, runtime


async def test_a_handler_raising_cancelled_error_fails_its_event_and_the_partition_goes_on() -> (
    None
):
    """A CancelledError the SDK did not cause (the handler awaited something another task
    cancelled) is the handler's error: without that, it ended the partition's worker as a
    stop would, and the partition stayed paused while the consumer ran on."""

    async def delete_user(event: RetentionEvent) -> int:
        if event.entity_id == "u1":
            raise asyncio.CancelledError
        return 1

    consumer, producer, runtime = await _delete_three(delete_user)
    for _ in range(200):
        if consumer.committed and consumer.committed[-1] == 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(runtime.stop(), 5)
    acks = [decode(RetentionAck, v) for t, v in producer.delivered if t == TOPICS.acks]
    assert [(a.entity_id, a.status, a.detail) for a in acks] == [
        ("u0", AckStatus.COMPLETED, ""),
        ("u1", AckStatus.FAILED, "HandlerCancelled"),
        ("u2", AckStatus.COMPLETED, ""),
    ]
    assert consumer.committed[-1] == 3


async def test_a_handler_swallowing_cancellation_at_a_stop_neither_holds_it_nor_is_acked() -> None:
    started = asyncio.Event()

    async def delete_user(event: RetentionEvent) -> int:
        if event.entity_id != "u1":
            return 1
        started.set()
        for _ in range(100):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
        return 1

    consumer, producer, runtime = await _delete_three(delete_user, shutdown_timeout_s=0.2)
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    await asyncio.wait_for(runtime.stop(), 5)
    assert time.monotonic() - began < 2
    # One batch of the three: u1 never ended, so nothing of it is acked or committed
    # (redelivered); the handler is left running.
    assert [t for t, _ in producer.delivered if t == TOPICS.acks] == []
    assert consumer.committed == []


class RacedStore(InMemoryIdempotencyStore):
    """Another replica records every event just after the runtime's lookup missed it."""

    async def lookup(
        self, service: str, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        ids = list(event_ids)
        found = await super().lookup(service, ids)
        for event_id in ids:
            self.processed.setdefault(
                (service, event_id), ProcessedEvent(event_id, AckStatus.COMPLETED, 7, utc_now())
            )
        return found


async def test_an_event_another_replica_recorded_first_is_acked_with_its_outcome() -> None:
    records = [Record(TOPICS.events, 0, 0, b"u1", encode(event("u1")), ())]
    consumer, producer = FakeConsumer(records), FlakyProducer(failures=0)

    async def delete_user(event: RetentionEvent) -> int:
        return 1

    runtime = user_delete_runtime(
        delete_user,
        topics=TOPICS,
        settings=ConsumerSettings(database_url=None, poll_timeout_s=0.01),
        consumer=consumer,
        producer=producer,
        store=RacedStore(),
    )
    await runtime.start()
    for _ in range(200):
        if consumer.committed:
            break
        await asyncio.sleep(0.01)
    await runtime.stop()
    [ack] = [decode(RetentionAck, v) for t, v in producer.delivered if t == TOPICS.acks]
    assert (ack.status, ack.records_affected) == (AckStatus.COMPLETED, 7)
    assert ack.detail.startswith("redelivered; processed at ")
    assert consumer.committed == [1]
