"""The one retry helper, and each outage loop's declared policy honoured by it.

Waits are recorded instead of slept (`schemas.retry._pause` is replaced), so each test
checks every wait a loop took against the bounds its `RetryPolicy` allows, and which
errors the loop waited out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import faust
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, UnsupportedVersionError
from sqlalchemy.exc import IntegrityError, InterfaceError, InternalError
from sqlalchemy.ext.asyncio import create_async_engine

from consumer_sdk import ConsumerSettings, RetentionConsumer, RetentionEvent
from consumer_sdk._internal.runtime import Runtime
from consumer_sdk._internal.transport import Partition, Record
from consumer_sdk.faust import attach, faust_app_settings
from coordinator.clock import SystemClock
from coordinator.metrics import Metrics
from coordinator.operations.notify.notifier import Notifier
from coordinator.outbox.relay import BatchResult, OutboxRelay, PublishFailed
from coordinator.purge.scheduler import Schedule, Scheduler
from coordinator.settings import NotifySettings, RelaySettings, TrackerSettings
from coordinator.store import db
from coordinator.tracking.tracker import Cycle, Tracker
from schemas import (
    KafkaSettings,
    RetryPolicy,
    Stopped,
    Topics,
    is_transient,
    retry,
)
from schemas import retries as retry_module
from schemas.retries import is_kafka_transient
from schemas.signing import SignatureMode
from tests.sdk.helpers import user_delete_runtime

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="t.retry")
# Never connected to: each test replaces what would reach the server.
ENGINE_URL = "postgresql://nobody@127.0.0.1:1/none"

DISCONNECT = ConnectionRefusedError(111, "Connect call failed")
BROKER_DOWN = KafkaConnectionError("Unable to bootstrap")


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait `retry` takes, recorded instead of slept; a set stop event still stops."""
    recorded: list[float] = []

    async def pause(stop: asyncio.Event | None, seconds: float) -> None:
        recorded.append(seconds)
        await asyncio.sleep(0)
        if stop is not None and stop.is_set():
            raise Stopped

    monkeypatch.setattr(retry_module, "_pause", pause)
    return recorded


def assert_follows(policy: RetryPolicy, waits: list[float]) -> None:
    assert waits, "no wait was taken"
    for attempt, seconds in enumerate(waits, start=1):
        low, high = policy.wait_s(attempt)
        assert low <= seconds <= high, (attempt, seconds, policy)


def failing(errors: list[BaseException], result: Any = None) -> Callable[..., Awaitable[Any]]:
    """An operation that raises `errors` in turn, then returns `result`."""
    pending = list(errors)

    async def operation(*_: object, **__: object) -> Any:
        if pending:
            raise pending.pop(0)
        return result

    return operation


# --- the helper ------------------------------------------------------------------------


def test_transient_means_unreachable_not_wrong() -> None:
    assert is_transient(DISCONNECT)
    assert is_transient(InterfaceError("SELECT 1", {}, Exception("connection is closed")))
    assert is_transient(BROKER_DOWN)
    assert is_transient(KafkaTimeoutError())
    assert is_transient(TimeoutError())
    wrapped = RuntimeError("publish failed")
    wrapped.__cause__ = BROKER_DOWN
    assert is_transient(wrapped)
    assert is_transient(PublishFailed("none acknowledged"))
    assert not is_transient(UnsupportedVersionError())  # aiokafka: not retriable
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("bad input"))
    assert not is_kafka_transient(DISCONNECT)


async def test_waits_double_from_initial_up_to_max_plus_jitter(waits: list[float]) -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=0.5, jitter_s=0.05)
    result = await retry(failing([DISCONNECT] * 6, "done"), policy=policy, what="t")
    assert result == "done"
    assert len(waits) == 6
    assert_follows(policy, waits)
    assert [round(policy.wait_s(n)[0], 3) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert max(waits) > 0.5  # jitter is added on top of the cap


async def test_without_jitter_the_waits_are_exact(waits: list[float]) -> None:
    policy = RetryPolicy(initial_s=0.25, max_s=1.0)
    await retry(failing([DISCONNECT] * 4), policy=policy, what="t")
    assert waits == [0.25, 0.5, 1.0, 1.0]


async def test_each_attempt_calls_the_operation_once(waits: list[float]) -> None:
    calls: list[int] = []
    inner = failing([DISCONNECT, DISCONNECT], "done")

    async def operation() -> Any:
        calls.append(len(waits))
        return await inner()

    policy = RetryPolicy(initial_s=0.25, max_s=1.0)
    assert await retry(operation, policy=policy, what="t") == "done"
    # The first attempt before any wait, each later one after its wait.
    assert calls == [0, 1, 2]
    assert waits == [0.25, 0.5]
    calls.clear()
    assert await retry(operation, policy=policy, what="t") == "done"
    assert calls == [2]


async def test_a_cancelled_first_attempt_is_cancelled_at_once(waits: list[float]) -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0)
    with pytest.raises(asyncio.CancelledError):
        await retry(failing([asyncio.CancelledError()]), policy=policy, what="t")
    assert waits == []


async def test_errors_not_accepted_are_raised_at_once(waits: list[float]) -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0)
    with pytest.raises(ValueError, match="bug"):
        await retry(failing([ValueError("bug")]), policy=policy, what="t")
    assert waits == []


async def test_a_set_stop_event_ends_the_wait_with_the_last_error_as_cause(
    waits: list[float],
) -> None:
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(Stopped) as caught:
        await retry(
            failing([DISCONNECT] * 3), policy=RetryPolicy(initial_s=1, max_s=1), what="t", stop=stop
        )
    assert caught.value.__cause__ is DISCONNECT
    assert len(waits) == 1


async def test_gives_up_before_a_wait_that_would_pass_the_deadline() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise DISCONNECT

    policy = RetryPolicy(initial_s=0.02, max_s=0.02, give_up_after_s=0.05)
    with pytest.raises(ConnectionRefusedError):
        await retry(down, policy=policy, what="t")
    assert 2 <= calls <= 3


# --- each loop's declared policy -------------------------------------------------------


async def test_db_bookkeeping_waits_out_outages_only(waits: list[float]) -> None:
    assert RetryPolicy(initial_s=0.5, max_s=5.0, give_up_after_s=60.0) == db.RECONNECT
    invalidated = InterfaceError("SELECT 1", {}, Exception("connection is closed"))
    outages = [DISCONNECT, invalidated, TimeoutError(), DISCONNECT, DISCONNECT]
    assert await db.when_reachable(failing(outages, "ok"), what="t") == "ok"
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0]
    waits.clear()
    with pytest.raises(IntegrityError):
        await db.when_reachable(
            failing([IntegrityError("INSERT", {}, Exception("duplicate key"))]), what="t"
        )
    assert waits == []


def _relay(**settings: Any) -> OutboxRelay:
    return OutboxRelay(
        create_async_engine(ENGINE_URL.replace("postgresql", "postgresql+asyncpg")),
        KAFKA,
        settings=RelaySettings(idle_sleep_s=0.01, **settings),
        metrics=Metrics(),
    )


async def test_relay_declares_its_backoff_settings(waits: list[float]) -> None:
    relay = _relay(backoff_initial_s=0.3, backoff_max_s=1.0)
    assert relay.retry_policy == RetryPolicy(initial_s=0.3, max_s=1.0, jitter_s=0.3)
    outages = [BROKER_DOWN, DISCONNECT, PublishFailed("x"), KafkaTimeoutError(), BROKER_DOWN]
    relay.publish_batch = failing(outages, BatchResult())  # type: ignore[method-assign]
    relay.backlog = failing([], 0)  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_forever(stop))
    while len(waits) < len(outages):
        await asyncio.sleep(0.001)
    stop.set()
    await task
    assert len(waits) == len(outages)
    assert_follows(relay.retry_policy, waits)


async def test_relay_drain_waits_out_kafka_but_reports_the_database(waits: list[float]) -> None:
    relay = _relay()
    refused = InternalError("connect", {}, Exception("database is not accepting connections"))
    outages = [BROKER_DOWN, UnsupportedVersionError(), DISCONNECT, refused]
    relay.publish_batch = failing(outages, BatchResult())  # type: ignore[method-assign]
    relay.backlog = failing([], 0)  # type: ignore[method-assign]
    with pytest.raises(InternalError):
        await relay.drain(timeout_s=5)
    assert len(waits) == 3
    assert_follows(relay.retry_policy, waits)


async def test_relay_serving_rides_out_database_errors_but_not_bugs(waits: list[float]) -> None:
    relay = _relay()
    refused = InternalError("connect", {}, Exception("database is not accepting connections"))
    relay.publish_batch = failing([refused, ValueError("a bug")], BatchResult())  # type: ignore[method-assign]
    relay.backlog = failing([], 0)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="a bug"):
        await relay.run_forever(asyncio.Event())
    assert len(waits) == 1


async def test_relay_serving_rides_out_every_transient_error(waits: list[float]) -> None:
    relay = _relay()
    # An outage seen through a wrapper: transient by its cause, as `is_transient` reads it.
    wrapped = RuntimeError("claim failed")
    wrapped.__cause__ = DISCONNECT
    relay.publish_batch = failing([wrapped, ValueError("a bug")], BatchResult())  # type: ignore[method-assign]
    relay.backlog = failing([], 0)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="a bug"):
        await relay.run_forever(asyncio.Event())
    assert len(waits) == 1


async def test_tracker_retries_every_cycle_error_on_its_policy(waits: list[float]) -> None:
    tracker = Tracker(
        create_async_engine(ENGINE_URL.replace("postgresql", "postgresql+asyncpg")),
        KAFKA,
        TrackerSettings(),
        clock=SystemClock(),
        metrics=Metrics(),
        services=[],
        signatures=SignatureMode.OFF,
        signer=None,
    )
    assert tracker.retry_policy == RetryPolicy(initial_s=0.5, max_s=5.0, jitter_s=0.5)
    stop = asyncio.Event()
    errors: list[BaseException] = [BROKER_DOWN, DISCONNECT, ValueError("a bug"), BROKER_DOWN]
    cycles = failing(list(errors))

    async def cycle(**_: object) -> None:
        if not errors:
            stop.set()
        else:
            errors.pop(0)
        await cycles()

    tracker.start = failing([])  # type: ignore[method-assign]
    tracker.stop = failing([])  # type: ignore[method-assign]
    tracker.sync_registry = failing([], 0)  # type: ignore[method-assign]
    tracker._read_acks = cycle  # type: ignore[method-assign]
    tracker.housekeeping = failing([], Cycle())  # type: ignore[method-assign]
    await tracker.run_forever(stop)
    assert len(waits) == 4
    assert_follows(tracker.retry_policy, waits)


async def test_scheduler_retries_a_failed_tick_every_tick(waits: list[float]) -> None:
    scheduler = Scheduler(
        create_async_engine(ENGINE_URL.replace("postgresql", "postgresql+asyncpg")),
        [Schedule("s", "* * * * *")],
        failing([]),
        clock=SystemClock(),
        misfire_grace=timedelta(seconds=1),
        tick_seconds=0.25,
    )
    assert scheduler.retry_policy == RetryPolicy(initial_s=0.25, max_s=0.25)
    stop = asyncio.Event()
    ticks = failing([DISCONNECT, ValueError("a bug"), DISCONNECT])

    async def tick() -> list[object]:
        try:
            return await ticks()  # type: ignore[no-any-return]
        finally:
            if len(waits) == 3:
                stop.set()

    scheduler.tick = tick  # type: ignore[method-assign]
    await scheduler.run_forever(stop)
    assert waits == [0.25, 0.25, 0.25]


async def test_notifier_retries_a_failed_pass_one_interval_later(waits: list[float]) -> None:
    notifier = Notifier(
        create_async_engine(ENGINE_URL.replace("postgresql", "postgresql+asyncpg")),
        [],
        NotifySettings(interval_s=0.25),
        clock=SystemClock(),
        metrics=Metrics(),
    )
    assert notifier.retry_policy == RetryPolicy(initial_s=0.25, max_s=0.25)
    stop = asyncio.Event()
    refused = InternalError("connect", {}, Exception("database is not accepting connections"))
    errors: list[BaseException] = [DISCONNECT, refused, ValueError("a bug"), DISCONNECT]
    passes = failing(errors, (0, 0, 0))
    calls = 0

    async def run_once(_client: object) -> Any:
        nonlocal calls
        calls += 1
        result = await passes()
        stop.set()  # the first pass that succeeds is the last
        return result

    notifier.run_once = run_once  # type: ignore[method-assign]
    await notifier.run_forever(stop)
    assert calls == 5
    assert waits == [0.25, 0.25, 0.25, 0.25]


P0 = Partition("t.retry", 0)


class _Consumer:
    """Fails `poll_failures` polls, then delivers one record once."""

    def __init__(self, poll_failures: list[BaseException]) -> None:
        self.poll_failures = poll_failures
        self.records = [Record("t.retry", 0, 0, b"k", b"{}", ())]
        self.committed: list[Mapping[Partition, int]] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def getmany(self, *, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        await asyncio.sleep(0.001)
        if self.poll_failures:
            raise self.poll_failures.pop(0)
        records, self.records = self.records, []
        return {P0: records} if records else {}

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.committed.append(offsets)

    def assignment(self) -> set[Partition]:
        return {P0}

    def pause(self, partition: Partition) -> None: ...
    def resume(self, partition: Partition) -> None: ...
    def highwater(self, partition: Partition) -> int | None:
        return 1


class _Producer:
    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Any = ()
    ) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _runtime(consumer: _Consumer, settings: ConsumerSettings) -> Runtime:
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    return user_delete_runtime(
        delete_user,
        topics=Topics("t.retry"),
        settings=settings,
        consumer=consumer,
        producer=_Producer(),
    )


async def test_sdk_polls_and_batches_follow_the_outage_policy(
    waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ConsumerSettings(database_url=None, error_backoff_s=0.2, poll_timeout_s=0.01)
    assert settings.outage_policy == RetryPolicy(initial_s=0.2, max_s=1.0, jitter_s=0.05)
    consumer = _Consumer([BROKER_DOWN, ValueError("a bug"), BROKER_DOWN])
    runtime = _runtime(consumer, settings)
    batch_failures = failing([DISCONNECT, DISCONNECT])
    real_process = runtime._process_batch

    async def process(*args: Any) -> None:
        await batch_failures()
        await real_process(*args)

    monkeypatch.setattr(runtime, "_process_batch", process)
    await runtime.start()
    while not consumer.committed:
        await asyncio.sleep(0.001)
    await runtime.stop()
    assert consumer.committed == [{P0: 1}]
    # Three failed polls (one wait each), then the batch failed twice in place.
    assert len(waits) == 5
    assert_follows(settings.outage_policy, waits[:3])
    assert_follows(settings.outage_policy, waits[3:])


async def test_faust_adapter_retries_an_event_in_place_until_stopped(
    waits: list[float],
) -> None:
    retention = RetentionConsumer(
        "idx",
        kafka=KAFKA,
        settings=ConsumerSettings(database_url=None, error_backoff_s=0.1),
    )

    @retention.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    handle = attach(faust.App("retention.idx", **faust_app_settings(KAFKA)), retention)
    opens = failing([BROKER_DOWN, ValueError("a bug"), BROKER_DOWN, BROKER_DOWN])

    async def open_() -> Any:
        if len(waits) == 3:
            handle.stopping.set()
        return await opens()

    handle.open = open_  # type: ignore[method-assign]

    class Message:
        topic, partition, offset, key, value, headers = "t.retry", 0, 7, b"k", b"{}", ()

    assert await handle.handle(Message()) is False
    assert len(waits) == 4
    assert_follows(retention.settings.outage_policy, waits)


async def test_the_deadline_counts_the_first_attempt(waits: list[float]) -> None:
    # A first attempt that took most of `give_up_after_s` leaves no time for a wait.
    calls: list[int] = []

    async def operation() -> Any:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.9)
        raise DISCONNECT

    policy = RetryPolicy(initial_s=0.6, max_s=0.6, jitter_s=0.0, give_up_after_s=1.0)
    with pytest.raises(ConnectionRefusedError):
        await retry(operation, policy=policy, what="t")
    assert waits == []
