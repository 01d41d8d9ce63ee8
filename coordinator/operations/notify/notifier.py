"""The notify loop `retention serve` runs when `RETENTION_WEBHOOKS_FILE` is set: sweep what
is new into the outbox, then post what is due. Every replica may run it: the sweep's keys
and the deliverer's row locks keep them from doubling anything."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import Clock
from coordinator.metrics import Metrics
from coordinator.operations.notify.delivery import Backoff, deliver_due, oldest_pending
from coordinator.operations.notify.sweep import SignatureAlarm, sweep
from coordinator.operations.notify.webhooks import Webhook
from coordinator.settings import NotifySettings
from schemas import RetryPolicy, Stopped, retry
from schemas.retries import any_error

__all__ = ["Notifier"]

log = structlog.get_logger("coordinator.operations.notify")


class Notifier:
    def __init__(
        self,
        engine: AsyncEngine,
        webhooks: Sequence[Webhook],
        settings: NotifySettings,
        *,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._engine = engine
        self._webhooks = tuple(webhooks)
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._backoff = Backoff(
            initial=timedelta(seconds=settings.backoff_initial_s),
            maximum=timedelta(seconds=settings.backoff_max_s),
        )
        self.retry_policy = RetryPolicy(initial_s=settings.interval_s, max_s=settings.interval_s)
        """A failed pass (the database unreachable, or a bug) is tried again one interval
        later, as a successful pass would be. A failing receiver fails no pass: each
        delivery's own backoff (`backoff_*`, kept per row) spaces its retries."""

    async def run_once(self, client: httpx.AsyncClient) -> tuple[int, int, int]:
        """One pass: (queued, delivered, failed attempts)."""
        async with self._engine.begin() as conn:
            queued = await sweep(
                conn,
                self._webhooks,
                now=self._clock.now(),
                lookback=timedelta(seconds=self._settings.lookback_s),
                alarm=SignatureAlarm(
                    self._settings.signature_failure_threshold,
                    timedelta(seconds=self._settings.signature_failure_window_s),
                ),
            )
        delivered = failed = 0
        while True:
            async with self._engine.begin() as conn:
                outcomes = await deliver_due(
                    conn,
                    client,
                    self._webhooks,
                    now=self._clock.now(),
                    limit=self._settings.batch_size,
                    backoff=self._backoff,
                )
            for outcome in outcomes:
                label = "delivered" if outcome.delivered else "failed"
                self._metrics.notifications.labels(webhook=outcome.webhook, outcome=label).inc()
            ok = sum(1 for outcome in outcomes if outcome.delivered)
            delivered, failed = delivered + ok, failed + len(outcomes) - ok
            if len(outcomes) < self._settings.batch_size:
                await self._gauge_waiting()
                return queued, delivered, failed

    async def _gauge_waiting(self) -> None:
        """What the undelivered-webhook alert watches: per webhook, the oldest wait."""
        now = self._clock.now()
        async with self._engine.connect() as conn:
            oldest = await oldest_pending(conn)
        for hook in self._webhooks:
            created = oldest.get(hook.name)
            waited = 0.0 if created is None else max(0.0, (now - created).total_seconds())
            self._metrics.notifications_oldest_pending.labels(webhook=hook.name).set(waited)

    async def run_forever(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(
            timeout=self._settings.timeout_s, follow_redirects=False
        ) as client:

            async def one_pass() -> None:
                queued, delivered, failed = await self.run_once(client)
                if queued or delivered or failed:
                    log.info("notifications", queued=queued, delivered=delivered, failed=failed)

            while not stop.is_set():
                try:
                    # An outage (or a bug) must not end notifying: every error is retried.
                    await retry(
                        one_pass,
                        policy=self.retry_policy,
                        what="notify_pass",
                        retry_on=any_error,
                        stop=stop,
                    )
                except Stopped:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._settings.interval_s)
