"""Verify events in the system's own retention (SPEC §13; docs/verification.md): their
outbox batches go past the outbox retention (row by row and by whole months) with their
publication time kept, their entity ids become HMACs at the same age and are still found
by the entity view, and the records go past the event status retention."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.copies.verification import answers
from coordinator.copies.verification.prune import (
    _in_clear,
    _settled,
    _to_prune,
    _to_pseudonymise,
    prune_verifications,
    pseudonymise_verifications,
)
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
    ack_ledger,
    audit_log,
    event_status,
    expected_acks,
    outbox_batches,
    outbox_cursors,
    verifications,
    verify_answers,
)
from coordinator.tracking.ledger import ConsumedAck, lock_events
from schemas import AckStatus, RetentionAck
from tests import keys
from tests.integration.tracking_support import ledger_row_at
from tests.outbox import clear_outbox, insert_rows

NOW = datetime.now(UTC)
HOUR, DAY, YEAR = timedelta(hours=1), timedelta(days=1), timedelta(days=365)
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


async def _world(
    engine: AsyncEngine, *, months: bool = False, asked: dict[str, datetime] = ASKED
) -> dict[str, uuid.UUID]:
    """One published and tracked verify batch per entry of `asked`, its verification and
    one service's answer (pending for an unanswered one); with `months`, each old batch in
    a monthly partition of its own."""
    await clear_outbox(engine)
    async with engine.begin() as conn:
        await conn.execute(delete(verifications))  # their answers with them
        if months:
            await ensure_months(conn, {Month.of(at) for at in asked.values()}, OUTBOX)
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
        for entity, at in asked.items()
    ]
    await insert_rows(engine, rows)
    ids = {row["entity_id"]: row["event_id"] for row in rows}
    async with engine.begin() as conn:
        b = outbox_batches.c
        await conn.execute(update(outbox_batches).values(created_at=b.initiated_at))
        last = (await conn.execute(select(func.max(b.seq)))).scalar_one()
        await conn.execute(insert(outbox_cursors).values(name=TRACKED, seq=last))
        for entity, at in asked.items():
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


async def test_a_month_is_not_dropped_inside_its_last_verification_s_answer_window(
    coordinator_db: str,
) -> None:
    """A month that ended 12 hours ago, under a 6-hour outbox retention, keeps its
    partition while a verify batch it holds may still be answered; a day later it goes."""
    engine = make_engine(coordinator_db)
    boundary = Month.of(NOW).bounds()[0]
    entity = "asked an hour before the month ended"
    try:
        await _world(engine, months=True, asked={entity: boundary - HOUR})
        keep = 6 * HOUR
        early = await prune_outbox(engine, now=boundary + 12 * HOUR, keep=keep, dry_run=False)
        assert (early.rows, await _batches(engine)) == (0, 1)
        later = await prune_outbox(engine, now=boundary + 2 * DAY, keep=keep, dry_run=False)
        assert later.rows == 1
        assert OUTBOX.partition(Month.of(boundary - HOUR)) in later.partitions
        assert await _batches(engine) == 0
        assert await _published(engine, entity) == _iso(boundary - HOUR + PUBLISHED_AFTER)
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
    """The pseudonymisation's and the prune's batch reads, as they run (with the guard
    for open findings), go through an index bounded by the cutoff, not a scan of the
    table: their cost is the rows they change, and the guard's cost the answers that
    found data still there."""
    engine = make_engine(coordinator_db)
    try:
        # Built, planned and rolled back: the other tests' rows stay as they were.
        async with engine.connect() as conn, conn.begin() as scratch:
            await conn.execute(delete(verifications))
            # Asked over 6.7 years, all but the last month pseudonymised by earlier daily
            # runs (set at insertion: updated rows would leave the partial index bloated).
            await conn.execute(
                text(
                    "INSERT INTO retention_verifications (event_id, entity_type, entity_id,"
                    " policy, trigger, requested_by, requested_at, pseudonymised_at)"
                    " SELECT gen_random_uuid(), 'user', 'u-' || n, 'p', 'sample', 's', at,"
                    " CASE WHEN at < now() - interval '31 days' THEN now() END"
                    " FROM generate_series(1, 100000) n,"
                    " LATERAL (SELECT now() - n * interval '35 minutes' AS at) a"
                )
            )
            # Each answered by two services; a few found the data still there.
            await conn.execute(
                text(
                    "INSERT INTO retention_verify_answers (event_id, service, status)"
                    " SELECT event_id, s, CASE WHEN random() < 0.001 THEN 'still_present'"
                    " ELSE 'verified' END FROM retention_verifications,"
                    " unnest(ARRAY['billing', 'crm']) s"
                )
            )
            # A delete event per entity, acknowledged by both services.
            await conn.execute(
                text(
                    "INSERT INTO retention_event_status (event_id, policy, event_type,"
                    " entity_type, entity_id, initiated_at, published_at, deadline, state,"
                    " expected, tracked_at, updated_at)"
                    " SELECT gen_random_uuid(), 'p', 'delete', 'user', entity_id, now(),"
                    " now(), now(), 'completed', 2, now(), now()"
                    " FROM retention_verifications"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO retention_expected_acks (event_id, service, status)"
                    " SELECT event_id, s, 'completed' FROM retention_event_status,"
                    " unnest(ARRAY['billing', 'crm']) s"
                )
            )
            for table in ("verifications", "verify_answers", "event_status", "expected_acks"):
                await conn.execute(text(f"ANALYZE retention_{table}"))
            _, in_clear = _settled(NOW - RETENTION.outbox, NOW)
            _, due = _settled(NOW - RETENTION.event_status, NOW)
            clear_after = (NOW - 31 * DAY, uuid.uuid4())
            shapes = {
                "pseudonymise": _to_pseudonymise(_in_clear(in_clear), None, 5000),
                "pseudonymise, next batch": _to_pseudonymise(
                    _in_clear(in_clear), clear_after, 5000
                ),
                "prune": _to_prune(due, None, 10000),
                "prune, next batch": _to_prune(due, NOW - 2500 * DAY, 10000),
            }
            for name, query in shapes.items():
                compiled = query.compile(
                    conn.sync_connection, compile_kwargs={"literal_binds": True}
                )
                plan = "\n".join((await conn.execute(text(f"EXPLAIN {compiled}"))).scalars().all())
                assert "Seq Scan" not in plan, (name, plan)
                # An index range bounded by the cutoff (a sort, if any, sorts only what
                # that range gives: about a batch, or the ids still in clear).
                assert "ix_retention_verifications_" in plan, (name, plan)
                # The guard reads the few answers that found data, not every answer.
                assert "ix_retention_verify_answers_still_present" in plan, (name, plan)
            await scratch.rollback()
    finally:
        await engine.dispose()


async def test_nothing_is_touched_inside_the_answer_window_whatever_the_retention(
    coordinator_db: str,
) -> None:
    """With an outbox retention shorter than the answer window, a verification asked 12
    hours ago keeps its batch and its id in clear: its answers are still due."""
    engine = make_engine(coordinator_db)
    try:
        entity = "asked 12 hours ago"
        ids = await _world(engine, asked={entity: NOW - 12 * HOUR})
        keep = 6 * HOUR
        pruned = await prune_outbox(engine, now=NOW, keep=keep, dry_run=False)
        rewritten = await pseudonymise_verifications(
            engine, PEPPER, now=NOW, keep=keep, dry_run=False
        )
        assert (pruned.rows, rewritten.rows, await _batches(engine)) == (0, 0, 1)
        assert await _state(engine) == {ids[entity]: (entity, 1)}
        # Once the window has ended, both go.
        later = NOW + DAY
        pruned = await prune_outbox(engine, now=later, keep=keep, dry_run=False)
        rewritten = await pseudonymise_verifications(
            engine, PEPPER, now=later, keep=keep, dry_run=False
        )
        assert (pruned.rows, rewritten.rows, await _batches(engine)) == (1, 1, 0)
    finally:
        await engine.dispose()


async def test_a_late_answer_to_a_pseudonymised_verification_keeps_no_clear_id(
    coordinator_db: str,
) -> None:
    """Once a record's entity id is its HMAC, an answer naming the id in clear is refused
    as `verification_expired`, changes no answer, and its ledger row holds no entity id:
    the clear id would sit beside the HMAC, joined by the event id."""
    engine = make_engine(coordinator_db)
    entity = "asked 40 days ago"
    try:
        ids = await _world(engine, asked={entity: ASKED[entity]})
        rewritten = await pseudonymise_verifications(
            engine, PEPPER, now=NOW, keep=RETENTION.outbox, dry_run=False
        )
        assert rewritten.rows == 1
        late = _ack(ids[entity], entity, AckStatus.STILL_PRESENT, NOW, offset=1)
        async with engine.begin() as conn:
            outcome = await answers.apply_answers(conn, [late], now=NOW, locked=[])
        assert [why.value for _, why in outcome.rejected] == ["verification_expired"]
        assert (outcome.accepted, outcome.resurrected) == ([], [])
        assert await ledger_row_at(engine, late.offset) == (
            "user",
            None,
            False,
            "verification_expired",
        )
        async with engine.connect() as conn:
            answer = (
                await conn.execute(
                    select(verify_answers.c.status).where(verify_answers.c.event_id == ids[entity])
                )
            ).scalar_one()
        assert answer == "verified"
    finally:
        await engine.dispose()


async def test_a_batch_written_before_the_cutoff_stays_while_its_verification_is_recent(
    coordinator_db: str,
) -> None:
    """The batch's age alone does not decide: its verification was asked after the cutoff."""
    engine = make_engine(coordinator_db)
    try:
        entity = "batch 40 days old, asked 5 days ago"
        ids = await _world(engine, asked={entity: NOW - 40 * DAY})
        async with engine.begin() as conn:
            await conn.execute(
                update(verifications)
                .where(verifications.c.event_id == ids[entity])
                .values(requested_at=NOW - 5 * DAY)
            )
        pruned = await prune_outbox(engine, now=NOW, keep=RETENTION.outbox, dry_run=False)
        assert (pruned.rows, await _batches(engine)) == (0, 1)
    finally:
        await engine.dispose()


async def test_a_resurrection_keeps_its_verification_until_deleted_again(
    coordinator_db: str,
) -> None:
    """A `still_present` answer reopened the deletion: while billing's acknowledgement is
    still `still_present`, the record is neither pseudonymised nor pruned, so a later
    delete finds the answer under the id in clear and completes the entity again."""
    engine = make_engine(coordinator_db)
    entity = f"res-{uuid.uuid4().hex[:8]}"
    asked = NOW - 40 * DAY
    deletion, verify, later = _v7(asked - DAY), _v7(asked), _v7(NOW)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(verifications))
            await conn.execute(
                insert(event_status).values(_deletion(deletion, entity, asked - DAY))
            )
            await conn.execute(
                insert(expected_acks).values(
                    event_id=deletion, service="billing", status="completed"
                )
            )
            await conn.execute(
                insert(verifications).values(
                    event_id=verify,
                    entity_type="user",
                    entity_id=entity,
                    policy="accounts",
                    trigger="sample",
                    requested_by="sampler",
                    requested_at=asked,
                )
            )
            await conn.execute(insert(verify_answers).values(event_id=verify, service="billing"))
        found = _ack(verify, entity, AckStatus.STILL_PRESENT, asked + HOUR, offset=1)
        async with engine.begin() as conn:
            await lock_events(conn, [deletion])
            outcome = await answers.apply_answers(
                conn, [found], now=asked + HOUR, locked=[deletion]
            )
        assert outcome.resurrected == [("user", entity, "billing")]

        # Past the outbox retention and past the event status retention: kept in clear.
        rewritten = await pseudonymise_verifications(
            engine, PEPPER, now=NOW, keep=RETENTION.outbox, dry_run=False
        )
        pruned = await prune_verifications(
            engine, now=NOW + 7 * YEAR, keep=RETENTION.event_status, dry_run=False
        )
        assert (rewritten.rows, pruned.rows) == (0, 0)
        assert await _state(engine) == {verify: (entity, 1)}

        async with engine.begin() as conn:
            await conn.execute(insert(event_status).values(_deletion(later, entity, NOW)))
            await lock_events(conn, [deletion])
            again = await answers.delete_again(
                conn,
                [_ack(later, entity, AckStatus.COMPLETED, NOW, offset=2).ack],  # type: ignore[list-item]
                now=NOW,
                locked=[deletion],
            )
        assert again == [deletion]

        # Completed again: the record follows the retention as any other.
        rewritten = await pseudonymise_verifications(
            engine, PEPPER, now=NOW, keep=RETENTION.outbox, dry_run=False
        )
        assert rewritten.rows == 1
        assert await _state(engine) == {verify: (PEPPER.pseudonym("user", entity), 1)}
        async with engine.connect() as conn:
            ledger = (
                (
                    await conn.execute(
                        select(ack_ledger.c.entity_id).where(ack_ledger.c.event_id == verify)
                    )
                )
                .scalars()
                .all()
            )
        # The answer's ledger row too: no clear id left beside the HMAC.
        assert ledger == [PEPPER.pseudonym("user", entity)]
    finally:
        await engine.dispose()


def _v7(minted: datetime) -> uuid.UUID:
    """An event id as the coordinator mints them (the ledger's months read its time)."""
    ms = int(minted.timestamp() * 1000)
    return uuid.UUID(bytes=ms.to_bytes(6, "big") + bytes([0x70]) + os.urandom(9))


def _deletion(event_id: uuid.UUID, entity: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "policy": "accounts",
        "event_type": "delete",
        "entity_type": "user",
        "entity_id": entity,
        "initiated_at": at,
        "published_at": at,
        "deadline": at + 30 * DAY,
        "state": "completed",
        "expected": 1,
        "completed_at": at,
        "tracked_at": at,
        "updated_at": at,
    }


def _ack(
    event_id: uuid.UUID, entity: str, status: AckStatus, at: datetime, *, offset: int
) -> ConsumedAck:
    ack = RetentionAck(
        event_id=event_id,
        service="billing",
        entity_type="user",
        entity_id=entity,
        status=status,
        records_affected=2 if status is AckStatus.STILL_PRESENT else 0,
        acknowledged_at=at,
    )
    return ConsumedAck("acks", 0, uuid.uuid4().int % 10**9 + offset, ack)


async def test_a_clear_id_that_reads_as_an_hmac_is_not_the_entity_it_would_name(
    coordinator_db: str,
) -> None:
    """Only a pseudonymised record is matched by the HMAC, only one in clear by the id."""
    engine = make_engine(coordinator_db)
    entity = f"named-{uuid.uuid4().hex[:8]}"
    lookalike = uuid.uuid4()
    try:
        async with engine.begin() as conn:
            # Another entity, whose id in clear is this one's HMAC string.
            await conn.execute(
                insert(verifications).values(
                    event_id=lookalike,
                    entity_type="user",
                    entity_id=PEPPER.pseudonym("user", entity),
                    policy="on_demand",
                    trigger="on_demand",
                    requested_by="op",
                    requested_at=NOW,
                )
            )
        async with engine.connect() as conn:
            found = await entity_verifications(conn, "user", entity, pepper=PEPPER)
            other = await entity_verifications(
                conn, "user", PEPPER.pseudonym("user", entity), pepper=PEPPER
            )
    finally:
        await engine.dispose()
    assert found == []
    assert [f["event_id"] for f in other] == [str(lookalike)]
