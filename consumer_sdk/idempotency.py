"""Idempotency stores: which events a service has already processed, and with what result.

A store hands out one transaction per event and, if it is a `BatchingStore`, one
transaction for a run of events with a savepoint per event. When the store has a
database, the handler's writes run on the transaction's connection, so the events'
records and the handlers' effects commit together or not at all.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

from sqlalchemy import (
    ARRAY,
    Column,
    DateTime,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    Uuid,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    text,
    true,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Insert, Select
from sqlalchemy.types import TypeEngine

from consumer_sdk.arrays import array_param
from schemas import AckStatus

__all__ = [
    "AlreadyRecorded",
    "BatchTransaction",
    "BatchingStore",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "LookupInBatch",
    "PostgresIdempotencyStore",
    "ProcessedEvent",
    "PrunableStore",
    "StoreTransaction",
    "processed_events_table",
]

DEFAULT_TABLE = "retention_processed_events"
PRUNE_BATCH = 10_000


class ProcessedEvent(NamedTuple):
    """The recorded result of one event for one service. A named tuple, not a frozen
    dataclass: one is made per event handled, and a frozen dataclass's `__init__` sets
    each field through `object.__setattr__` (~0.75 µs against ~0.3)."""

    event_id: uuid.UUID
    status: AckStatus
    records_affected: int
    processed_at: datetime


class AlreadyRecorded(Exception):
    """Another delivery of the same event committed first; this transaction is void."""


class StoreTransaction(Protocol):
    """One event's transaction: the handler's connection (if any) and the record of it."""

    @property
    def connection(self) -> AsyncConnection | None: ...

    async def record(self, processed: ProcessedEvent) -> None:
        """Record the event; raise `AlreadyRecorded` if another delivery already did."""


@runtime_checkable
class PrunableStore(Protocol):
    """A store that can forget old records (`idempotency_retention_days`)."""

    async def prune(self, service: str, before: datetime) -> int:
        """Delete the service's records processed before `before`; how many went."""


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where a service's processed events are kept; pluggable."""

    @property
    def provides_connection(self) -> bool:
        """Whether transactions carry a database connection handlers can write with."""

    async def open(self) -> None:
        """Create what the store needs (tables); safe to call from many replicas at once."""

    async def close(self) -> None: ...

    async def lookup(
        self, service: str, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        """The already-processed events among `event_ids`, in one round trip."""

    def transaction(
        self, service: str, event_id: uuid.UUID
    ) -> AbstractAsyncContextManager[StoreTransaction]:
        """Commits on normal exit, rolls back (handler writes included) on an exception."""


class BatchTransaction(Protocol):
    """A run of events in one transaction: a savepoint per handler call, records at the end."""

    def savepoint(self) -> AbstractAsyncContextManager[AsyncConnection | None]:
        """One handler call's work: kept on normal exit, rolled back alone on an exception.

        Yields the transaction's connection (None when the store has no database).
        """

    def record(self, processed: ProcessedEvent) -> None:
        """Record the event when the transaction commits (all records in one statement)."""


@runtime_checkable
class LookupInBatch(Protocol):
    """A `BatchingStore` that answers `lookup` inside one of its batch transactions (the
    SDK's stores): one connection and one transaction for both. For other stores the SDK
    looks up first, then opens the batch (never both at once: a pool of one connection
    would wait for itself)."""

    async def batch_lookup(
        self, batch: BatchTransaction, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        """`lookup` of `batch`'s service, in `batch` (one this store opened)."""


@runtime_checkable
class BatchingStore(IdempotencyStore, Protocol):
    """A store that can handle a run of events in one transaction (one commit)."""

    def batch(self, service: str) -> AbstractAsyncContextManager[BatchTransaction]:
        """Commits the records and the handlers' writes on normal exit, rolls all back on
        an exception; raises `AlreadyRecorded` (after rolling back) if another delivery
        recorded one of the events first."""


def processed_events_table(name: str = DEFAULT_TABLE, *, schema: str | None = None) -> Table:
    return Table(
        name,
        MetaData(schema=schema),
        Column("service", Text, nullable=False),
        Column("event_id", Uuid, nullable=False),
        Column("status", Text, nullable=False),
        Column("records_affected", Integer, nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("service", "event_id", name=f"{name}_pkey"),
    )


SAVEPOINT = "retention_event"


def _array(name: str, kind: TypeEngine[Any]) -> Any:
    """A per-record column's parameter: one array literal (`consumer_sdk.arrays`) for
    ids, counts and statuses; a time array stays asyncpg's own (a literal would leave a
    naive time's zone to the session's setting)."""
    if isinstance(kind, DateTime):
        return bindparam(name, type_=ARRAY(kind))
    return array_param(name, kind)


@dataclass(slots=True)
class _Savepoints:
    """One savepoint per handler call on one connection, at one round trip per call.

    The savepoint of the previous call is left open and released in the same round trip
    that sets the next (`RELEASE …; SAVEPOINT …`, one simple query on asyncpg); the last
    one is committed with the transaction. One fixed name, in plain SQL: SQLAlchemy's
    `begin_nested()` names every savepoint anew, which the asyncpg dialect prepares anew
    (two round trips per statement).
    """

    conn: AsyncConnection
    open: bool = False

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncConnection]:
        if not self.open:
            # Through SQLAlchemy: it begins the driver's transaction on the first statement.
            await self.conn.exec_driver_sql(f"SAVEPOINT {SAVEPOINT}")
            self.open = True
        elif self.conn.dialect.driver == "asyncpg":
            raw = await self.conn.get_raw_connection()
            await raw.driver_connection.execute(  # type: ignore[union-attr]
                f"RELEASE SAVEPOINT {SAVEPOINT}; SAVEPOINT {SAVEPOINT}"
            )
        else:
            await self.conn.exec_driver_sql(f"RELEASE SAVEPOINT {SAVEPOINT}")
            await self.conn.exec_driver_sql(f"SAVEPOINT {SAVEPOINT}")
        try:
            yield self.conn
        except Exception:
            # A call cancelled mid-statement (a handler timeout) leaves the connection
            # invalidated: the server rolled everything back, and the batch must fail as
            # a whole with the handler's error, not a PendingRollbackError of ours.
            if not self.conn.invalidated:
                # The savepoint stays established after this: the next call releases it.
                await self.conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            raise


@dataclass(slots=True)
class _SqlBatch:
    service: str
    savepoints: _Savepoints
    recorded: list[ProcessedEvent]

    def savepoint(self) -> AbstractAsyncContextManager[AsyncConnection | None]:
        return self.savepoints()

    def record(self, processed: ProcessedEvent) -> None:
        self.recorded.append(processed)


def _rows(service: str, recorded: Sequence[ProcessedEvent]) -> list[dict[str, object]]:
    return [
        {
            "service": service,
            "event_id": p.event_id,
            "status": p.status.value,
            "records_affected": p.records_affected,
            "processed_at": p.processed_at,
        }
        for p in recorded
    ]


@dataclass(slots=True)
class _SqlTransaction:
    table: Table
    service: str
    conn: AsyncConnection

    @property
    def connection(self) -> AsyncConnection:
        return self.conn

    async def record(self, processed: ProcessedEvent) -> None:
        try:
            # A plain INSERT: a concurrent delivery of the same event blocks on the
            # primary key until the other commits, then fails here — effects apply once.
            await self.conn.execute(self.table.insert(), _rows(self.service, [processed]))
        except IntegrityError as exc:
            raise AlreadyRecorded(str(processed.event_id)) from exc


class PostgresIdempotencyStore:
    """The default store: a table in the service's own database, created on `open()`."""

    def __init__(
        self, engine: AsyncEngine, *, table: str = DEFAULT_TABLE, schema: str | None = None
    ) -> None:
        self._engine = engine
        self.table = processed_events_table(table, schema=schema)
        # Built once: a statement built per batch cost ~0.4 ms to construct and to
        # derive its compiled-cache key; the values are bound at each execution.
        self._lookup = self._lookup_statement()
        self._insert = self._insert_statement(uniform=False)
        self._insert_uniform = self._insert_statement(uniform=True)

    @property
    def provides_connection(self) -> bool:
        return True

    async def open(self) -> None:
        async with self._engine.begin() as conn:
            # Replicas starting together would race on CREATE TABLE; the lock serializes them.
            lock_key = zlib.crc32(self.table.fullname.encode())
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
            await conn.run_sync(self.table.metadata.create_all, checkfirst=True)

    async def close(self) -> None:
        """Nothing to release: the engine belongs to the consumer."""

    async def reachable(self, *, timeout_s: float = 5.0) -> bool:
        """Whether the database answers now (a failed handler attempt may be its outage)."""
        try:
            async with asyncio.timeout(timeout_s), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def lookup(
        self, service: str, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        ids = list(event_ids)
        if not ids:
            return {}
        async with self._engine.connect() as conn:
            return await self.lookup_on(conn, service, ids)

    async def batch_lookup(
        self, batch: BatchTransaction, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        if not isinstance(batch, _SqlBatch):
            raise TypeError("batch_lookup takes a batch of this store's own")
        return await self.lookup_on(batch.savepoints.conn, batch.service, event_ids)

    async def lookup_on(
        self, conn: AsyncConnection, service: str, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        """`lookup` on `conn` (in its transaction, if one is open)."""
        ids = list(event_ids)
        if not ids:
            return {}
        rows = await conn.execute(self._lookup, {"service": service, "event_ids": ids})
        return {
            row.event_id: ProcessedEvent(
                row.event_id, AckStatus(row.status), row.records_affected, row.processed_at
            )
            for row in rows
        }

    def lookup_query(self, service: str, ids: Sequence[uuid.UUID]) -> Select[Any]:
        """The lookup of `ids` with its values bound (what `lookup` runs; see
        `_lookup_statement`)."""
        return self._lookup.params(service=service, event_ids=list(ids))

    def _lookup_statement(self) -> Select[Any]:
        """The recorded rows among `:event_ids`: one primary-key probe per id, whatever the
        statistics say. `service = … AND event_id IN (…)` reads a table nobody has
        analyzed yet (a new service, or one growing faster than autovacuum visits) by
        its `service` prefix: every record of the service, for every batch. The LIMIT
        keeps the lateral subquery from being flattened into a join the planner could
        again choose to answer by that prefix."""
        t = self.table
        wanted = (
            func.unnest(array_param("event_ids", Uuid()))
            .table_valued(column("event_id", Uuid()))
            .render_derived(name="wanted")
        )
        recorded = (
            select(t.c.event_id, t.c.status, t.c.records_affected, t.c.processed_at)
            .where(t.c.service == bindparam("service", type_=Text()))
            .where(t.c.event_id == wanted.c.event_id)
            .limit(1)
            .lateral("recorded")
        )
        return select(recorded).select_from(wanted.join(recorded, true()))

    def _insert_of(
        self, service: str, recorded: Sequence[ProcessedEvent]
    ) -> tuple[Insert, dict[str, Any]]:
        """The INSERT of these records and its values. Mostly they share their status
        and time (one handler call, all completed): then both are bound once, not as
        arrays (asyncpg encodes a timestamptz array element in ~0.5 µs, a text one in
        ~0.2)."""
        first = recorded[0]
        status, at = first.status, first.processed_at
        if all(p.status is status and p.processed_at == at for p in recorded):
            return self._insert_uniform, {
                "service": service,
                "event_ids": [p.event_id for p in recorded],
                "counts": [p.records_affected for p in recorded],
                "status": status.value,
                "processed_at": at,
            }
        return self._insert, self._insert_values(service, recorded)

    def _insert_values(self, service: str, recorded: Sequence[ProcessedEvent]) -> dict[str, Any]:
        """The values of `_insert_statement` for these records."""
        return {
            "service": service,
            "event_ids": [p.event_id for p in recorded],
            "statuses": [p.status.value for p in recorded],
            "counts": [p.records_affected for p in recorded],
            "processed_at": [p.processed_at for p in recorded],
        }

    def _insert_statement(self, *, uniform: bool) -> Insert:
        """One statement for a batch's records: its columns as arrays, unnested. An
        executemany of the same rows is one statement execution per event on the server,
        and a parameter dict per event on this side. With `uniform` (records of one status
        and one time) those two are bound once, not as arrays."""
        t = self.table
        per_record: list[tuple[str, str, Any]] = [
            ("event_ids", "event_id", Uuid()),
            ("counts", "records_affected", Integer()),
        ]
        if not uniform:
            per_record += [
                ("statuses", "status", Text()),
                ("processed_at", "processed_at", DateTime(timezone=True)),
            ]
        rows = (
            func.unnest(*(_array(name, kind) for name, _, kind in per_record))
            .table_valued(*(column(col, kind) for _, col, kind in per_record))
            .render_derived(name="recorded")
        )
        status: Any = bindparam("status", type_=Text()) if uniform else rows.c.status
        processed_at: Any = (
            bindparam("processed_at", type_=DateTime(timezone=True))
            if uniform
            else rows.c.processed_at
        )
        return insert(t).from_select(
            [t.c.service, t.c.event_id, t.c.status, t.c.records_affected, t.c.processed_at],
            select(
                bindparam("service", type_=Text()),
                rows.c.event_id,
                status,
                rows.c.records_affected,
                processed_at,
            ),
        )

    @asynccontextmanager
    async def transaction(
        self, service: str, event_id: uuid.UUID
    ) -> AsyncIterator[StoreTransaction]:
        async with self._engine.begin() as conn:
            yield _SqlTransaction(self.table, service, conn)

    async def prune(self, service: str, before: datetime) -> int:
        """Delete in short transactions of `PRUNE_BATCH` rows, so a first prune of a
        large table never holds a long one; the table has no index on `processed_at`
        (one more per insert on the hot path for a daily job), so each is a scan."""
        t = self.table
        total = 0
        while True:
            old = (
                select(t.c.event_id)
                .where(t.c.service == service, t.c.processed_at < before)
                .limit(PRUNE_BATCH)
                .scalar_subquery()
            )
            async with self._engine.begin() as conn:
                deleted = (
                    await conn.execute(
                        delete(t).where(t.c.service == service, t.c.event_id.in_(old))
                    )
                ).rowcount
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    @asynccontextmanager
    async def batch(self, service: str) -> AsyncIterator[BatchTransaction]:
        async with self._engine.begin() as conn:
            batch = _SqlBatch(service, _Savepoints(conn), [])
            yield batch
            if batch.recorded:
                try:
                    # One INSERT of the batch; a delivery racing on any of the events blocks
                    # on its primary key and fails the whole batch, which is then redone
                    # event by event.
                    await conn.execute(*self._insert_of(service, batch.recorded))
                except IntegrityError as exc:
                    raise AlreadyRecorded(
                        ", ".join(str(p.event_id) for p in batch.recorded)
                    ) from exc


@dataclass(slots=True)
class _MemoryTransaction:
    conn: AsyncConnection | None
    recorded: list[ProcessedEvent]
    existing: Mapping[uuid.UUID, ProcessedEvent]

    @property
    def connection(self) -> AsyncConnection | None:
        return self.conn

    async def record(self, processed: ProcessedEvent) -> None:
        if processed.event_id in self.existing:
            raise AlreadyRecorded(str(processed.event_id))
        self.recorded.append(processed)


class InMemoryIdempotencyStore:
    """A dict of processed events, for tests.

    With an `engine`, each transaction also opens a database transaction and hands its
    connection to the handler, so handlers that write SQL can be tested as they run.
    """

    def __init__(self, engine: AsyncEngine | None = None) -> None:
        self._engine = engine
        self.processed: dict[tuple[str, uuid.UUID], ProcessedEvent] = {}

    @property
    def provides_connection(self) -> bool:
        return self._engine is not None

    async def open(self) -> None:
        """Nothing to create."""

    async def close(self) -> None:
        """Nothing to release."""

    async def lookup(
        self, service: str, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        return {
            event_id: self.processed[(service, event_id)]
            for event_id in event_ids
            if (service, event_id) in self.processed
        }

    async def batch_lookup(
        self, batch: BatchTransaction, event_ids: Iterable[uuid.UUID]
    ) -> Mapping[uuid.UUID, ProcessedEvent]:
        if not isinstance(batch, _MemoryBatch):
            raise TypeError("batch_lookup takes a batch of this store's own")
        return await self.lookup(batch.service, event_ids)

    @asynccontextmanager
    async def transaction(
        self, service: str, event_id: uuid.UUID
    ) -> AsyncIterator[StoreTransaction]:
        existing = await self.lookup(service, [event_id])
        recorded: list[ProcessedEvent] = []
        if self._engine is None:
            yield _MemoryTransaction(None, recorded, existing)
        else:
            async with self._engine.begin() as conn:
                yield _MemoryTransaction(conn, recorded, existing)
        # Only reached when the block (and the database commit) succeeded.
        for processed in recorded:
            self.processed[(service, processed.event_id)] = processed

    @asynccontextmanager
    async def batch(self, service: str) -> AsyncIterator[BatchTransaction]:
        if self._engine is None:
            batch = _MemoryBatch(service, None, [])
            yield batch
            self._check_new(service, batch.recorded)
        else:
            async with self._engine.begin() as conn:
                batch = _MemoryBatch(service, _Savepoints(conn), [])
                yield batch
                # Before the commit, so a clash rolls the handlers' writes back.
                self._check_new(service, batch.recorded)
        for processed in batch.recorded:
            self.processed[(service, processed.event_id)] = processed

    def _check_new(self, service: str, recorded: Sequence[ProcessedEvent]) -> None:
        taken = [str(p.event_id) for p in recorded if (service, p.event_id) in self.processed]
        if taken:
            raise AlreadyRecorded(", ".join(taken))


@dataclass(slots=True)
class _MemoryBatch:
    service: str
    savepoints: _Savepoints | None
    recorded: list[ProcessedEvent]

    def savepoint(self) -> AbstractAsyncContextManager[AsyncConnection | None]:
        if self.savepoints is None:
            return nullcontext(None)
        return self.savepoints()

    def record(self, processed: ProcessedEvent) -> None:
        self.recorded.append(processed)
