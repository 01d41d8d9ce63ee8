"""serve's daily upkeep of its own evidence (SPEC §13), on the leader only.

Each round: create the monthly partitions (audit log, outbox, ack ledger) for this
month and the next two, sign a head at the audit chain's end (after checking the rows
since the last head), prune every table past its retention (leaving signed checkpoints
for pruned audit rows), then publish every checkpoint not yet on the audit topic. The
first round runs a minute after start (or one interval, if shorter), once leadership is
settled. A failed round is logged and retried at the next interval; a failed publication
is retried at the next round (the checkpoints stay marked unpublished).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import Clock
from coordinator.evidence.checkpoints import take_head
from coordinator.evidence.heads import publish_checkpoints
from coordinator.evidence.partitions import LAYOUTS, ahead, ensure_months, is_partitioned
from coordinator.evidence.prune import prune_own_data
from coordinator.evidence.pseudonyms import Pepper
from coordinator.evidence.retention import Retention
from schemas import KafkaSettings
from schemas.signing import Signer

__all__ = ["Upkeep"]

log = structlog.get_logger("retention.upkeep")


@dataclass
class Upkeep:
    engine: AsyncEngine
    kafka: KafkaSettings
    retention: Retention
    clock: Clock
    signer: Signer | None
    pepper: Pepper | None
    is_leader: Callable[[], bool]
    interval_s: float

    async def round(self) -> None:
        now = self.clock.now()
        async with self.engine.begin() as conn:
            for layout in LAYOUTS.values():
                if await is_partitioned(conn, layout.parent):
                    await ensure_months(conn, ahead(now), layout)
        async with self.engine.begin() as conn:
            head = await take_head(conn, now=now, signer=self.signer)
        pruned = await prune_own_data(
            self.engine,
            self.retention,
            now=now,
            dry_run=False,
            pepper=self.pepper,
            signer=self.signer,
        )
        published = await publish_checkpoints(self.engine, self.kafka, now=now)
        log.info(
            "upkeep_done",
            head_seq=None if head is None else head.last_seq,
            pruned={p.table: p.rows for p in pruned},
            checkpoints_published=published,
        )

    async def run_forever(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(60.0, self.interval_s))
        while not stop.is_set():
            if self.is_leader():
                try:
                    await self.round()
                except Exception:
                    log.exception("upkeep_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
