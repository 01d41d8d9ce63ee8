"""What the operations tests (republish, DLQ redrive, backfill, erasure requests, service
deadlines) share: a consumer that fails fast, the operator's CLI on a test database, and
the tracked state of events."""

from __future__ import annotations

import os
import subprocess
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer_sdk import ConsumerSettings
from coordinator.store.tables import event_status
from schemas import KafkaSettings
from tests import infra
from tests.e2e.harness import RETENTION_CLI
from tests.infra import ROOT

__all__ = ["FAST", "event_states", "run_cli"]

FAST = ConsumerSettings(
    database_url=None,
    retry_initial_s=0.01,
    retry_max_s=0.05,
    retry_jitter_s=0.01,
    poll_timeout_s=0.2,
    shutdown_timeout_s=10,
    error_backoff_s=0.2,
    max_attempts=2,
)
"""Short retries and polls: a handler's failure reaches the DLQ in well under a second."""


def run_cli(database: str, kafka: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `retention` command on `database` and `kafka`, signing with the test
    keys, and none of the caller's own `RETENTION_*` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update(kafka.environ())
    env.update(infra.signing_env())
    env["RETENTION_DATABASE_URL"] = database
    return subprocess.run(
        [RETENTION_CLI, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def event_states(engine: AsyncEngine, events: list[uuid.UUID]) -> list[str]:
    """The tracked state of each event, in the order given."""
    async with engine.connect() as conn:
        found = dict(
            (
                await conn.execute(
                    select(event_status.c.event_id, event_status.c.state).where(
                        event_status.c.event_id.in_(events)
                    )
                )
            ).all()
        )
    return [found[e] for e in events]
