"""`services.EXAMPLES`: each description gives its service's app, tables and seed."""

from __future__ import annotations

import importlib

import pytest
from sqlalchemy import func, select

from consumer_sdk import RetentionConsumer
from consumer_sdk.faust import FaustRetention
from services import EXAMPLES, NAMES
from services._shared import engine_for
from services.example import Example


def test_one_description_per_service_package() -> None:
    assert [e.name for e in EXAMPLES] == list(NAMES)
    for e in EXAMPLES:
        module = importlib.import_module(f"services.{e.name}")
        assert module.EXAMPLE is e
        assert e.metadata.schema == e.name
        assert e.erasure_log not in e.tables
        assert e.tables, e.name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_the_app_registers_exactly_the_declared_handlers(example: Example) -> None:
    app = example.create_app(database_url="postgresql://unused@127.0.0.1/none")
    assert isinstance(app, FaustRetention if example.faust else RetentionConsumer)
    consumer = app.retention if isinstance(app, FaustRetention) else app
    registered = {
        (h.entity_type, action) for h in consumer.registration().handles for action in h.actions
    }
    assert registered == {(h.entity_type, h.action) for h in example.handlers}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
async def test_seed_inserts_the_declared_rows(example: Example, fresh_database: str) -> None:
    users = [f"seed-{example.name}-1", f"seed-{example.name}-2"]
    wanted = {t.name: len(rows) for t, rows in example.seed_rows(users).items()}
    assert await example.seed(fresh_database, users) == sum(wanted.values())
    engine = engine_for(fresh_database)
    try:
        async with engine.connect() as conn:
            for table in example.tables:
                count = await conn.scalar(
                    select(func.count()).select_from(table).where(table.c.user_id.in_(users))
                )
                assert count == wanted[table.name] > 0, table.name
    finally:
        await engine.dispose()
