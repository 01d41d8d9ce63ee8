"""Waking the relay when a writer commits an outbox batch: PostgreSQL LISTEN/NOTIFY.

The transaction that appends a batch (coordinator/outbox/write.py) runs
`pg_notify(CHANNEL, '')`; PostgreSQL delivers it when that transaction commits, once per
transaction however many batches it wrote, and never for one rolled back. The relay
listens on a connection of its own, outside the engine's pool (a pooled connection goes
back to the pool, and a LISTEN with it), and waits for a notification, its stop event or
its idle timeout, whichever comes first.

Polling stays the backstop: a notification can be lost (the listening connection died
between the commit and the delivery, or the server restarted), and then the idle timeout
finds the batch, as it did before notifications. While the listening connection is down
the relay polls; a task opens it again with backoff, and says once per outage that it
is down and once that it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import structlog

from schemas.errors import error_text

__all__ = ["CHANNEL", "Wakeup"]

CHANNEL = "retention_outbox"
"""Notified (empty payload) by every transaction that appends an outbox batch."""

MIN_GAP_S = 0.05
"""Least time between two wake-ups by notification. Anyone who can connect may NOTIFY
the channel: a flood of them paces the relay at the rate it once polled at, no faster."""

log = structlog.get_logger(__name__)


class Wakeup:
    """Waits between relay rounds: until a notification, `stop`, or the idle timeout.

    With no `connect`, it only waits for `stop` or the timeout (polling). Use as
    `async with Wakeup(...) as wakeup`: the listener runs inside the block.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]] | None = None,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._connect = connect
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._notified = asyncio.Event()
        self._woken = -MIN_GAP_S
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Wakeup:
        if self._connect is not None:
            self._task = asyncio.create_task(self._listen_forever(self._connect))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # The listener's own cancellation ends here; one aimed at the task
                # closing it (while the listener closes its connection) goes on.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    def clear(self) -> None:
        """Forget earlier notifications: call before a round reads the outbox, so those
        that arrive while it runs (commits it may not see) wake the next wait."""
        self._notified.clear()

    async def wait(self, stop: asyncio.Event, timeout_s: float) -> None:
        """Return at the first of: a notification since `clear` (no sooner than
        `MIN_GAP_S` after the last wake-up by one), `stop`, `timeout_s`."""
        if not (self._notified.is_set() or stop.is_set()):
            waiters = [
                asyncio.ensure_future(self._notified.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if self._notified.is_set() and not stop.is_set():
            rest = self._woken + MIN_GAP_S - time.monotonic()
            if rest > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rest)
            self._woken = time.monotonic()

    def _on_notification(self, *_: object) -> None:
        self._notified.set()

    async def _open(self, connect: Callable[[], Awaitable[Any]]) -> tuple[Any, asyncio.Event]:
        """A connection listening on CHANNEL, and the event its closing sets."""
        conn = await connect()
        closed = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: closed.set())
            await conn.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        return conn, closed

    async def _listen_forever(self, connect: Callable[[], Awaitable[Any]]) -> None:
        delay, outage = self._backoff_initial_s, False
        while True:
            try:
                conn, closed = await self._open(connect)
            except Exception as exc:
                if not outage:
                    # The error's type and SQLSTATE only: its text may name the server.
                    log.warning("relay_listener_down", error=error_text(exc), polling=True)
                    outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)
                continue
            if outage:
                log.info("relay_listener_restored")
                outage = False
            opened = time.monotonic()
            # What committed while nobody listened was announced to no one: look now.
            self._notified.set()
            try:
                await closed.wait()
            except asyncio.CancelledError:
                with suppress(Exception):
                    await conn.close(timeout=1.0)
                raise
            log.warning("relay_listener_down", error="connection closed", polling=True)
            outage = True
            self._notified.set()
            # The backoff starts over only after a connection that lasted: one closed
            # as soon as opened (a pooler, a server refusing LISTEN) is not reopened in
            # a tight loop.
            if time.monotonic() - opened >= self._backoff_max_s:
                delay = self._backoff_initial_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)
