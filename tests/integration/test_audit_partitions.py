"""The audit log partitioned by month: pruning drops whole months and leaves the chain
verifiable; an existing log converts batch by batch, resumably, while rows keep coming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.evidence.checkpoints import verify_chain
from coordinator.evidence.partitions import (
    AUDIT,
    Month,
    convert,
    ensure_months,
    is_partitioned,
    months,
)
from coordinator.evidence.prune import prune_audit
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_checkpoints, audit_log
from schemas.signing import Verifier
from tests import infra, keys

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SIGNER = keys.signer(keys.COORDINATOR)
VERIFIER = Verifier([SIGNER.public])


async def _append(engine: AsyncEngine, *ats: datetime) -> None:
    async with engine.begin() as conn:
        for at in ats:
            await audit.append(conn, [audit.AuditEntry("events_published", "relay", {})], at=at)


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log))
        await conn.execute(delete(audit_checkpoints))
    yield engine
    await engine.dispose()


async def test_pruning_drops_whole_months_and_the_chain_still_verifies(
    engine: AsyncEngine,
) -> None:
    old = [Month.of(datetime(2019, 1, 1, tzinfo=UTC)), Month.of(datetime(2019, 2, 1, tzinfo=UTC))]
    async with engine.begin() as conn:
        assert await is_partitioned(conn)
        await ensure_months(conn, old)
    jan, feb = (m.bounds()[0] for m in old)
    await _append(
        engine,
        *(jan + timedelta(hours=h) for h in range(5)),
        *(feb + timedelta(hours=h) for h in range(5)),
        NOW - timedelta(days=1),
        NOW,
    )
    async with engine.connect() as conn:
        assert set(old) <= set(await months(conn))
        in_january = (
            await conn.execute(text(f"SELECT count(*) FROM {AUDIT.partition(old[0])}"))
        ).scalar_one()
    assert in_january == 5

    dry = await prune_audit(engine, now=NOW, keep=timedelta(days=2192), dry_run=True, signer=None)
    assert dry.rows == 10
    pruned = await prune_audit(
        engine, now=NOW, keep=timedelta(days=2192), dry_run=False, signer=SIGNER
    )
    assert pruned.rows == 10
    async with engine.connect() as conn:
        left = set(await months(conn))
        assert not set(old) & left
        # One checkpoint per month's run of rows; the chain verifies across both.
        spans = (
            await conn.execute(
                select(audit_checkpoints.c.first_seq, audit_checkpoints.c.last_seq).order_by(
                    audit_checkpoints.c.first_seq
                )
            )
        ).all()
        report = await verify_chain(conn, full=True, verifier=VERIFIER)
    assert [tuple(s) for s in spans] == [(1, 5), (6, 10)]
    assert report.broken is None
    assert report.rows_checked >= 2


async def test_an_existing_log_converts_batch_by_batch_while_rows_keep_coming(
    postgres_url: str,
) -> None:
    url = await infra.create_database(postgres_url, "audit_convert")
    engine = make_engine(url)
    try:
        await upgrade(url, "0020_own_retention")
        base = datetime(2026, 10, 3, tzinfo=UTC)
        await _append(engine, *(base + timedelta(days=d) for d in range(25)))
        await upgrade(url)  # 0021: the log has rows, so only the shadow table is made
        async with engine.connect() as conn:
            assert not await is_partitioned(conn)

        first = await convert(engine, batch=5, max_batches=2)
        assert (first.copied, first.swapped) == (10, False)
        # serve keeps appending to the old table meanwhile; an interruption loses nothing.
        await _append(engine, *(base + timedelta(days=30 + d) for d in range(7)))
        rest = await convert(engine, batch=5)
        assert rest.swapped
        assert rest.copied == 22
        await _append(engine, NOW)

        async with engine.connect() as conn:
            assert await is_partitioned(conn)
            count = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
            names = {AUDIT.partition(m) for m in await months(conn)}
            report = await verify_chain(conn, full=True)
        assert count == 33
        assert {"audit_log_y2026m10", "audit_log_y2026m11", "audit_log_y2026m12"} <= names
        assert (report.broken, report.rows_checked) == (None, 33)
        assert (await convert(engine)).swapped
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def test_a_month_with_rows_out_of_order_leaves_one_checkpoint_per_run(
    engine: AsyncEngine,
) -> None:
    january = Month.of(datetime(2019, 1, 1, tzinfo=UTC))
    async with engine.begin() as conn:
        await ensure_months(conn, [january])
    jan = january.bounds()[0]
    # A clock far off stamps seq 3 today between January rows: January holds 1, 2, 4.
    await _append(engine, jan, jan + timedelta(hours=1), NOW - timedelta(days=1), jan, NOW)
    pruned = await prune_audit(
        engine, now=NOW, keep=timedelta(days=2192), dry_run=False, signer=SIGNER
    )
    assert pruned.rows == 3
    async with engine.connect() as conn:
        spans = (
            await conn.execute(
                select(audit_checkpoints.c.first_seq, audit_checkpoints.c.last_seq).order_by(
                    audit_checkpoints.c.first_seq
                )
            )
        ).all()
        report = await verify_chain(conn, full=True, verifier=VERIFIER)
    assert [tuple(s) for s in spans] == [(1, 2), (4, 4)]
    assert report.broken is None
    assert report.rows_checked == 3  # rows 3 and 5, and the db.prune entry
