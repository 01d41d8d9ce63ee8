"""A test-only service on the public SDK whose handlers fail on purpose, by a seeded plan.

Run as `python -m tests.faults.flaky_service` with the product services' environment
plus `FLAKY_SEED`. It handles `ticket` and `cart` deletions (two seed policies that fan
out and that no example service handles). `plan(seed, entity_id)` decides, the same way
in the service and in the test, what each event meets:

* `flaky`: the first `fails` attempts raise ConnectionError, the next one succeeds;
* `permanent`: every attempt raises TimeoutError (retried until max_attempts);
* `fatal`: PermissionError, declared in `throws`: no retry at all.

Every attempt inserts its effect row in the SDK's transaction before it fails, so only
the SDK's rollback of failed attempts keeps `flaky.effects` at one row per completed
event. The product services carry no test hooks; this module is how a test fails.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter

from sqlalchemy import BigInteger, Column, Identity, Integer, MetaData, Table, Text, Uuid
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import RetentionConsumer, RetentionEvent, configure_logging

__all__ = ["ENTITY_TYPES", "SERVICE", "effects", "plan"]

SERVICE = "flaky"
ENTITY_TYPES = ("ticket", "cart")
metadata = MetaData(schema="flaky")
effects = Table(
    "effects",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("event_id", Uuid, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
)


def plan(seed: int, entity_id: str, max_attempts: int) -> tuple[str, int]:
    """(kind, attempts that fail before success) for one entity."""
    rng = random.Random(f"{seed}:{entity_id}")
    draw = rng.random()
    if draw < 0.15:
        return "fatal", 1
    if draw < 0.35:
        return "permanent", max_attempts
    return "flaky", rng.randrange(max_attempts)


def create_app(seed: int | None = None, database_url: str | None = None) -> RetentionConsumer:
    app = RetentionConsumer(SERVICE, database_url=database_url)
    if seed is None:
        seed = int(os.environ["FLAKY_SEED"])
    chosen = seed
    attempts: Counter[uuid.UUID] = Counter()

    @app.on_startup
    async def create_tables(conn: AsyncConnection) -> None:
        await conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS flaky")
        await conn.run_sync(metadata.create_all)

    async def handle(event: RetentionEvent, conn: AsyncConnection) -> int:
        attempts[event.event_id] += 1
        attempt = attempts[event.event_id]
        await conn.execute(
            effects.insert().values(
                event_id=event.event_id, entity_id=event.entity_id, attempt=attempt
            )
        )
        kind, fails = plan(chosen, event.entity_id, app.settings.max_attempts)
        if kind == "fatal":
            raise PermissionError(f"{event.entity_id}: not ours to delete")
        if attempt <= fails:
            error = TimeoutError if kind == "permanent" else ConnectionError
            raise error(f"{event.entity_id}: attempt {attempt} failed")
        return 1

    for entity_type in ENTITY_TYPES:
        app.on_delete(entity_type, throws=(PermissionError,))(handle)
    return app


if __name__ == "__main__":
    configure_logging()
    create_app().run()
