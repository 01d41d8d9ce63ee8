"""The outbox's seq is commit order, and never starts over below the watermark."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.evidence.audit import AuditAction, AuditEntry
from coordinator.outbox.lookup import published_up_to
from coordinator.outbox.write import EventBatch, enqueue
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log, outbox_batches, outbox_marks
from tests.outbox import clear_outbox

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def batch(*entities: str) -> EventBatch:
    return EventBatch(
        policy="p",
        event_type="delete",
        entity_type="user",
        legal_basis="b",
        initiated_at=T0,
        deadline=T0 + timedelta(days=30),
        entity_ids=list(entities),
    )


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db)
    await clear_outbox(engine)
    yield engine
    await clear_outbox(engine)
    await engine.dispose()


async def test_a_later_writer_waits_and_gets_the_next_seq(engine: AsyncEngine) -> None:
    async with engine.connect() as first:
        await first.begin()
        first_seq = await enqueue(first, batch("1", "2"))

        async def second() -> int:
            async with engine.begin() as conn:
                return await enqueue(conn, batch("3"))

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.5)
        # The first transaction holds the chain's lock: no seq can be handed out behind it
        # and commit before it.
        assert not waiting.done()
        await first.commit()
    assert await asyncio.wait_for(waiting, 10) == first_seq + 1


async def test_seq_continues_after_every_batch_was_pruned(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        seq = await enqueue(conn, batch("1"))
        await conn.execute(insert(outbox_marks).values(up_to=seq, published_at=T0, events=1))
        await conn.execute(delete(outbox_batches))
    async with engine.begin() as conn:
        assert await published_up_to(conn) == seq
        # Seq 1 again would sit below the watermark and never be published.
        assert await enqueue(conn, batch("2")) == seq + 1


async def test_an_empty_batch_writes_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await enqueue(conn, batch()) == 0


def recorded(count: int) -> AuditEntry:
    return AuditEntry(AuditAction.PURGE_BATCH, "coordinator", {"count": count})


async def test_the_audit_entry_is_written_with_the_row_and_chains_on(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await audit.append(conn, [recorded(0)], at=T0)
        seq = await enqueue(conn, batch("1", "2"), recorded=recorded(2))
        assert await enqueue(conn, batch("3"), recorded=recorded(1)) == seq + 1
    async with engine.connect() as conn:
        assert await audit.verify(conn) == (3, None)
        entries = (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).all()
        assert [e.data for e in entries] == [{"count": 0}, {"count": 2}, {"count": 1}]
        assert {e.at for e in entries} == {T0}
        rows = (await conn.execute(select(outbox_batches).order_by(outbox_batches.c.seq))).all()
        assert [r.entity_ids for r in rows] == [["1", "2"], ["3"]]


async def test_an_empty_batch_writes_only_its_audit_entry(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await enqueue(conn, batch(), recorded=recorded(0)) == 0
    async with engine.connect() as conn:
        assert await audit.verify(conn) == (1, None)
        assert (await conn.execute(select(outbox_batches))).first() is None


async def test_ids_and_subjects_arrive_exactly_as_given(engine: AsyncEngine) -> None:
    """The id arrays travel as one array literal (coordinator/outbox/write.py
    `_array_literal`): order, quotes, commas, backslashes, braces, blanks, newlines,
    non-ASCII, the text NULL and missing subjects survive."""
    ids = ['a"b', "c,d", "e\\f", "{g}", "NULL", "ü ñ", " h ", "9", "", "x\ny"]
    subjects: list[str | None] = [
        "user:1",
        None,
        'user:"2"',
        None,
        "u:3",
        None,
        "",
        None,
        "x",
        None,
    ]
    plain = [str(n) for n in range(1, 6)]
    async with engine.begin() as conn:
        await enqueue(conn, dataclasses.replace(batch(*ids), subjects=subjects))
        await enqueue(conn, batch(*plain))
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox_batches).order_by(outbox_batches.c.seq))).all()
    assert [(r.entity_ids, r.subjects, r.events) for r in rows] == [
        (ids, subjects, len(ids)),
        (plain, None, len(plain)),
    ]
