"""The library each downstream service embeds to handle retention events (SPEC §5).

app = RetentionConsumer(service="notifications")

@app.on_delete("user")
async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int: ...

@app.on_delete_batch("order")  # set-based: one call per run of events in a batch
async def delete_orders(events: Sequence[RetentionEvent], conn: AsyncConnection) -> list[int]: ...

app.run()
"""

from consumer_sdk._internal.registry import BatchResult
from consumer_sdk.app import SDK_VERSION, RetentionConsumer
from consumer_sdk.context import HandlerContext
from consumer_sdk.exceptions import (
    ConfigurationError,
    DuplicateHandlerError,
    EntityNotFound,
    HandlerAbandoned,
    HandlerCancelled,
    HandlerSignal,
    HandlerTimeout,
    PermanentFailure,
    RetentionSDKError,
    RetryLater,
)
from consumer_sdk.idempotency import (
    BatchingStore,
    BatchTransaction,
    IdempotencyStore,
    InMemoryIdempotencyStore,
    PostgresIdempotencyStore,
    ProcessedEvent,
    StoreTransaction,
)
from consumer_sdk.metrics import ConsumerMetrics
from consumer_sdk.settings import ConsumerSettings
from schemas import AckStatus, EventType, RetentionAck, RetentionEvent
from schemas.dlq import DlqHeader, DlqReason
from schemas.logs import configure_logging

__all__ = [
    "SDK_VERSION",
    "AckStatus",
    "BatchResult",
    "BatchTransaction",
    "BatchingStore",
    "ConfigurationError",
    "ConsumerMetrics",
    "ConsumerSettings",
    "DlqHeader",
    "DlqReason",
    "DuplicateHandlerError",
    "EntityNotFound",
    "EventType",
    "HandlerAbandoned",
    "HandlerCancelled",
    "HandlerContext",
    "HandlerSignal",
    "HandlerTimeout",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "PermanentFailure",
    "PostgresIdempotencyStore",
    "ProcessedEvent",
    "RetentionAck",
    "RetentionConsumer",
    "RetentionEvent",
    "RetentionSDKError",
    "RetryLater",
    "StoreTransaction",
    "configure_logging",
]
