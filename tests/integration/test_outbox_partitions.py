"""The outbox partitioned by month: pruning drops a whole month only when every event of
it completed before the cutoff, and an existing outbox converts batch by batch, resumably,
while batches keep being written."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.evidence.partitions import OUTBOX, Month, convert, ensure_months, is_partitioned
from coordinator.evidence.partitions import months as partitions
from coordinator.outbox.lookup import EVENTS, TRACKED, load_events, published_up_to
from coordinator.outbox.prune import prune_outbox
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_log, event_status, outbox_batches, outbox_cursors
from tests import infra
from tests.outbox import insert_rows

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
KEEP = timedelta(days=30)
AUGUST, SEPTEMBER, OCTOBER = (datetime(2026, m, 10, tzinfo=UTC) for m in (8, 9, 10))
JUNE = datetime(2026, 6, 10, tzinfo=UTC)

# kind → (written, state or None when untracked, completed_at); three events each, in
# batches of their own kind.
KINDS: dict[str, tuple[datetime, str | None, datetime | None]] = {
    "august, completed in august": (AUGUST, "completed", AUGUST + timedelta(days=2)),
    "september, completed": (SEPTEMBER, "completed", SEPTEMBER + timedelta(days=2)),
    "september, pending": (SEPTEMBER, "pending", None),
    "october, completed after the cutoff": (OCTOBER, "completed", NOW - timedelta(days=3)),
    "june, past the tracker's cursor": (JUNE, None, None),
}


def _rows(kind: str, written: datetime) -> list[dict[str, Any]]:
    return [
        {
            "run_id": uuid.uuid5(uuid.NAMESPACE_URL, kind),
            "policy": "p",
            "event_type": "delete",
            "entity_type": "user",
            "entity_id": f"{kind}-{n}",
            "legal_basis": "b",
            "initiated_at": written,
            "deadline": written + timedelta(days=30),
            "published_at": written,
        }
        for n in range(3)
    ]


async def _world(engine: AsyncEngine) -> dict[str, set[uuid.UUID]]:
    async with engine.begin() as conn:
        await ensure_months(
            conn, [Month.of(at) for at in (JUNE, AUGUST, SEPTEMBER, OCTOBER)], OUTBOX
        )
    ids: dict[str, set[uuid.UUID]] = {}
    for kind, (written, state, completed_at) in KINDS.items():
        rows = _rows(kind, written)
        await insert_rows(engine, rows)
        ids[kind] = {row["event_id"] for row in rows}
        async with engine.begin() as conn:
            for row in rows if state is not None else []:
                await conn.execute(
                    insert(event_status).values(
                        event_id=row["event_id"],
                        policy="p",
                        event_type="delete",
                        entity_type="user",
                        entity_id=row["entity_id"],
                        initiated_at=written,
                        deadline=written + timedelta(days=30),
                        published_at=written,
                        state=state,
                        expected=1,
                        completed_at=completed_at,
                        tracked_at=written,
                        updated_at=completed_at or written,
                    )
                )
    async with engine.begin() as conn:
        b = outbox_batches.c
        # Written when its events began, as a purge would have.
        await conn.execute(update(outbox_batches).values(created_at=b.initiated_at))
        # The June batches were written last: the tracker's cursor stops before them.
        june = select(func.min(b.seq)).where(b.created_at < AUGUST).scalar_subquery()
        await conn.execute(
            update(outbox_cursors).where(outbox_cursors.c.name == TRACKED).values(seq=june - 1)
        )
    return ids


async def _kept(engine: AsyncEngine) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(EVENTS.c.event_id))).scalars())


async def test_a_month_goes_whole_only_when_every_event_of_it_completed_before_the_cutoff(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
    try:
        ids = await _world(engine)
        everything = set().union(*ids.values())
        async with engine.connect() as conn:
            assert await published_up_to(conn) > 0

        dry = await prune_outbox(engine, now=NOW, keep=KEEP, dry_run=True)
        assert dry.partitions == ("retention_outbox_batches_y2026m08",)
        # August by its partition; the completed September batch row by row.
        assert dry.rows == 6
        assert await _kept(engine) == everything

        done = await prune_outbox(engine, now=NOW, keep=KEEP, dry_run=False)
        assert (done.partitions, done.rows) == (dry.partitions, dry.rows)
        doomed = ids["august, completed in august"] | ids["september, completed"]
        # Open, completed after the cutoff, or not tracked yet: kept, however old.
        assert await _kept(engine) == everything - doomed
        async with engine.connect() as conn:
            left = {OUTBOX.partition(m) for m in await partitions(conn, OUTBOX)}
            recorded = (
                await conn.execute(
                    select(audit_log.c.data["table"].astext, audit_log.c.data["rows"].as_integer())
                    .where(audit_log.c.action == "db.prune")
                    .order_by(audit_log.c.seq)
                )
            ).all()
            assert (await audit.verify(conn))[1] is None
        assert "retention_outbox_batches_y2026m08" not in left
        assert {"retention_outbox_batches_y2026m09", "retention_outbox_batches_y2026m10"} <= left
        assert [tuple(r) for r in recorded] == [
            ("retention_outbox_batches_y2026m08", 3),
            ("retention_outbox_batches", 3),
        ]

        # Once September's pending events complete (before the cutoff), its month goes too.
        async with engine.begin() as conn:
            await conn.execute(
                update(event_status)
                .where(event_status.c.state == "pending")
                .values(state="completed", completed_at=SEPTEMBER + timedelta(days=5))
            )
        again = await prune_outbox(engine, now=NOW, keep=KEEP, dry_run=False)
        assert (again.partitions, again.rows) == (("retention_outbox_batches_y2026m09",), 3)
        assert (
            await _kept(engine)
            == ids["october, completed after the cutoff"] | ids["june, past the tracker's cursor"]
        )
    finally:
        await engine.dispose()


async def test_an_existing_outbox_converts_batch_by_batch_while_batches_keep_coming(
    postgres_url: str,
) -> None:
    url = await infra.create_database(postgres_url, "outbox_convert")
    engine = make_engine(url)
    try:
        await upgrade(url, "0023_republish_jobs")
        first = [_rows(f"before {n}", AUGUST)[0] for n in range(7)]
        for row in first:
            await insert_rows(engine, [row])
        async with engine.begin() as conn:
            b = outbox_batches.c
            await conn.execute(update(outbox_batches).values(created_at=b.initiated_at))
        await upgrade(url)  # 0024: the outbox has rows, so only the shadow table is made
        async with engine.connect() as conn:
            assert not await is_partitioned(conn, OUTBOX.parent)

        step = await convert(engine, OUTBOX, batch=2, max_batches=2)
        assert (step.copied, step.swapped) == (4, False)
        # serve keeps writing to the old table meanwhile; an interruption loses nothing.
        later = [_rows(f"during {n}", NOW)[0] for n in range(3)]
        for row in later:
            await insert_rows(engine, [row])
        rest = await convert(engine, OUTBOX, batch=2)
        assert (rest.copied, rest.swapped) == (6, True)
        after = _rows("after", NOW)[:1]
        await insert_rows(engine, after)

        async with engine.connect() as conn:
            assert await is_partitioned(conn, OUTBOX.parent)
            seqs = list((await conn.execute(select(b.seq).order_by(b.seq))).scalars())
            names = {OUTBOX.partition(m) for m in await partitions(conn, OUTBOX)}
            found = await load_events(conn, [r["event_id"] for r in first + later + after])
        assert seqs == list(range(1, 12))
        assert "retention_outbox_batches_y2026m08" in names
        assert len(found) == 11
        assert (await convert(engine, OUTBOX)).swapped
    finally:
        await engine.dispose()
        await infra.drop_database(url)
