"""An example service as data: its tables, its handlers and its seed rows, and what is
built from them (the app, table creation, the seed).

Each `services/<name>/service.py` declares one `Example`; `services.EXAMPLES` lists them
all, and the demo, the benchmarks, the test harnesses and tests/test_compose.py iterate
it. docs/sdk.md "Add an example service" walks through a new one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Column, MetaData, Table, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import ConsumerSettings, EntityNotFound, RetentionConsumer, RetentionEvent
from schemas import EventType, KafkaSettings
from services._shared import (
    Runnable,
    create_tables,
    delete_users_rows,
    engine_for,
    service_database_url,
    user_erasure_log,
)

__all__ = ["METRICS_PORT", "Example", "Handler", "SeedRows", "user_rows_example"]

METRICS_PORT = 9100
"""Where every example service serves /metrics in docker-compose (each in its container)."""

SeedRows = Callable[..., Mapping[Table, list[dict[str, Any]]]]
"""`seed_rows(user_ids, **options)`: demo rows per table for these users."""


@dataclass(frozen=True, slots=True)
class Handler:
    entity_type: str
    action: EventType
    handle: Callable[..., Awaitable[Any]]
    batch: bool = False
    """A batch handler (`on_<action>_batch`): one call, one transaction, per batch."""


@dataclass(frozen=True, slots=True)
class Example:
    """One example service: name (also its database schema and consumer group's suffix),
    tables, handlers, seed rows and erasure log (one row per applied effect)."""

    name: str
    metadata: MetaData
    erasure_log: Table
    handlers: tuple[Handler, ...]
    seed_rows: SeedRows
    faust: bool = False
    """Built as a Faust app with `consumer_sdk.faust`, not on the core SDK's consumer."""
    verifiers: tuple[Handler, ...] = ()
    """`@app.verify` handlers (action `verify`): records still held for an entity."""

    @property
    def tables(self) -> list[Table]:
        """The service's own data, without its erasure log."""
        return [t for t in self.metadata.sorted_tables if t is not self.erasure_log]

    @property
    def entity_types(self) -> frozenset[str]:
        return frozenset(h.entity_type for h in self.handlers)

    @property
    def erased_id(self) -> Column[Any]:
        """The erasure log's column naming the entity an effect was applied to."""
        columns = self.erasure_log.c
        return columns.entity_id if "entity_id" in columns else columns.user_id

    def consumer(
        self,
        *,
        database_url: str | None = None,
        kafka: KafkaSettings | None = None,
        settings: ConsumerSettings | None = None,
        registry: CollectorRegistry | None = None,
    ) -> RetentionConsumer:
        """The `RetentionConsumer` with this service's handlers and table creation."""
        app = RetentionConsumer(
            self.name,
            kafka=kafka,
            settings=settings,
            database_url=database_url or service_database_url(),
            registry=registry,
        )
        app.on_startup(self.create_tables)
        for h in self.handlers:
            register = {
                (EventType.DELETE, False): app.on_delete,
                (EventType.DELETE, True): app.on_delete_batch,
                (EventType.ANONYMIZE, False): app.on_anonymize,
                (EventType.ANONYMIZE, True): app.on_anonymize_batch,
            }[(h.action, h.batch)]
            register(h.entity_type)(h.handle)
        for v in self.verifiers:
            app.verify(v.entity_type)(v.handle)
        return app

    def create_app(
        self,
        *,
        database_url: str | None = None,
        kafka: KafkaSettings | None = None,
        settings: ConsumerSettings | None = None,
        registry: CollectorRegistry | None = None,
    ) -> Runnable:
        """What `python -m services.<name>` runs: the consumer, or the Faust app's handle."""
        retention = self.consumer(
            database_url=database_url, kafka=kafka, settings=settings, registry=registry
        )
        if not self.faust:
            return retention
        # Imported here: only a Faust service needs the optional `faust` extra.
        import faust

        from consumer_sdk.faust import attach, faust_app_settings
        from schemas import service_group

        # The app's id is its consumer group: the same name the core SDK would use.
        app = faust.App(service_group(self.name), **faust_app_settings(retention.kafka))
        return attach(app, retention)

    async def create_tables(self, conn: AsyncConnection) -> None:
        await create_tables(conn, self.metadata)

    async def seed(self, database_url: str, user_ids: Sequence[str], **options: Any) -> int:
        """Insert `seed_rows(user_ids, **options)` (rows already there are kept); returns
        how many rows were given."""
        engine = engine_for(database_url)
        try:
            async with engine.begin() as conn:
                await self.create_tables(conn)
                total = 0
                for table, rows in self.seed_rows(user_ids, **options).items():
                    if rows:
                        statement = postgresql.insert(table).on_conflict_do_nothing()
                        await conn.execute(statement, rows)
                    total += len(rows)
                return total
        finally:
            await engine.dispose()


def user_rows_example(
    name: str, metadata: MetaData, table: Table, seed_rows: SeedRows, *, missing: str
) -> Example:
    """A service whose only personal data is `table`'s rows of a user (a `user_id`
    column), deleted when the user is: one set-based DELETE per batch, logged in a
    `user_erasure_log`; `missing` is the `not_found` detail for a user without rows."""
    erasure_log = user_erasure_log(metadata)

    async def delete_users(
        events: Sequence[RetentionEvent], conn: AsyncConnection
    ) -> list[int | EntityNotFound]:
        return await delete_users_rows(conn, table, erasure_log, events, missing)

    async def count_user_rows(event: RetentionEvent, conn: AsyncConnection) -> int:
        """Verification (SPEC §12): the user's rows still in `table`."""
        found = await conn.execute(
            select(func.count()).select_from(table).where(table.c.user_id == event.entity_id)
        )
        return int(found.scalar_one())

    handler = Handler("user", EventType.DELETE, delete_users, batch=True)
    verifier = Handler("user", EventType.VERIFY, count_user_rows)
    return Example(name, metadata, erasure_log, (handler,), seed_rows, verifiers=(verifier,))
