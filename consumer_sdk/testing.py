"""Drive a consumer's handlers in memory, without Kafka: the acks they would send, the
records that would go to the DLQ, and a `.mock` per handler recording its calls.

    async with TestConsumer(app) as t:
        acks = await t.deliver(event)
        assert acks[0].status == "completed"
        delete_user.mock.assert_called_once_with(event)

Handlers that take a connection get a real transaction on the app's database; the
idempotency store is in memory (`t.store`), so a second `deliver` of the same event
is acked again without calling the handler — as in production.

`deliver` hands events over one at a time (a batch handler gets batches of one);
`deliver_batch` hands them over as one fetched partition batch, through the same
dispatcher as the Kafka runtime (one transaction, batch handlers called set-based).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from unittest.mock import MagicMock

from sqlalchemy.ext.asyncio import AsyncEngine

from consumer_sdk._internal.dispatch import Dispatcher, dlq_headers
from consumer_sdk._internal.executor import EventExecutor
from consumer_sdk._internal.registry import HandlerSpec
from consumer_sdk._internal.transport import Record
from consumer_sdk._internal.trust import Trust
from consumer_sdk.app import RetentionConsumer
from consumer_sdk.context import HandlerContext
from consumer_sdk.idempotency import IdempotencyStore, InMemoryIdempotencyStore
from schemas import (
    AckStatus,
    EventType,
    PoisonRecord,
    RetentionAck,
    RetentionEvent,
    decode,
    encode,
)
from schemas.dlq import DlqHeader, DlqReason

_Headers = Sequence[tuple[str, bytes]]

__all__ = ["DeadLetter", "TestConsumer"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that would have gone to the DLQ."""

    key: bytes | None
    value: bytes
    headers: Mapping[str, str]

    @property
    def reason(self) -> DlqReason:
        return DlqReason(self.headers[DlqHeader.REASON])

    @property
    def error(self) -> str:
        return self.headers[DlqHeader.ERROR]


class TestConsumer:
    """An in-memory stand-in for the Kafka side of `app`.

    Args:
        app: The consumer whose handlers to drive.
        store: Idempotency store; default in memory (with the app's database, if any,
            for handlers' connections).
        instant_retries: Skip backoff waits so retry tests take no time.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        app: RetentionConsumer,
        *,
        store: IdempotencyStore | None = None,
        instant_retries: bool = True,
    ) -> None:
        self.app = app
        self._store_choice = store
        self._instant = instant_retries
        self._stack = AsyncExitStack()
        self._executor: EventExecutor | None = None
        self._mocks: dict[Callable[..., Any], MagicMock] = {}
        self._offset = 0
        self.store: IdempotencyStore | None = None
        self.engine: AsyncEngine | None = None
        self.acks: list[RetentionAck] = []
        self.dead_letters: list[DeadLetter] = []
        self.skipped: list[RetentionEvent] = []

    async def __aenter__(self) -> Self:
        def choose(engine: AsyncEngine | None) -> IdempotencyStore:
            return self._store_choice or InMemoryIdempotencyStore(engine)

        resources = await self._stack.enter_async_context(self.app.resources(store_factory=choose))
        self.store, self.engine = resources.store, resources.engine
        settings = self.app.settings
        if self._instant:
            settings = settings.model_copy(
                update={"retry_initial_s": 0.0, "retry_max_s": 0.0, "retry_jitter_s": 0.0}
            )
        for spec in [*self.app.handlers, *self.app.handlers.verifiers()]:
            mock = MagicMock(name=spec.name)
            self._mocks[spec.func] = mock
            # Attribute access for people (`delete_user.mock`); `t.mock(delete_user)` for mypy.
            spec.func.mock = mock
            self._stack.callback(_detach_mock, spec.func)
        self._executor = EventExecutor(
            self.app.service, settings, self.store, self.app.metrics, on_call=self._record_call
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._executor = None
        await self._stack.aclose()

    def mock(self, handler: Callable[..., Any]) -> MagicMock:
        """The mock recording calls of a registered handler: `mock(event)` per attempt
        (a batch handler: `mock(events)` per call, a list)."""
        try:
            return self._mocks[handler]
        except KeyError:
            raise KeyError(f"{handler!r} is not a handler registered on this app") from None

    async def deliver(self, *events: RetentionEvent) -> list[RetentionAck]:
        """Deliver events in order as the real consumer would; return the acks it would send."""
        acks: list[RetentionAck] = []
        for event in events:
            acks.extend(await self._deliver(encode(event), event.key.encode()))
        return acks

    async def deliver_batch(self, *events: RetentionEvent) -> list[RetentionAck]:
        """Deliver events as one partition batch, as the real consumer fetches them; return
        the acks it would send, in order. A batch handler's mock gets each call's list."""
        if self._executor is None:
            raise RuntimeError("use TestConsumer as `async with TestConsumer(app) as t:`")
        topics = self.app.kafka.topics
        records = []
        for event in events:
            records.append(
                Record(topics.events, 0, self._offset, event.key.encode(), encode(event), ())
            )
            self._offset += 1
        sent = _Sent()
        dispatcher = Dispatcher(
            service=self.app.service,
            topics=topics,
            registry=self.app.handlers,
            store=self.store,
            metrics=self.app.metrics,
            executor=self._executor,
            producer=sent,
            # In memory nothing crosses a broker: signatures have nothing to protect.
            trust=Trust.off(self.app.service, self.app.metrics),
            engine=self.engine,
        )
        await dispatcher.dispatch(records)
        acks = [
            decode(RetentionAck, value)
            for topic, _, value, _ in sent.records
            if topic == topics.acks
        ]
        self.acks.extend(acks)
        self.dead_letters.extend(
            DeadLetter(key, value, {k: v.decode("utf-8", "replace") for k, v in headers})
            for topic, key, value, headers in sent.records
            if topic == topics.dlq
        )
        self.skipped.extend(
            event
            for event in events
            if self.app.handlers.get(event.entity_type, event.type) is None
        )
        return acks

    async def deliver_raw(
        self, value: bytes | None, *, key: bytes | None = None
    ) -> list[RetentionAck]:
        """Deliver raw bytes (to test what happens to poison records)."""
        return await self._deliver(value, key)

    async def _deliver(self, value: bytes | None, key: bytes | None) -> list[RetentionAck]:
        if self._executor is None:
            raise RuntimeError("use TestConsumer as `async with TestConsumer(app) as t:`")
        record = Record(self.app.kafka.topics.events, 0, self._offset, key, value, ())
        self._offset += 1
        try:
            event = decode(RetentionEvent, value)
        except PoisonRecord as poison:
            self._dead_letter(record, DlqReason.POISON, poison.reason, 0)
            return []
        if event.type is EventType.VERIFY:
            # Answered by the dispatcher alone (no handler of the event's type runs).
            return await self.deliver_batch(event)
        spec: HandlerSpec | None = self.app.handlers.get(event.entity_type, event.type)
        if spec is None:
            self.skipped.append(event)
            return []
        known = None
        if self.store is not None:
            known = (await self.store.lookup(self.app.service, [event.event_id])).get(
                event.event_id
            )
        outcome = await self._executor.execute(event, spec, known)
        ack = outcome.ack(self.app.service, event)
        self.acks.append(ack)
        if ack.status is AckStatus.FAILED:
            self._dead_letter(record, DlqReason.FAILED, outcome.detail, outcome.attempts)
        return [ack]

    def _dead_letter(self, record: Record, reason: DlqReason, error: str, attempts: int) -> None:
        headers = dlq_headers(
            record, service=self.app.service, reason=reason, error=error, attempts=attempts
        )
        self.dead_letters.append(
            DeadLetter(
                record.key,
                record.value or b"",
                {k: v.decode("utf-8", "replace") for k, v in headers},
            )
        )

    def _record_call(self, spec: HandlerSpec, argument: object, ctx: HandlerContext) -> None:
        self._mocks[spec.func](argument)


class _Sent:
    """A producer that keeps what would have been sent."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, _Headers]] = []

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: _Headers = ()
    ) -> Awaitable[None]:
        self.records.append((topic, key, value, headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_many(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        *,
        headers: Sequence[Sequence[tuple[str, bytes]]] | None = None,
    ) -> Awaitable[None]:
        for index, (key, value) in enumerate(records):
            await self.send(
                topic, value, key=key, headers=headers[index] if headers is not None else ()
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _detach_mock(func: Callable[..., Any]) -> None:
    if hasattr(func, "mock"):
        del func.mock
