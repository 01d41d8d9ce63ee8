"""Exceptions of the consumer SDK: one root, and a branch for those that steer delivery."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DuplicateHandlerError",
    "EntityNotFound",
    "HandlerAbandoned",
    "HandlerCancelled",
    "HandlerSignal",
    "HandlerTimeout",
    "PermanentFailure",
    "RetentionSDKError",
    "RetryLater",
]


class RetentionSDKError(Exception):
    """Root of every exception the SDK defines."""


class ConfigurationError(RetentionSDKError, ValueError):
    """The app is set up wrongly: a bad handler signature, a missing database, a bad setting."""


class DuplicateHandlerError(ConfigurationError):
    """A second handler for the same entity type and action; raised at import time."""


class HandlerCancelled(RetentionSDKError):
    """Raised by the SDK in place of a `asyncio.CancelledError` a handler raised that the
    SDK did not cause (it awaited something another task cancelled): an error of the
    handler like any other, retried and then `failed`. Let through, it would end the
    partition's worker as if the consumer were stopping, and the partition would stay
    paused, unread, while the consumer runs on."""


class HandlerSignal(RetentionSDKError):
    """Raised by a handler on purpose to tell the SDK how to acknowledge the event."""


class EntityNotFound(HandlerSignal):
    """Nothing to erase: the entity is already gone. Acked `not_found`, which counts as done."""


class RetryLater(HandlerSignal):
    """A transient condition: retry with backoff, up to the handler's `max_attempts`."""


class HandlerTimeout(RetryLater):
    """Raised by the SDK when a handler ran past `handler_timeout_s`: the attempt is
    rolled back and retried like `RetryLater`; after the last one, `failed` and the DLQ."""


class PermanentFailure(HandlerSignal):
    """This event can never succeed: no retries, a `failed` ack and the record to the DLQ."""


class HandlerAbandoned(PermanentFailure):
    """Raised by the SDK when a handler ignored its cancellation (it swallowed
    `asyncio.CancelledError`) for `handler_cancel_grace_s` after its timeout: the SDK stops
    waiting for it, discards its database connection (its transaction rolled back, its
    server session ended) and fails the event at once; the handler is left running."""
