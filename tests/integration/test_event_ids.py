"""Migration 0005's UUIDv7 functions: valid RFC 9562 version-7 ids, time-ordered, unique."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.store.db import make_engine

BATCH = """
SELECT retention_uuidv7_nth(base, n) AS id, n
FROM (SELECT retention_uuidv7() AS base) b, generate_series(1, :n) n
"""


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db)
    yield engine
    await engine.dispose()


def unix_ms(value: uuid.UUID) -> int:
    return value.int >> 80


async def test_uuidv7_is_version_7_variant_rfc_and_carries_the_time(engine: AsyncEngine) -> None:
    before = int(time.time() * 1000)
    async with engine.connect() as conn:
        ids = list(
            (
                await conn.execute(text("SELECT retention_uuidv7() FROM generate_series(1, 500)"))
            ).scalars()
        )
    after = int(time.time() * 1000)
    assert len(set(ids)) == 500
    for value in ids:
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        # Same host, one clock: the embedded milliseconds lie within the call (± 1 s slack).
        assert before - 1000 <= unix_ms(value) <= after + 1000


async def test_uuidv7_is_time_ordered_across_milliseconds(engine: AsyncEngine) -> None:
    seen = []
    async with engine.connect() as conn:
        for _ in range(5):
            seen.append((await conn.execute(text("SELECT retention_uuidv7()"))).scalar_one())
            await asyncio.sleep(0.003)
    assert seen == sorted(seen)
    assert len({unix_ms(v) for v in seen}) == 5


async def test_nth_ids_of_a_batch_are_unique_ascending_and_version_7(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        first = (await conn.execute(text(BATCH), {"n": 5000})).all()
        await asyncio.sleep(0.003)
        second = (await conn.execute(text(BATCH), {"n": 5000})).all()
    ids = [row.id for row in first]
    assert ids == sorted(ids), "ascending by n within a batch"
    assert len(set(ids) | {row.id for row in second}) == 10_000
    assert min(row.id for row in second) > max(ids), "a later batch sorts after an earlier one"
    for row in first + second:
        assert row.id.version == 7
        assert row.id.variant == uuid.RFC_4122
        assert row.id.int & 0xFFFFFFFF == row.n
    assert len({unix_ms(row.id) for row in first}) == 1, "one base per batch"
