"""Entity ids an array literal must escape: each one statement's handler call (the
ids bound as one literal, read once in a scalar subquery) deletes, counts and logs
exactly that entity's rows, and nothing of a look-alike id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import EntityNotFound, EventType
from services import billing, notifications
from services._shared import delete_users_rows, engine_for
from services.billing.service import anonymize_orders
from tests.sdk.helpers import event

# Quoting, separators, braces, escapes, the literal's NULL and whitespace that an
# unquoted element would lose; each has a look-alike that must stay untouched.
AWKWARD = ["a,b", 'q"t', "{br}", "b\\s", "NULL", "null", " sp ", "é€", "x}y{"]
LOOKALIKES = ["a", "b", "qt", "br", "bs", "sp", "x", "y", "NUL"]
# Without a quote or backslash the literal is msgspec's JSON with braces; with one, each
# element is escaped on its own (`consumer_sdk.arrays`): both ways.
AS_JSON = [i for i in AWKWARD if '"' not in i and "\\" not in i]
ids = pytest.mark.parametrize("awkward", [AWKWARD, AS_JSON], ids=["escaped", "as_json"])


async def insert(conn: AsyncConnection, rows: Mapping[Table, list[dict[str, Any]]]) -> None:
    for table, values in rows.items():
        await conn.execute(table.insert(), values)


@ids
async def test_user_deletes_touch_exactly_the_awkward_ids(
    fresh_database: str, awkward: list[str]
) -> None:
    await notifications.seed(fresh_database, [])
    n, log = notifications.notifications, notifications.erasure_log
    events = [event(user) for user in awkward]
    engine = engine_for(fresh_database)
    try:
        # Rolled back: each case starts from empty tables.
        async with engine.connect() as conn, conn.begin() as tx:
            await insert(conn, notifications.service.seed_rows([*awkward, *LOOKALIKES]))
            results = await delete_users_rows(conn, n, log, events, "none")
            left = set((await conn.execute(select(n.c.user_id).distinct())).scalars())
            logged = (await conn.execute(select(log.c.event_id, log.c.user_id, log.c.rows))).all()
            await tx.rollback()
    finally:
        await engine.dispose()
    assert results == [3] * len(awkward)
    assert left == set(LOOKALIKES)
    assert sorted(logged) == sorted((e.event_id, e.entity_id, 3) for e in events)


@ids
async def test_order_anonymizes_touch_exactly_the_awkward_ids(
    fresh_database: str, awkward: list[str]
) -> None:
    await billing.seed(fresh_database, [])
    o, log = billing.orders, billing.erasure_log
    events = [
        event(order, entity_type="order", action=EventType.ANONYMIZE)
        for order in [*awkward, "missing"]
    ]
    engine = engine_for(fresh_database)
    try:
        async with engine.connect() as conn, conn.begin() as tx:
            rows = billing.service.seed_rows(
                ["u1", "u2"], order_ids={"u1": awkward, "u2": LOOKALIKES}
            )
            await insert(conn, rows)
            results = await anonymize_orders(events, conn)
            masked = set(
                (await conn.execute(select(o.c.id).where(o.c.anonymized_at.is_not(None)))).scalars()
            )
            logged = (await conn.execute(select(log.c.entity_id, log.c.rows))).all()
            await tx.rollback()
    finally:
        await engine.dispose()
    assert results[:-1] == [1] * len(awkward)
    assert isinstance(results[-1], EntityNotFound)
    assert masked == set(awkward)
    assert sorted(logged) == sorted((order, 1) for order in awkward)
