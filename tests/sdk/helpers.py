"""Events and runtimes for SDK tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from consumer_sdk import ConsumerMetrics, ConsumerSettings, InMemoryIdempotencyStore
from consumer_sdk._internal.registry import HandlerRegistry
from consumer_sdk._internal.runtime import Runtime
from consumer_sdk._internal.transport import ConsumerPort, ProducerPort
from consumer_sdk._internal.trust import Trust
from consumer_sdk.idempotency import IdempotencyStore
from schemas import EventType, RetentionEvent, ServiceRegistration, Topics, utc_now


def event(
    entity_id: str = "42",
    *,
    entity_type: str = "user",
    action: EventType = EventType.DELETE,
    event_id: uuid.UUID | None = None,
) -> RetentionEvent:
    now = datetime.now(UTC)
    return RetentionEvent(
        event_id=event_id or uuid.uuid4(),
        type=action,
        entity_type=entity_type,
        entity_id=entity_id,
        policy="test_policy",
        legal_basis="Test",
        initiated_at=now,
        deadline=now + timedelta(days=30),
        fields=["email"] if action is EventType.ANONYMIZE else [],
    )


def user_delete_runtime(
    delete_user: Callable[[RetentionEvent], Awaitable[int]],
    *,
    topics: Topics,
    settings: ConsumerSettings,
    consumer: ConsumerPort,
    producer: ProducerPort,
    store: IdempotencyStore | None = None,
    max_attempts: int | None = None,
) -> Runtime:
    """A runtime of service "svc" whose one handler is `delete_user` (no database, no
    signatures; an in-memory idempotency store unless `store` is given), on the given
    transport fakes."""
    registry = HandlerRegistry()
    registry.add(
        "user",
        EventType.DELETE,
        delete_user,
        max_attempts=max_attempts,
        throws=(),
        database_available=False,
    )
    return Runtime(
        service="svc",
        topics=topics,
        settings=settings,
        registry=registry,
        store=store if store is not None else InMemoryIdempotencyStore(),
        metrics=ConsumerMetrics(),
        registration=ServiceRegistration(
            service="svc", handles=registry.handles(), sdk_version="t", registered_at=utc_now()
        ),
        consumer=consumer,
        producer=producer,
        trust=Trust.off("svc", ConsumerMetrics()),
    )
