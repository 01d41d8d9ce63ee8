"""Search index: a user's indexed documents are removed from the index when the user is
deleted. Built as a Faust app; the retention handler is attached with `consumer_sdk.faust`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Identity, MetaData, Table, Text, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import EntityNotFound, EventType, RetentionEvent
from consumer_sdk.faust import FaustRetention
from services._shared import user_erasure_log
from services.example import Example, Handler

__all__ = ["EXAMPLE", "SERVICE", "create_app", "documents", "erasure_log", "metadata", "seed"]

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


async def count_user_documents(event: RetentionEvent, conn: AsyncConnection) -> int:
    """Verification (SPEC §12): the user's documents still in the index."""
    found = await conn.execute(
        select(func.count()).select_from(documents).where(documents.c.user_id == event.entity_id)
    )
    return int(found.scalar_one())


async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
    result = await conn.execute(documents.delete().where(documents.c.user_id == event.entity_id))
    if result.rowcount == 0:
        raise EntityNotFound("no indexed documents for this user")
    await conn.execute(
        erasure_log.insert(),
        {"event_id": event.event_id, "user_id": event.entity_id, "rows": result.rowcount},
    )
    return result.rowcount


def seed_rows(user_ids: Sequence[str], *, per_user: int = 2) -> dict[Table, list[dict[str, Any]]]:
    """`per_user` indexed documents for each user."""
    return {
        documents: [
            {"user_id": user, "title": f"doc {n}", "body": f"text {n} of {user}"}
            for user in user_ids
            for n in range(per_user)
        ]
    }


EXAMPLE = Example(
    SERVICE,
    metadata,
    erasure_log,
    (Handler("user", EventType.DELETE, delete_user),),
    seed_rows,
    faust=True,
    verifiers=(Handler("user", EventType.VERIFY, count_user_documents),),
)
seed = EXAMPLE.seed


def create_app(**options: Any) -> FaustRetention:
    """The Faust app with the retention agent attached (`.app` is the `faust.App`)."""
    app = EXAMPLE.create_app(**options)
    assert isinstance(app, FaustRetention)
    return app
