"""Compiled conditions run on the real PostgreSQL: random valid ones execute, junk never
reaches the server as text, and the rows selected are the ones SQL semantics promise."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.policy.conditions import ConditionError, compile_condition
from coordinator.store.db import make_engine
from tests.condition_grammar import junk, metadata, orders, valid_condition

UTC = dt.UTC
ROWS = [
    {
        "id": 1, "status": "closed", "note": "50% off", "kind": "closed",
        "amount": Decimal("10.50"), "score": 0.5, "big": 2**62, "active": True,
        "created_at": dt.datetime(2024, 1, 1), "resolved_at": dt.datetime(2024, 2, 1, tzinfo=UTC),
        "birthday": dt.date(1990, 5, 17), "opens_at": dt.time(8, 0),
        "ref": uuid.UUID(int=1), "payload": {"a": 1}, "CreatedBy": "ops", "order": "o'1",
    },
    {
        "id": 2, "status": "open", "note": "it's", "kind": "new",
        "amount": Decimal("99.99"), "score": -1.0, "big": -5, "active": False,
        "created_at": dt.datetime(2025, 6, 1), "resolved_at": None,
        "birthday": dt.date(2001, 1, 1), "opens_at": dt.time(17, 30),
        "ref": uuid.UUID(int=2), "payload": None, "CreatedBy": "Ops", "order": "o_2",
    },
    {
        "id": 3, "status": "closed", "note": None, "kind": "closed",
        "amount": None, "score": None, "big": None, "active": None,
        "created_at": None, "resolved_at": None, "birthday": None, "opens_at": None,
        "ref": None, "payload": None, "CreatedBy": None, "order": None,
    },
    {
        "id": 4, "status": None, "note": "x\\y", "kind": None,
        "amount": Decimal("0"), "score": 1e10, "big": 0, "active": True,
        "created_at": dt.datetime(2023, 12, 31, 23, 59),
        "resolved_at": dt.datetime(2023, 12, 31, 22, 0, tzinfo=UTC),
        "birthday": dt.date(2000, 2, 29), "opens_at": dt.time(0, 0),
        "ref": uuid.UUID(int=4), "payload": [], "CreatedBy": "", "order": "%",
    },
]  # fmt: skip


class Database:
    """One event loop for the whole module, so hypothesis examples can share an engine."""

    def __init__(self, url: str) -> None:
        self.runner = asyncio.Runner()
        self.engine: AsyncEngine = make_engine(url, pool_size=1)
        self.runner.run(self._create())

    async def _create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(orders), ROWS)

    def ids(self, text: str) -> list[int]:
        return self.runner.run(self._ids(text))

    async def _ids(self, text: str) -> list[int]:
        where = compile_condition(text, orders)
        async with self.engine.connect() as conn:
            result = await conn.execute(select(orders.c.id).where(where).order_by(orders.c.id))
            return list(result.scalars())

    def count(self, text: str) -> int:
        return self.runner.run(self._count(text))

    async def _count(self, text: str) -> int:
        where = compile_condition(text, orders)
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(orders).where(where)))

    def close(self) -> None:
        self.runner.run(self.engine.dispose())
        self.runner.close()


@pytest.fixture(scope="module")
def db(fresh_database: str) -> Iterator[Database]:
    database = Database(fresh_database)
    yield database
    database.close()


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("status = 'closed' AND resolved_at IS NOT NULL", [1]),
        # NOT > AND > OR
        ("status = 'open' OR status = 'closed' AND active", [1, 2]),
        ("(status = 'open' OR status = 'closed') AND active", [1]),
        ("NOT active AND id > 0", [2]),
        ("NOT (active AND id > 1)", [1, 2]),
        # SQL three-valued logic: NULL rows match neither a test nor its negation
        ("status != 'closed'", [2]),
        ("status NOT IN ('closed')", [2]),
        ("NOT status = 'closed'", [2]),
        ("status IS NULL", [4]),
        ("status IN ('open', 'closed')", [1, 2, 3]),
        # quoting and LIKE
        ("note = 'it''s'", [2]),
        ("note = 'x\\y'", [4]),
        ("note LIKE '50\\%%'", [1]),
        ("note LIKE '%''%'", [2]),
        ('"order" LIKE \'o\\_%\'', [2]),
        ('"order" NOT LIKE \'o%\'', [4]),
        ('"CreatedBy" = \'ops\'', [1]),
        # typed literals
        ("amount >= 10.5", [1, 2]),
        ("id > 1.5", [2, 3, 4]),
        ("big > 4611686018427387904", []),
        ("big >= 4611686018427387904", [1]),
        ("score < 0", [2]),
        ("kind = 'new'", [2]),
        ("resolved_at < '2024-01-01'", [4]),
        ("resolved_at < '2024-01-01T00:30:00+01:00'", [4]),
        ("created_at >= '2024-01-01T01:00:00+01:00'", [1, 2]),
        ("birthday = '2000-02-29'", [4]),
        ("opens_at > '12:00'", [2]),
        ("ref = '00000000-0000-0000-0000-000000000002'", [2]),
        ("payload IS NOT NULL", [1, 4]),
        # column against column
        ("created_at > resolved_at", [4]),
        ("amount > score", [1, 2]),
    ],
)  # fmt: skip
def test_conditions_select_the_rows_sql_semantics_promise(
    db: Database, text: str, ids: list[int]
) -> None:
    assert db.ids(text) == ids


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=valid_condition)
def test_random_valid_conditions_execute(db: Database, text: str) -> None:
    assert 0 <= db.count(text) <= len(ROWS)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=junk)
def test_random_junk_is_rejected_before_the_database_or_runs_cleanly(
    db: Database, text: str
) -> None:
    try:
        count = db.count(text)
    except ConditionError:
        return
    assert 0 <= count <= len(ROWS)
