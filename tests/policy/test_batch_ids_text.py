"""A one-pass delete's ids reach the outbox row and the audit entry exactly, in key
order, whether the batch statement returns them as the array's text split here (integer
and uuid keys) or as a text[] (text keys, whose elements may be quoted):
coordinator/purge/batch.py `_plain_text`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Text, Uuid, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.policy.model import parse_policies
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.tables import audit_log, outbox_batches
from tests.policy.conftest import NOW

meta = MetaData()
KEYS: dict[str, tuple[Any, list[Any]]] = {
    "big": (BigInteger, [-(2**63), -1, 0, 7, 10, 2**63 - 1]),
    "cart": (Uuid, sorted(uuid.UUID(int=n * 0x1234567890ABCDEF) for n in range(1, 8))),
    "name": (Text, ['a"b', "c,d", "e\\f", "{g}", "NULL", "ü ñ", " h ", "x\ny", "plain"]),
}
TABLES = {
    kind: Table(
        f"ids_text_{kind}",
        meta,
        Column("id", key, primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    for kind, (key, _) in KEYS.items()
}


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)


@pytest.mark.parametrize("kind", list(KEYS))
async def test_the_events_and_the_audit_name_every_deleted_id_in_key_order(
    tables: AsyncEngine, clock: FrozenClock, settings: Settings, kind: str
) -> None:
    table, ids = TABLES[kind], KEYS[kind][1]
    async with tables.begin() as conn:
        await conn.execute(
            insert(table), [{"id": i, "created_at": NOW - timedelta(days=9)} for i in ids]
        )
        # The database's order and text of the keys, as the events must name them.
        expected = list(
            (await conn.execute(select(table.c.id.cast(Text)).order_by(table.c.id))).scalars()
        )
    policies = parse_policies(
        f"policies:\n  - {{name: p_{kind}, table: {table.name}, entity_type: e_{kind},"
        " timestamp_column: created_at, retention: 1d, action: delete, legal_basis: test,"
        " batch_size: 4, fan_out: true}\n"
        f"services:\n  - {{name: s, owner: tests, handles: {{e_{kind}: [delete]}}}}\n"
    )
    report = await Runner(tables, policies, settings, clock=clock).run()
    assert report.ok
    assert report.outcomes[0].processed == len(ids)
    async with tables.connect() as conn:
        rows = (
            await conn.execute(
                select(outbox_batches.c.entity_ids, outbox_batches.c.events)
                .where(outbox_batches.c.policy == f"p_{kind}")
                .order_by(outbox_batches.c.seq)
            )
        ).all()
        logged = (
            await conn.execute(
                select(audit_log.c.data)
                .where(audit_log.c.action == audit.AuditAction.PURGE_BATCH)
                .where(audit_log.c.data["policy"].astext == f"p_{kind}")
                .order_by(audit_log.c.seq)
            )
        ).scalars()
        assert (await audit.verify(conn))[1] is None
    assert [i for row in rows for i in row.entity_ids] == expected
    assert all(row.events == len(row.entity_ids) <= 4 for row in rows)
    assert [i for data in logged for i in data["ids"]] == expected
