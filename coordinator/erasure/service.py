"""One object the CLI, the API and `serve` share: file, execute, move and count requests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

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
        if not created:
            return request, False
        execution = await self.execute(request.id, by=by)
        return execution.request, True

    async def execute(self, request_id: uuid.UUID, *, by: str) -> Execution:
        return await execute_request(
            self.engine, self.policy_set, self.settings, request_id, clock=self.clock, by=by
        )

    async def advance(self, *, reexecute: bool = True) -> list[uuid.UUID]:
        """Complete what every service acknowledged; re-execute requests whose holds
        are all released (when `reexecute`); refresh the gauges. Returns the requests
        completed."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            completed = await status.complete_acknowledged(conn, now=now)
        released: list[uuid.UUID] = []
        if reexecute:
            async with self.engine.connect() as conn:
                released = await status.released_holds(conn, now=now)
        for request_id in released:
            log.info("erasure.hold_released", request_id=str(request_id))
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
