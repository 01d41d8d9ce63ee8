"""One object the CLI, the API and `serve` share: file, execute, move and count requests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import Clock
from coordinator.erasure import requests, status
from coordinator.erasure.due import Regulation
from coordinator.erasure.execute import Execution, execute_request
from coordinator.metrics import Metrics
from coordinator.policy.model import PolicySet
from coordinator.purge.holds import entity_types
from coordinator.settings import Settings

__all__ = ["Erasure"]

log = structlog.get_logger(__name__)

UNFINISHED_AFTER = timedelta(minutes=1)
"""A request still `received` this long after it was filed, whose execution never
finished, lost it to a crash: the leader executes it again."""


@dataclass
class Erasure:
    engine: AsyncEngine
    policy_set: PolicySet
    settings: Settings
    clock: Clock
    metrics: Metrics | None = None

    async def create(
        self,
        *,
        subject: str,
        regulation: Regulation,
        received_at: datetime | None,
        reference: str | None,
        by: str,
    ) -> tuple[requests.ErasureRequest, bool]:
        """File a request and act on it at once; the same `reference` returns the first.

        Raises:
            requests.ErasureError: bad input (unknown subject type, future date, …).
        """
        async with self.engine.begin() as conn:
            request, created = await requests.create_request(
                conn,
                self.policy_set,
                await entity_types(conn, self.policy_set),
                subject=subject,
                regulation=regulation,
                received_at=received_at,
                reference=reference,
                by=by,
                now=self.clock.now(),
                default_days=self.settings.erasure_default_days,
            )
        if created or request.status is requests.Status.RECEIVED:
            # Filing it again resumes a request whose execution never finished (a crash
            # between recording and acting, a failed part).
            await self.execute(request.id, by=by)
            async with self.engine.connect() as conn:
                request = await requests.get_request(conn, request.id)
        return request, created

    async def execute(self, request_id: uuid.UUID, *, by: str) -> Execution | None:
        """Execute now; None when another process is executing the request."""
        return await execute_request(
            self.engine, self.policy_set, self.settings, request_id, clock=self.clock, by=by
        )

    async def advance(self, *, reexecute: bool = True) -> list[uuid.UUID]:
        """Complete what every service acknowledged; when `reexecute`, execute again the
        requests whose holds are all released and those whose execution never finished;
        refresh the gauges. Returns the requests completed."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            completed = await status.complete_acknowledged(conn, now=now)
            await status.held_downstream(conn, now=now)
        again: list[uuid.UUID] = []
        if reexecute:
            async with self.engine.connect() as conn:
                again = await status.released_holds(conn, now=now)
                again += await status.unfinished(conn, now=now, after=UNFINISHED_AFTER)
        for request_id in again:
            log.info("erasure_execution_resumed", request_id=str(request_id))
            await self.execute(request_id, by=status.ACTOR)
        await self.refresh_gauges()
        return completed

    async def refresh_gauges(self) -> None:
        if self.metrics is None:
            return
        async with self.engine.connect() as conn:
            counts, overdue = await requests.count_by_status(conn, self.clock.now())
        for name, count in counts.items():
            self.metrics.erasure_requests.labels(name).set(count)
        self.metrics.erasure_requests_overdue.set(overdue)
