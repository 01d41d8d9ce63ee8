"""Search index: a user's indexed documents are removed from the index when the user is
deleted. Built as a Faust app; the retention handler is attached with `consumer_sdk.faust`."""

from __future__ import annotations

from collections.abc import Sequence

import faust
from prometheus_client import CollectorRegistry
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import ConsumerSettings, EntityNotFound, RetentionConsumer, RetentionEvent
from consumer_sdk.faust import FaustRetention, attach, faust_app_settings
from schemas import KafkaSettings, service_group
from services._shared import create_tables, engine_for, service_database_url, user_erasure_log

__all__ = ["SERVICE", "create_app", "documents", "erasure_log", "metadata", "seed"]

SERVICE = "search_index"
metadata = MetaData(schema="search_index")

documents = Table(
    "document",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("user_id", Text, nullable=False, index=True),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("indexed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

erasure_log = user_erasure_log(metadata)


async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
    result = await conn.execute(documents.delete().where(documents.c.user_id == event.entity_id))
    if result.rowcount == 0:
        raise EntityNotFound("no indexed documents for this user")
    await conn.execute(
        erasure_log.insert(),
        {"event_id": event.event_id, "user_id": event.entity_id, "rows": result.rowcount},
    )
    return result.rowcount


async def _create_tables(conn: AsyncConnection) -> None:
    await create_tables(conn, metadata)


def create_app(
    *,
    database_url: str | None = None,
    kafka: KafkaSettings | None = None,
    settings: ConsumerSettings | None = None,
    registry: CollectorRegistry | None = None,
) -> FaustRetention:
    """The Faust app with the retention agent attached (`.app` is the `faust.App`)."""
    retention = RetentionConsumer(
        SERVICE,
        kafka=kafka,
        settings=settings,
        database_url=database_url or service_database_url(),
        registry=registry,
    )
    retention.on_startup(_create_tables)
    retention.on_delete("user")(delete_user)
    # The app's id is its consumer group: the same name the core SDK would use.
    app = faust.App(service_group(SERVICE), **faust_app_settings(retention.kafka))
    return attach(app, retention)


async def seed(database_url: str, user_ids: Sequence[str], *, per_user: int = 2) -> int:
    """Index `per_user` documents for each user; returns rows inserted."""
    engine = engine_for(database_url)
    try:
        async with engine.begin() as conn:
            await create_tables(conn, metadata)
            rows = [
                {"user_id": user, "title": f"doc {n}", "body": f"text {n} of {user}"}
                for user in user_ids
                for n in range(per_user)
            ]
            if rows:
                await conn.execute(documents.insert(), rows)
            return len(rows)
    finally:
        await engine.dispose()
