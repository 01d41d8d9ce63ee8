"""Verify events in the system's own retention (SPEC §13; docs/verification.md): their
outbox batches go past the outbox retention (row by row and by whole months) with their
publication time kept, their entity ids become HMACs at the same age and are still found
by the entity view, and the records go past the event status retention."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.copies.verification.queries import entity_verifications
from coordinator.evidence.audit import AuditAction
from coordinator.evidence.partitions import OUTBOX, Month, ensure_months
from coordinator.evidence.prune import prune_own_data
from coordinator.evidence.pseudonyms import Pepper
from coordinator.evidence.retention import Retention
from coordinator.outbox.lookup import TRACKED
from coordinator.outbox.prune import prune_outbox
from coordinator.store.db import make_engine
from coordinator.store.tables import (
    audit_log,
    outbox_batches,
    outbox_cursors,
    verifications,
    verify_answers,
)
from tests import keys
from tests.outbox import clear_outbox, insert_rows

NOW = datetime.now(UTC)
DAY, YEAR = timedelta(days=1), timedelta(days=365)
RETENTION = Retention(outbox=30 * DAY, ack_ledger=6 * YEAR, event_status=6 * YEAR, audit=6 * YEAR)
PEPPER = Pepper(b"p" * 32)
SIGNER = keys.signer(keys.COORDINATOR)

# entity id → when its verification was requested (and its batch written and published)
ASKED = {
    "asked 7 years ago": NOW - 7 * YEAR,
    "asked 40 days ago": NOW - 40 * DAY,
    "asked 5 days ago, unanswered": NOW - 5 * DAY,
}
PUBLISHED_AFTER = timedelta(seconds=3)


async def _world(engine: AsyncEngine, *, months: bool = False) -> dict[str, uuid.UUID]:
    """One published and tracked verify batch per entry of `ASKED`, its verification and
    one service's answer (pending for the recent one); with `months`, each old batch in a
    monthly partition of its own."""
    await clear_outbox(engine)
    async with engine.begin() as conn:
        await conn.execute(delete(verifications))  # their answers with them
        if months:
            await ensure_months(conn, {Month.of(at) for at in ASKED.values()}, OUTBOX)
    rows: list[dict[str, Any]] = [
        {
            "run_id": uuid.uuid4(),
            "policy": "on_demand",
            "event_type": "verify",
            "entity_type": "user",
            "entity_id": entity,
            "legal_basis": "Verification of a completed deletion",
            "initiated_at": at,
            "deadline": at + DAY,
            "published_at": at + PUBLISHED_AFTER,
        }
        for entity, at in ASKED.items()
    ]
    await insert_rows(engine, rows)
    ids = {row["entity_id"]: row["event_id"] for row in rows}
    async with engine.begin() as conn:
        b = outbox_batches.c
        await conn.execute(update(outbox_batches).values(created_at=b.initiated_at))
        last = (await conn.execute(select(func.max(b.seq)))).scalar_one()
        await conn.execute(insert(outbox_cursors).values(name=TRACKED, seq=last))
        for entity, at in ASKED.items():
            await conn.execute(
                insert(verifications).values(
                    event_id=ids[entity],
                    entity_type="user",
                    entity_id=entity,
                    policy="on_demand",
                    trigger="on_demand",
                    requested_by="op",
                    requested_at=at,
                )
            )
            answered = "unanswered" not in entity
            await conn.execute(
                insert(verify_answers).values(
                    event_id=ids[entity],
                    service="billing",
                    status="verified" if answered else "pending",
                    records_affected=0 if answered else None,
                    acknowledged_at=at + DAY / 2 if answered else None,
                )
            )
    return ids


async def _batches(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(outbox_batches))).scalar())


async def _published(engine: AsyncEngine, entity: str) -> str | None:
    async with engine.connect() as conn:
        [found] = await entity_verifications(conn, "user", entity)
    published: str | None = found["published_at"]
    return published


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


async def test_a_verify_batch_is_pruned_past_the_outbox_retention_its_publication_kept(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
    try:
        await _world(engine)
        # Younger than the retention: nothing goes.
        pruned = await prune_outbox(engine, now=NOW, keep=50 * YEAR, dry_run=False)
        assert (pruned.rows, await _batches(engine)) == (0, 3)

        dry = await prune_outbox(engine, now=NOW, keep=RETENTION.outbox, dry_run=True)
        assert (dry.rows, await _batches(engine)) == (2, 3)

        pruned = await prune_outbox(engine, now=NOW, keep=RETENTION.outbox, dry_run=False)
        assert pruned.rows == 2
        async with engine.connect() as conn:
            left = (await conn.execute(select(outbox_batches.c.entity_ids))).scalars().all()
        # The unanswered recent one stays.
        assert left == [["asked 5 days ago, unanswered"]]
        # What the views showed from the outbox, they show from the record.
        for entity, at in ASKED.items():
            assert await _published(engine, entity) == _iso(at + PUBLISHED_AFTER), entity
    finally:
        await engine.dispose()


async def test_a_month_of_verify_batches_dropped_keeps_their_publication(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
    try:
        await _world(engine, months=True)
        pruned = await prune_outbox(engine, now=NOW, keep=RETENTION.outbox, dry_run=False)
        assert pruned.rows == 2
        assert {OUTBOX.partition(Month.of(ASKED[e])) for e in list(ASKED)[:2]} <= set(
            pruned.partitions
        )
        assert await _batches(engine) == 1
        for entity, at in ASKED.items():
            assert await _published(engine, entity) == _iso(at + PUBLISHED_AFTER), entity
    finally:
        await engine.dispose()


async def _state(engine: AsyncEngine) -> dict[uuid.UUID, tuple[str, int]]:
    """Each verification's stored entity id and its number of answers."""
    v, a = verifications.c, verify_answers.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(v.event_id, v.entity_id, func.count(a.service))
            .outerjoin(verify_answers, a.event_id == v.event_id)
            .group_by(v.event_id, v.entity_id)
        )
        return {row[0]: (row[1], row[2]) for row in rows}


async def test_verifications_are_pseudonymised_then_pruned_and_still_found_meanwhile(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
    try:
        ids = await _world(engine)
        before = await _state(engine)
        dry = await prune_own_data(
            engine, RETENTION, now=NOW, dry_run=True, pepper=PEPPER, signer=SIGNER
        )
        counts = {p.table: p.rows for p in dry}
        assert (
            counts["retention_outbox_batches"],
            counts["retention_verifications.entity_id"],
            counts["retention_verifications"],
        ) == (2, 2, 1)
        # A dry run counts and changes nothing.
        assert await _state(engine) == before
        assert await _batches(engine) == 3

        done = await prune_own_data(
            engine, RETENTION, now=NOW, dry_run=False, pepper=PEPPER, signer=SIGNER
        )
        assert {p.table: p.rows for p in done} == counts
        old, recent = "asked 40 days ago", "asked 5 days ago, unanswered"
        assert await _state(engine) == {
            ids[old]: (PEPPER.pseudonym("user", old), 1),
            ids[recent]: (recent, 1),
        }
        async with engine.connect() as conn:
            # The view finds the pseudonymised one by its HMAC, under the asked id.
            [found] = await entity_verifications(conn, "user", old, pepper=PEPPER)
            assert (found["event_id"], found["entity_id"], found["outcome"]) == (
                str(ids[old]),
                old,
                "verified",
            )
            assert found["published_at"] == _iso(ASKED[old] + PUBLISHED_AFTER)
            assert await entity_verifications(conn, "user", old) == []
            # Each window removed or rewritten leaves its audit entry.
            entries = (
                await conn.execute(
                    select(audit_log.c.data["table"].astext, audit_log.c.data["rows"].as_integer())
                    .where(audit_log.c.action == AuditAction.DB_PRUNE.value)
                    .where(audit_log.c.data["table"].astext.like("retention_verifications%"))
                )
            ).all()
        assert sorted(entries) == [
            ("retention_verifications", 1),
            ("retention_verifications.entity_id", 2),
        ]

        # Run again: nothing left to do.
        again = await prune_own_data(
            engine, RETENTION, now=NOW, dry_run=False, pepper=PEPPER, signer=SIGNER
        )
        assert all(p.rows == 0 for p in again if p.table.startswith("retention_verif"))
    finally:
        await engine.dispose()


async def test_verification_walks_read_their_indexes(coordinator_db: str) -> None:
    """The pseudonymisation's and the prune's batch reads go through an index bounded by
    the cutoff, not a scan of the table: their cost is the rows they change."""
    engine = make_engine(coordinator_db)
    cutoff = NOW - RETENTION.outbox
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO retention_verifications (event_id, entity_type, entity_id,"
                    " policy, trigger, requested_by, requested_at)"
                    " SELECT gen_random_uuid(), 'user', 'u-' || n, 'p', 'sample', 's',"
                    " now() - n * interval '1 minute' FROM generate_series(1, 100000) n"
                )
            )
            await conn.execute(text("ANALYZE retention_verifications"))
            v = verifications.c
            shapes = {
                "pseudonymise": select(v.event_id)
                .where(v.pseudonymised_at.is_(None), v.requested_at < cutoff)
                .order_by(v.requested_at, v.event_id)
                .limit(5000),
                "prune": select(v.event_id)
                .where(v.requested_at < cutoff)
                .order_by(v.requested_at)
                .limit(10000),
            }
            for name, query in shapes.items():
                compiled = query.compile(
                    conn.sync_connection, compile_kwargs={"literal_binds": True}
                )
                plan = "\n".join((await conn.execute(text(f"EXPLAIN {compiled}"))).scalars().all())
                assert "Seq Scan" not in plan, (name, plan)
                assert "Sort" not in plan, (name, plan)
                assert "ix_retention_verifications_" in plan, (name, plan)
    finally:
        await engine.dispose()
