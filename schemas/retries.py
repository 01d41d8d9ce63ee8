"""The one retry helper: every outage loop declares a `RetryPolicy` and goes through `retry`.

A loop states how long to wait (`RetryPolicy`: initial, max, jitter, all in seconds) and
which errors to wait out (`retry_on`, by default `is_transient`). `retry` runs the
operation on tenacity until it succeeds, raises something not worth retrying, runs past
the policy's `give_up_after_s`, or the caller's stop event is set during a wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import structlog
from aiokafka.errors import KafkaError, KafkaTimeoutError
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from schemas.database import is_disconnect
from schemas.errors import error_text

__all__ = [
    "RetryPolicy",
    "Stopped",
    "any_error",
    "is_kafka_transient",
    "is_transient",
    "retry",
]

log = structlog.get_logger("retention.retry")

T = TypeVar("T")


class RetryPolicy(BaseModel):
    """How long an outage loop waits between attempts: `initial_s`, doubling up to `max_s`,
    plus up to `jitter_s` at random, so replicas that failed together do not retry together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_s: float = Field(gt=0, description="Wait after the first failure.")
    max_s: float = Field(gt=0, description="Longest wait, before jitter.")
    jitter_s: float = Field(default=0.0, ge=0, description="Random extra, up to this much.")
    give_up_after_s: float | None = Field(
        default=None, gt=0, description="Stop retrying after this long; None: until stopped."
    )

    def wait_s(self, attempt: int) -> tuple[float, float]:
        """The shortest and longest wait after failed attempt number `attempt` (from 1)."""
        base = min(self.max_s, self.initial_s * 2 ** min(attempt - 1, 64))
        return base, base + self.jitter_s


class Stopped(Exception):
    """The caller's stop event was set while waiting to retry; the last error is its cause."""


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__
    return chain


def is_kafka_transient(exc: BaseException) -> bool:
    """An aiokafka error (or one it wraps) that aiokafka marks `retriable`, or a timeout.

    aiokafka does not mark its own request timeout retriable; a broker that does not
    answer in time is an outage like any other, as is one of our own `asyncio.timeout`
    bounds on a Kafka await.
    """
    return any(
        isinstance(e, TimeoutError | KafkaTimeoutError)
        or (isinstance(e, KafkaError) and bool(e.retriable))
        for e in _causes(exc)
    )


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` means a server was unreachable (database or Kafka), so the same work
    may succeed later, rather than that the work itself was wrong."""
    return is_disconnect(exc) or is_kafka_transient(exc)


def any_error(exc: BaseException) -> bool:
    """`retry_on` for loops that must never die: every `Exception` is retried (a
    non-transient one is logged with its traceback, as the bug it is)."""
    return isinstance(exc, Exception)


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    """Wait `seconds`, or raise `Stopped` as soon as `stop` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    if stop.is_set():
        raise Stopped
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return
    raise Stopped


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    what: str,
    retry_on: Callable[[BaseException], bool] = is_transient,
    stop: asyncio.Event | None = None,
    log_fields: Mapping[str, object] | None = None,
) -> T:
    """`await operation()`, again after a wait while it raises what `retry_on` accepts.

    Raises:
        Stopped: `stop` was set before or during a wait (the last error is the cause).
        Exception: the operation's error, if `retry_on` rejects it or the policy gave up.
    """

    def log_failure(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        fields = {"what": what, "wait_s": round(wait_s, 3), **(log_fields or {})}
        if exc is None or is_transient(exc):
            # Outages are expected: one line each, not a traceback per retry.
            log.warning("retry_scheduled", error=error_text(exc) if exc else None, **fields)
        else:
            log.error("retry_scheduled", exc_info=exc, **fields)

    last_error: list[BaseException] = []

    def accept(exc: BaseException) -> bool:
        last_error[:] = [exc]
        return retry_on(exc)

    # The usual case, an operation that works the first time, without tenacity's
    # machinery (about 0.1 ms a call, once per poll and per batch of a service): a first
    # failure is handed to it below as its own first attempt, so the waits, the log lines
    # and what is raised are the same as when tenacity made that attempt itself.
    started = time.monotonic()
    try:
        return await operation()
    except BaseException as exc:  # tenacity judges it below, as it would have
        first: list[BaseException] = [exc]
    # tenacity's clock starts below: the deadline is what the first attempt left of it.
    spent = time.monotonic() - started

    # Named coroutine functions: tenacity awaits only what `iscoroutinefunction` admits.
    async def attempt() -> T:
        if first:
            raise first.pop()
        return await operation()

    async def pause(seconds: float) -> None:
        await _pause(stop, seconds)

    retrying = AsyncRetrying(
        wait=wait_exponential(multiplier=policy.initial_s, max=policy.max_s)
        + wait_random(0, policy.jitter_s),
        # Gives up before a wait that would end past the deadline, not after it.
        stop=stop_never
        if policy.give_up_after_s is None
        else stop_before_delay(max(0.0, policy.give_up_after_s - spent)),
        retry=retry_if_exception(accept),
        sleep=pause,
        before_sleep=log_failure,
        reraise=True,
    )
    try:
        return await retrying(attempt)
    except Stopped:
        raise Stopped(what) from (last_error[0] if last_error else None)
