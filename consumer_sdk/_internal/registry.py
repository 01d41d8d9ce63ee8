"""Handler registration: signature checks at import time, lookup at delivery time."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
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

__all__ = ["Extra", "HandlerRegistry", "HandlerSpec"]


class Extra(Enum):
    """What a handler takes after the event."""

    NOTHING = "nothing"
    CONNECTION = "connection"
    CONTEXT = "context"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    entity_type: str
    action: EventType
    func: Callable[..., Awaitable[int]]
    extra: Extra
    max_attempts: int | None
    throws: tuple[type[BaseException], ...]

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
        if self.extra is Extra.CONNECTION:
            result = await self.func(event, context.connection)
        elif self.extra is Extra.CONTEXT:
            result = await self.func(event, context)
        else:
            result = await self.func(event)
        if isinstance(result, bool) or not isinstance(result, int) or result < 0:
            raise PermanentFailure(
                f"handler {self.name} returned {result!r}; it must return the number of "
                "records affected (an int >= 0) or raise"
            )
        return result


def _extra_of(func: Callable[..., Any], where: str) -> Extra:
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
            f"{where}: handler must take (event) or (event, conn: AsyncConnection) or "
            "(event, ctx: HandlerContext)"
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

    def add(
        self,
        entity_type: str,
        action: EventType,
        func: Callable[..., Awaitable[int]],
        *,
        max_attempts: int | None,
        throws: Iterable[type[BaseException]],
        database_available: bool,
    ) -> HandlerSpec:
        where = f"@on_{action.value}({entity_type!r}) on {getattr(func, '__qualname__', func)}"
        if not entity_type or not entity_type.strip():
            raise ConfigurationError(f"{where}: entity_type must be a non-empty string")
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"{where}: max_attempts must be >= 1, not {max_attempts}")
        existing = self._specs.get((entity_type, action))
        if existing is not None:
            raise DuplicateHandlerError(
                f"{where}: {entity_type!r}/{action.value} is already handled by {existing.name}"
            )
        extra = _extra_of(func, where)
        if extra is Extra.CONNECTION and not database_available:
            raise ConfigurationError(
                f"{where}: the handler takes a connection but the consumer has no database; "
                "pass database_url= (or set RETENTION_SERVICE_DATABASE_URL) or engine="
            )
        throws = tuple(throws)
        if EntityNotFound in throws or RetryLater in throws:
            raise ConfigurationError(f"{where}: throws= cannot hold the SDK's own signals")
        spec = HandlerSpec(entity_type, action, func, extra, max_attempts, throws)
        self._specs[(entity_type, action)] = spec
        return spec

    def get(self, entity_type: str, action: EventType) -> HandlerSpec | None:
        return self._specs.get((entity_type, action))

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
