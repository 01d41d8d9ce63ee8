"""`retention db partition` on a deployment that ran migration 0031 mid-conversion: the
ledger rows, status rows and audit entries a tracker linked (`audit_link`,
`completed_audit_link`, `audit_log.link`) keep their links through the copy and the swap,
so a certificate cites the same entries before and after, and the converted log keeps
the index its (link, action) reads use, on the months created after the swap too. A
conversion that would not copy a column (an older version's, before 0031) refuses."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.evidence.checkpoints import verify_chain
from coordinator.evidence.partitions import (
    AUDIT,
    LEDGER,
    Month,
    UncopiedColumns,
    convert,
    ensure_months,
    is_partitioned,
)
from coordinator.kafka.admin import ensure_topics
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import ack_ledger, audit_log, event_status
from coordinator.tracking import queries
from schemas import KafkaSettings
from tests import infra, keys
from tests.integration.tracking_support import (
    ack,
    drain,
    insert_published,
    make_tracker,
    produce,
    registration,
)

T0 = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)
SERVICES = ("billing", "notifications")


@pytest.fixture
async def mid_conversion(postgres_url: str) -> AsyncIterator[str]:
    """A deployment whose audit log and ack ledger had rows when migrations 0021 and 0025
    ran (so they made only the shadow tables), upgraded to the newest revision."""
    url = await infra.create_database(postgres_url, "audit_link_partitions")
    engine = make_engine(url)
    try:
        await upgrade(url, "0020_own_retention")
        async with engine.begin() as conn:
            await audit.append(
                conn,
                [audit.AuditEntry("events_published", "relay", {})],
                at=T0 - timedelta(days=40),
            )
        await upgrade(url, "0024_outbox_partitions")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO retention_ack_ledger (received_at, kafka_topic,"
                    " kafka_partition, kafka_offset, event_id, service, status, attempt,"
                    " accepted) VALUES (:at, 'acks', 0, 0, NULL, 'billing', 'completed', 1,"
                    " false)"
                ),
                {"at": T0 - timedelta(days=40)},
            )
        await upgrade(url)
        async with engine.connect() as conn:
            for layout in (AUDIT, LEDGER):
                assert not await is_partitioned(conn, layout.parent)
        yield url
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def _certificates(engine: AsyncEngine, users: list[str]) -> list[dict[str, Any] | None]:
    async with engine.connect() as conn:
        return [
            await queries.certificate(conn, "user", user, now=T0 + timedelta(days=1))
            for user in users
        ]


async def _linked(engine: AsyncEngine) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        counts = [
            await conn.scalar(select(func.count()).where(column.is_not(None)))
            for column in (
                audit_log.c.link,
                ack_ledger.c.audit_link,
                event_status.c.completed_audit_link,
            )
        ]
    return counts[0] or 0, counts[1] or 0, counts[2] or 0


async def test_linked_rows_convert_and_certificates_cite_the_same_entries(
    mid_conversion: str, kafka_bootstrap: str
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=infra.unique_topic_prefix("linkparts")
    )
    await ensure_topics(kafka, partitions=1)
    clock = FrozenClock(T0)
    tracker, engine, _ = make_tracker(
        mid_conversion,
        kafka,
        clock,
        services=[keys.declared(s, {"user": ["delete"]}) for s in SERVICES],
    )
    await tracker.start()
    try:
        await produce(
            kafka,
            kafka.topics.services,
            [registration(s, T0 - timedelta(days=1)) for s in SERVICES],
        )
        await tracker.sync_registry()
        users = ["42", "43"]
        events = dict(
            zip(users, await insert_published(engine, users, published_at=T0), strict=True)
        )
        await tracker.track_published()

        async def acknowledge(user: str, minute: int) -> None:
            records = [ack(events[user], s, user, T0 + timedelta(minutes=minute)) for s in SERVICES]
            # A forged ack from an unknown service: a rejected row, linked too.
            records.append(ack(events[user], "mallory", user, T0 + timedelta(minutes=minute)))
            await produce(kafka, kafka.topics.acks, records)
            await drain(tracker, len(records))

        await acknowledge("42", 1)
        # Part of each table copied; the tracker goes on writing linked rows to the old
        # ones, which the conversion's later steps copy.
        for layout in (AUDIT, LEDGER):
            assert not (await convert(engine, layout, batch=2, max_batches=1)).swapped
        await acknowledge("43", 2)
        before = await _certificates(engine, users)
        linked = await _linked(engine)
        assert all(linked), linked
        for layout in (AUDIT, LEDGER):
            assert (await convert(engine, layout, batch=2)).swapped
        after = await _certificates(engine, users)
        assert await _linked(engine) == linked
    finally:
        await tracker.stop()
        await engine.dispose()

    assert after == before
    for document in after:
        assert document is not None
        assert document["complete"] is True
        [event] = document["events"]
        refs = [a["audit"] for a in event["acknowledgements"]] + [event["evidence"]["completed"]]
        assert len(refs) == len(SERVICES) + 1
        assert all(ref is not None for ref in refs), refs

    engine = make_engine(mid_conversion)
    try:
        async with engine.begin() as conn:
            assert await is_partitioned(conn, AUDIT.parent)
            assert await is_partitioned(conn, LEDGER.parent)
            assert (await verify_chain(conn, full=True)).broken is None
            # A month created after the swap gets the link index from the parent's.
            await ensure_months(conn, [Month.of(T0 + timedelta(days=400))], AUDIT)
        await _assert_link_indexed(engine)
    finally:
        await engine.dispose()


async def _assert_link_indexed(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        parent = (
            await conn.execute(
                text(
                    "SELECT x.indisvalid FROM pg_index x"
                    " WHERE x.indexrelid = to_regclass('ix_audit_log_link')"
                    " AND x.indrelid = 'audit_log'::regclass"
                )
            )
        ).scalar_one_or_none()
        unindexed = (
            (
                await conn.execute(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                        " WHERE i.inhparent = 'audit_log'::regclass AND NOT EXISTS ("
                        "  SELECT 1 FROM pg_inherits j JOIN pg_index x ON x.indexrelid = j.inhrelid"
                        "  WHERE j.inhparent = 'ix_audit_log_link'::regclass"
                        "  AND x.indrelid = c.oid AND x.indisvalid)"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert parent is True
    assert unindexed == []


async def test_a_conversion_that_would_drop_a_column_refuses_and_copies_nothing(
    mid_conversion: str,
) -> None:
    # The layouts of a version before 0031: they copy no link.
    older = [
        dataclasses.replace(AUDIT, columns=AUDIT.columns[:-1], indexes=("ix_action",)),
        dataclasses.replace(LEDGER, columns=LEDGER.columns[:-1]),
    ]
    assert [layout.columns[-1] for layout in (AUDIT, LEDGER)] == ["link", "audit_link"]
    engine = make_engine(mid_conversion)
    try:
        for layout, column in zip(older, ("link", "audit_link"), strict=True):
            with pytest.raises(UncopiedColumns) as refused:
                await convert(engine, layout, batch=2)
            assert refused.value.columns == [column]
            async with engine.connect() as conn:
                assert await conn.scalar(text(f"SELECT count(*) FROM {layout.shadow}")) == 0
                assert not await is_partitioned(conn, layout.parent)
        # A column a later migration adds, which this version's layout does not name.
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE audit_log ADD COLUMN later bigint"))
    finally:
        await engine.dispose()
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["db", "partition", "audit_log"],
        env={"RETENTION_DATABASE_URL": mid_conversion, "RETENTION_HASH_SECRET": "k"},
    )
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "audit_log has columns this version does not copy: later" in result.stderr
