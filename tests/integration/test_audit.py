"""The audit chain verifies when untouched and names the first row that was tampered with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Executable, delete, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


@pytest.fixture
async def chain(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log))
        for i in range(5):
            await audit.append(
                conn,
                [audit.AuditEntry("batch_purged", "coordinator", {"policy": "p", "ids": [str(i)]})],
                at=T0 + timedelta(seconds=i),
            )
    yield engine
    await engine.dispose()


async def test_untouched_chain_verifies(chain: AsyncEngine) -> None:
    async with chain.connect() as conn:
        assert await audit.verify(conn) == (5, None)


@pytest.mark.parametrize(
    ("tamper", "seq", "reason"),
    [
        (update(audit_log).where(audit_log.c.seq == 3).values(data={"policy": "x"}), 3, "edited"),
        (update(audit_log).where(audit_log.c.seq == 2).values(at=T0), 2, "edited"),
        (delete(audit_log).where(audit_log.c.seq == 4), 4, "missing"),
    ],
)
async def test_tampering_names_the_row(
    chain: AsyncEngine, tamper: Executable, seq: int, reason: str
) -> None:
    async with chain.begin() as conn:
        await conn.execute(tamper)
    async with chain.connect() as conn:
        checked, broken = await audit.verify(conn)
    assert broken is not None
    assert (broken.seq, reason in broken.reason) == (seq, True)
    assert checked == seq - 1


async def test_reordering_is_detected(chain: AsyncEngine) -> None:
    async with chain.begin() as conn:
        # Swap rows 2 and 3 entirely (contents and hashes), keeping seq numbers.
        rows = {r.seq: r for r in (await conn.execute(audit_log.select())).all()}
        for a, b in ((2, 3), (3, 2)):
            src = rows[b]
            await conn.execute(
                update(audit_log)
                .where(audit_log.c.seq == a)
                .values(
                    at=src.at,
                    action=src.action,
                    data=src.data,
                    prev_hash=src.prev_hash,
                    hash=src.hash,
                )
            )
    async with chain.connect() as conn:
        _, broken = await audit.verify(conn)
    assert broken is not None
    assert broken.seq == 2
