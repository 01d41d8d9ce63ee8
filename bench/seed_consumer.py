"""The seed article's consumer side, reimplemented for the end-to-end benchmark.

    BENCH_SEED_SERVICE=notifications python -m bench.seed_consumer

The article's `handle_retention_event(message)` runs once per message of one aiokafka
consumer (one process per service, as its services would run): each effect is its own
session, transaction and commit (`delete_user_notifications(user_id)`, …), offsets are
auto-committed by aiokafka's defaults, nothing is acknowledged and nothing is recorded
to make a redelivered message harmless. The effects are row for row those of our three
example services (services/{notifications,preferences,billing}) on the same tables, minus
their `erasure_log` row: the article keeps no record of what a service applied.

Faithful, so the benchmark measures the design, with two bench-only additions: the
consumer reads from the earliest offset (the article does not say; aiokafka's default
`latest` would drop events published before the group joined) and logs
`partitions_assigned` once it holds partitions, so the bench starts its clock only when
every consumer is ready — as it does for ours. Lives in `bench/` only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from sqlalchemy import Table, func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas import KafkaSettings
from services import EXAMPLES, billing
from services._shared import engine_for, service_database_url

Effect = Callable[[str], Awaitable[None]]


def effects(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Effect]:
    """The article's per-service effect functions, each its own transaction: billing's
    anonymization of a user's orders, and for every other example service on the core
    SDK (`services.EXAMPLES`) the deletion of the user's rows from its tables."""

    def delete_user_rows(tables: Sequence[Table]) -> Effect:
        async def delete_user(user_id: str) -> None:
            async with sessions() as session:
                for table in tables:
                    await session.execute(table.delete().where(table.c.user_id == user_id))
                await session.commit()

        return delete_user

    async def anonymize_user_orders(user_id: str) -> None:
        async with sessions() as session:
            orders = billing.orders
            await session.execute(
                orders.update()
                .where(orders.c.user_id == user_id)
                .values(
                    customer_name=billing.MASK,
                    email=billing.MASK,
                    address=billing.MASK,
                    user_id=None,
                    anonymized_at=func.coalesce(orders.c.anonymized_at, func.now()),
                )
            )
            await session.commit()

    return {
        e.name: anonymize_user_orders
        if e is billing.EXAMPLE
        else delete_user_rows([t for t in e.tables if "user_id" in t.c])
        for e in EXAMPLES
        if not e.faust and "user" in e.entity_types
    }


class _SayAssigned(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            print("partitions_assigned", file=sys.stderr, flush=True)


async def consume(service: str) -> None:
    kafka = KafkaSettings()
    engine = engine_for(service_database_url())
    delete_user = effects(async_sessionmaker(engine, expire_on_commit=False))[service]

    # The article's handler, with this service's effect in place of its two examples.
    async def handle_retention_event(message: dict[str, Any]) -> None:
        if message["entity_type"] == "user":
            user_id = message["entity_id"]
            if message["type"] == "delete":
                await delete_user(user_id)

    consumer = AIOKafkaConsumer(
        group_id=f"{kafka.topic_prefix}.seed.{service}",
        auto_offset_reset="earliest",
        **kafka.client_kwargs(),
    )
    consumer.subscribe([kafka.topics.events], listener=_SayAssigned())
    await consumer.start()
    try:
        async for record in consumer:
            await handle_retention_event(json.loads(record.value))
    finally:
        await consumer.stop()
        await engine.dispose()


def main() -> None:
    service = os.environ.get("BENCH_SEED_SERVICE", "")
    known = [e.name for e in EXAMPLES if not e.faust and "user" in e.entity_types]
    if service not in known:
        raise SystemExit(f"BENCH_SEED_SERVICE={service!r}: expected one of {', '.join(known)}")
    asyncio.run(consume(service))


if __name__ == "__main__":
    main()
