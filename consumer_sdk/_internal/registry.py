"""Handler registration: signature checks at import time, lookup at delivery time."""

from __future__ import annotations

import inspect
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk.context import HandlerContext
from consumer_sdk.exceptions import (
    ConfigurationError,
    DuplicateHandlerError,
    EntityNotFound,
    HandlerSignal,
    PermanentFailure,
    RetryLater,
)
from schemas import EventType, HandledEntity, RetentionEvent

__all__ = ["BatchResult", "Extra", "HandlerRegistry", "HandlerSpec"]

BatchResult = Sequence[int | EntityNotFound] | Mapping[uuid.UUID, int | EntityNotFound]
"""What a batch handler returns per event: records affected, or an `EntityNotFound`
(the event is acked `not_found`). A sequence follows the events' order; a mapping is
keyed by event id and must cover every event."""


class Extra(Enum):
    """What a handler takes after the event."""

    NOTHING = "nothing"
    CONNECTION = "connection"
    CONTEXT = "context"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    entity_type: str
    action: EventType
    func: Callable[..., Awaitable[Any]]
    extra: Extra
    max_attempts: int | None
    throws: tuple[type[BaseException], ...]
    batch: bool = False
    """Takes a sequence of events (`on_delete_batch` / `on_anonymize_batch`)."""

    @property
    def name(self) -> str:
        return getattr(self.func, "__qualname__", repr(self.func))

    def is_retriable(self, exc: BaseException) -> bool:
        """Retry unless the handler or the error itself says it is permanent."""
        if isinstance(exc, RetryLater):
            return True
        if isinstance(exc, (HandlerSignal, ConfigurationError, *self.throws)):
            return False
        # aiokafka-style errors say whether retrying can help; respect it when present.
        retriable = getattr(type(exc), "retriable", None)
        return retriable is not False and isinstance(exc, Exception)

    async def call(self, event: RetentionEvent, context: HandlerContext) -> int:
        """One event; a batch handler gets it as a batch of one, and its `EntityNotFound`
        result for it is raised, as a single-event handler would."""
        if self.batch:
            [result] = await self.call_batch([event], context)
            if isinstance(result, EntityNotFound):
                raise result
            return result
        result = await self._invoke(event, context)
        if not _is_count(result):
            raise PermanentFailure(
                f"handler {self.name} returned {result!r}; it must return the number of "
                "records affected (an int >= 0) or raise"
            )
        return typing.cast(int, result)

    async def call_batch(
        self, events: Sequence[RetentionEvent], context: HandlerContext
    ) -> list[int | EntityNotFound]:
        """A batch handler's results, one per event in `events`' order; a malformed
        result raises `PermanentFailure`."""
        assert self.batch, f"{self.name} is not a batch handler"
        result = await self._invoke(list(events), context)
        if isinstance(result, Mapping):
            wanted = {event.event_id for event in events}
            if set(result) != wanted:
                raise PermanentFailure(
                    f"batch handler {self.name} returned results for {len(set(result))} "
                    f"event ids; it must return one for each of the {len(wanted)} events"
                )
            values = [result[event.event_id] for event in events]
        elif isinstance(result, Sequence) and not isinstance(result, (str, bytes)):
            if len(result) != len(events):
                raise PermanentFailure(
                    f"batch handler {self.name} returned {len(result)} results for "
                    f"{len(events)} events; it must return one per event"
                )
            values = list(result)
        else:
            raise PermanentFailure(
                f"batch handler {self.name} returned {type(result).__name__}; it must return "
                "a sequence (in the events' order) or a mapping by event id"
            )
        for value in values:
            if not (_is_count(value) or isinstance(value, EntityNotFound)):
                raise PermanentFailure(
                    f"batch handler {self.name} returned {value!r} for an event; each result "
                    "must be the number of records affected (an int >= 0) or an EntityNotFound"
                )
        return values

    async def _invoke(self, argument: object, context: HandlerContext) -> Any:
        if self.extra is Extra.CONNECTION:
            return await self.func(argument, context.connection)
        if self.extra is Extra.CONTEXT:
            return await self.func(argument, context)
        return await self.func(argument)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _extra_of(func: Callable[..., Any], where: str, first: str) -> Extra:
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"{where}: handler must be an `async def` function")
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required_rest = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    if required_rest or not 1 <= len(params) <= 2:
        raise ConfigurationError(
            f"{where}: handler must take ({first}) or ({first}, conn: AsyncConnection) or "
            f"({first}, ctx: HandlerContext)"
        )
    if len(params) == 1:
        return Extra.NOTHING
    try:
        hints = typing.get_type_hints(func)
    except NameError as exc:
        raise ConfigurationError(
            f"{where}: cannot resolve the annotation of {params[1].name!r} ({exc}); import "
            "AsyncConnection / HandlerContext at module level, not under TYPE_CHECKING"
        ) from None
    annotation = hints.get(params[1].name)
    if annotation is AsyncConnection:
        return Extra.CONNECTION
    if annotation is HandlerContext:
        return Extra.CONTEXT
    raise ConfigurationError(
        f"{where}: second parameter {params[1].name!r} must be annotated AsyncConnection or "
        f"HandlerContext, not {annotation!r}"
    )


class HandlerRegistry:
    """At most one handler per (entity type, action)."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, EventType], HandlerSpec] = {}
        # Apart from the delete/anonymize handlers: `get` can never hand a verify event
        # to a handler that changes data, and registrations don't list verification.
        self._verifiers: dict[str, HandlerSpec] = {}

    def add(
        self,
        entity_type: str,
        action: EventType,
        func: Callable[..., Awaitable[Any]],
        *,
        max_attempts: int | None,
        throws: Iterable[type[BaseException]],
        database_available: bool,
        batch: bool = False,
    ) -> HandlerSpec:
        decorator = f"on_{action.value}_batch" if batch else f"on_{action.value}"
        where = f"@{decorator}({entity_type!r}) on {getattr(func, '__qualname__', func)}"
        if not entity_type or not entity_type.strip():
            raise ConfigurationError(f"{where}: entity_type must be a non-empty string")
        if action is EventType.VERIFY:
            # A verify event must never reach a handler that may change data.
            raise ConfigurationError(f"{where}: register verification with @app.verify")
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"{where}: max_attempts must be >= 1, not {max_attempts}")
        existing = self._specs.get((entity_type, action))
        if existing is not None:
            raise DuplicateHandlerError(
                f"{where}: {entity_type!r}/{action.value} is already handled by {existing.name}"
            )
        extra = _extra_of(func, where, "events" if batch else "event")
        if extra is Extra.CONNECTION and not database_available:
            raise ConfigurationError(
                f"{where}: the handler takes a connection but the consumer has no database; "
                "pass database_url= (or set RETENTION_SERVICE_DATABASE_URL) or engine="
            )
        throws = tuple(throws)
        if EntityNotFound in throws or RetryLater in throws:
            raise ConfigurationError(f"{where}: throws= cannot hold the SDK's own signals")
        spec = HandlerSpec(entity_type, action, func, extra, max_attempts, throws, batch)
        self._specs[(entity_type, action)] = spec
        return spec

    def add_verifier(
        self,
        entity_type: str,
        func: Callable[..., Awaitable[Any]],
        *,
        database_available: bool,
    ) -> HandlerSpec:
        """`@app.verify(entity_type)`: how many records the service still holds for an
        entity (SPEC §12). Called with a read-only connection, never retried."""
        where = f"@verify({entity_type!r}) on {getattr(func, '__qualname__', func)}"
        if not entity_type or not entity_type.strip():
            raise ConfigurationError(f"{where}: entity_type must be a non-empty string")
        existing = self._verifiers.get(entity_type)
        if existing is not None:
            raise DuplicateHandlerError(
                f"{where}: {entity_type!r}/verify is already handled by {existing.name}"
            )
        extra = _extra_of(func, where, "event")
        if extra is Extra.CONNECTION and not database_available:
            raise ConfigurationError(
                f"{where}: the handler takes a connection but the consumer has no database; "
                "pass database_url= (or set RETENTION_SERVICE_DATABASE_URL) or engine="
            )
        spec = HandlerSpec(entity_type, EventType.VERIFY, func, extra, 1, ())
        self._verifiers[entity_type] = spec
        return spec

    def get(self, entity_type: str, action: EventType) -> HandlerSpec | None:
        """The delete or anonymize handler; None for `verify` (see `verifier`)."""
        return self._specs.get((entity_type, action))

    def verifier(self, entity_type: str) -> HandlerSpec | None:
        return self._verifiers.get(entity_type)

    def verifiers(self) -> list[HandlerSpec]:
        return list(self._verifiers.values())

    def answers_verify(self, entity_type: str) -> bool:
        """Whether a verify event for `entity_type` is this service's to answer: it counts
        the type, or deletes it (and says `unsupported`). Only the acknowledgers of delete
        events are asked; an anonymize-only service was not, and stays silent."""
        return entity_type in self._verifiers or (entity_type, EventType.DELETE) in self._specs

    def __iter__(self) -> typing.Iterator[HandlerSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def handles(self) -> list[HandledEntity]:
        actions: dict[str, list[EventType]] = {}
        for entity_type, action in sorted(self._specs):
            actions.setdefault(entity_type, []).append(action)
        return [HandledEntity(entity_type=t, actions=a) for t, a in actions.items()]

    @property
    def needs_connection(self) -> bool:
        return any(spec.extra is Extra.CONNECTION for spec in self._specs.values())

    @property
    def verifiers_need_connection(self) -> bool:
        return any(spec.extra is Extra.CONNECTION for spec in self._verifiers.values())
