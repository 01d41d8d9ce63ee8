"""Pruning the coordinator's own data (SPEC §13) never removes evidence of an event that is
not completed, leaves the audit chain verifiable, and keeps old entity ids only as HMACs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.evidence.checkpoints import verify_chain
from coordinator.evidence.heads import newest_published_head
from coordinator.evidence.partitions import (
    LEDGER,
    OUTBOX,
    Layout,
    Month,
    convert,
    converting,
    ensure_months,
    is_partitioned,
    ledger_event_at,
)
from coordinator.evidence.prune import prune_own_data
from coordinator.evidence.pseudonyms import Pepper
from coordinator.evidence.retention import Retention
from coordinator.evidence.upkeep import Upkeep
from coordinator.outbox.lookup import EVENTS, TRACKED, by_event_ids
from coordinator.outbox.prune import prune_outbox
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import (
    ack_ledger,
    audit_checkpoints,
    audit_log,
    event_status,
    expected_acks,
    outbox_batches,
    outbox_cursors,
)
from coordinator.tracking import ledger, queries
from schemas import AckStatus, KafkaSettings, RetentionAck
from schemas.signing import Verifier
from tests import infra, keys
from tests.integration.tracking_support import ledger_row_at
from tests.outbox import clear_outbox, insert_rows, outbox_rows

NOW = datetime.now(UTC)
YEAR = timedelta(days=365)
RETENTION = Retention(
    outbox=timedelta(days=30), ack_ledger=6 * YEAR, event_status=6 * YEAR, audit=6 * YEAR
)
PEPPER = Pepper(b"p" * 32)
SIGNER = keys.signer(keys.COORDINATOR)

# kind → (state or None when untracked, initiated, completed_at)
KINDS: dict[str, tuple[str | None, datetime, datetime | None]] = {
    "completed 7 years ago": ("completed", NOW - 7 * YEAR, NOW - 7 * YEAR),
    "completed 40 days ago": ("completed", NOW - 41 * timedelta(days=1), NOW - timedelta(days=40)),
    "completed yesterday": ("completed", NOW - timedelta(days=2), NOW - timedelta(days=1)),
    "pending for 7 years": ("pending", NOW - 7 * YEAR, None),
    "completed 7 years ago, batched with a pending one": (
        "completed",
        NOW - 7 * YEAR,
        NOW - 7 * YEAR,
    ),
    "overdue for 7 years": ("overdue", NOW - 7 * YEAR, None),
    "failed for 7 years": ("failed", NOW - 7 * YEAR, None),
    "published 7 years ago, never tracked": (None, NOW - 7 * YEAR, None),
}
# An outbox row is a purge batch and goes only as a whole: these two kinds share one.
SAME_BATCH = ("pending for 7 years", "completed 7 years ago, batched with a pending one")
UNTRACKED = "published 7 years ago, never tracked"


async def _world(engine: AsyncEngine) -> dict[str, uuid.UUID]:
    """One published outbox batch per kind (but `SAME_BATCH`), the untracked one last
    and alone past the tracker's cursor; status, expected ack and ledger row per tracked
    event; audit rows of several ages."""
    async with engine.begin() as conn:
        for table in (ack_ledger, expected_acks, event_status, audit_checkpoints):
            await conn.execute(delete(table))
    await clear_outbox(engine)
    async with engine.begin() as conn:
        # Each kind's month has its outbox partition: whole months may go by dropping it.
        if await is_partitioned(conn, OUTBOX.parent):  # not while it converts
            await ensure_months(conn, {Month.of(at) for _, at, _ in KINDS.values()}, OUTBOX)
    shared_run = uuid.uuid4()
    rows: list[dict[str, Any]] = [
        {
            "run_id": shared_run if kind in SAME_BATCH else uuid.uuid4(),
            "policy": "p",
            "event_type": "delete",
            "entity_type": "user",
            "entity_id": kind,
            "legal_basis": "b",
            "initiated_at": initiated,
            "deadline": initiated + timedelta(days=30),
            "published_at": initiated,
        }
        for kind, (_, initiated, _) in KINDS.items()
    ]
    await insert_rows(engine, rows)
    ids = {row["entity_id"]: row["event_id"] for row in rows}
    async with engine.begin() as conn:
        # Written when its events began, as a purge would have (the audit horizon reads it).
        await conn.execute(update(outbox_batches).values(created_at=outbox_batches.c.initiated_at))
        untracked = (
            await conn.execute(select(EVENTS.c.seq).where(by_event_ids([ids[UNTRACKED]])))
        ).scalar_one()
        await conn.execute(insert(outbox_cursors).values(name=TRACKED, seq=untracked - 1))
        offset = 0
        for kind, (state, initiated, completed_at) in KINDS.items():
            event_id = ids[kind]
            if state is None:
                continue
            await conn.execute(
                insert(event_status).values(
                    event_id=event_id,
                    policy="p",
                    event_type="delete",
                    entity_type="user",
                    entity_id=kind,
                    initiated_at=initiated,
                    deadline=initiated + timedelta(days=30),
                    published_at=initiated,
                    state=state,
                    expected=1,
                    completed_at=completed_at,
                    tracked_at=initiated,
                    updated_at=completed_at or initiated,
                )
            )
            await conn.execute(
                insert(expected_acks).values(
                    event_id=event_id,
                    service="billing",
                    status="completed" if state == "completed" else "pending",
                )
            )
            offset += 1
            await conn.execute(
                insert(ack_ledger).values(
                    received_at=completed_at or initiated,
                    kafka_topic="acks",
                    kafka_partition=0,
                    kafka_offset=offset,
                    event_id=event_id,
                    service="billing",
                    entity_type="user",
                    entity_id=kind,
                    status="completed" if state == "completed" else "failed",
                    attempt=offset,
                    accepted=True,
                    event_at=ledger_event_at(event_id, completed_at or initiated),
                )
            )
        # Audit rows: 8 and 7.5 years old (before every open event began), then 7 years
        # and a day less (after the oldest open event began), then now.
        for at in (
            NOW - 8 * YEAR,
            NOW - 7 * YEAR - timedelta(days=180),
            NOW - 7 * YEAR + timedelta(days=1),
            NOW,
        ):
            await audit.append(conn, [audit.AuditEntry("events_published", "relay", {})], at=at)
    return ids


async def _present(
    engine: AsyncEngine, ids: dict[str, uuid.UUID]
) -> dict[str, tuple[int, int, int, int]]:
    """kind → (outbox events, status rows, expected acks, ledger rows)."""
    found = {}
    async with engine.connect() as conn:
        for kind, event_id in ids.items():
            counts = [
                (
                    await conn.execute(
                        select(func.count()).select_from(EVENTS).where(by_event_ids([event_id]))
                    )
                ).scalar_one()
            ]
            for table in (event_status, expected_acks, ack_ledger):
                counts.append(
                    (
                        await conn.execute(
                            select(func.count())
                            .select_from(table)
                            .where(table.c.event_id == event_id)
                        )
                    ).scalar_one()
                )
            found[kind] = (counts[0], counts[1], counts[2], counts[3])
    return found


async def test_pruning_never_removes_evidence_of_an_event_not_completed(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
    try:
        ids = await _world(engine)
        await _prune_and_check(engine, ids)
    finally:
        await engine.dispose()


async def test_pruning_mid_conversion_removes_what_is_due_from_both_tables(
    postgres_url: str,
) -> None:
    """The outbox and the ledger are being converted (`retention db partition`), each with
    its first rows copied, when the prune runs: the same rows go, and none comes back with
    the swap (the copies went too); the old tables beside the swapped-in ones hold no
    more. Nothing of an open event goes."""
    url = await infra.create_database(postgres_url, "own_retention_converting")
    engine = make_engine(url)
    try:
        ids = await _converting_world(engine, url)
        for layout in (OUTBOX, LEDGER):
            # The oldest rows, "completed 7 years ago"'s, are in the shadow.
            assert (await convert(engine, layout, batch=1, max_batches=1)).copied == 1

        async def swap() -> None:
            for layout in (OUTBOX, LEDGER):
                await _swap(engine, layout)

        await _prune_and_check(engine, ids, swap)
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def test_pruning_the_outbox_waits_for_a_copy_step_in_flight(postgres_url: str) -> None:
    """A copy step that read the old outbox before the prune and has not committed: the
    prune waits for it, then deletes what it copied, so the swap brings back nothing."""
    url = await infra.create_database(postgres_url, "own_retention_copy_in_flight")
    engine = make_engine(url)
    try:
        ids = await _converting_world(engine, url)
        async with engine.connect() as copier:
            await copier.begin()
            # The conversion's copy of the old rows, as a step makes it (names fixed).
            columns = ", ".join(OUTBOX.columns)
            await copier.execute(
                text(
                    f"INSERT INTO {OUTBOX.shadow} ({columns}) SELECT {columns} FROM {OUTBOX.parent}"
                )
            )
            pruning = asyncio.create_task(
                prune_outbox(engine, now=NOW, keep=RETENTION.outbox, dry_run=False)
            )
            await asyncio.sleep(1)
            assert not pruning.done()
            await copier.commit()
        assert (await asyncio.wait_for(pruning, 30)).rows == 2
        await _swap(engine, OUTBOX)
        async with engine.connect() as conn:
            kept = {
                kind
                for kind, event_id in ids.items()
                if await conn.scalar(
                    select(func.count()).select_from(EVENTS).where(by_event_ids([event_id]))
                )
            }
        assert kept == set(ids) - {"completed 7 years ago", "completed 40 days ago"}
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def _converting_world(engine: AsyncEngine, url: str) -> dict[str, uuid.UUID]:
    """`_world` in a database whose outbox and ledger are being converted, nothing
    copied yet."""
    await upgrade(url, "0023_republish_jobs")
    # Rows in both, so 0024 and 0025 only make their shadows: the tables convert.
    await insert_rows(engine, [outbox_rows(1)[0] | {"entity_id": "before 0024"}])
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO retention_ack_ledger (received_at, kafka_topic,"
                " kafka_partition, kafka_offset, service, status, attempt, accepted)"
                " VALUES (now(), 'acks', 1, 1, 'billing', 'completed', 1, false)"
            )
        )
    await upgrade(url)
    ids = await _world(engine)
    async with engine.connect() as conn:
        for layout in (OUTBOX, LEDGER):
            assert await converting(conn, layout)
    return ids


async def _swap(engine: AsyncEngine, layout: Layout) -> None:
    """Finish the conversion: the swapped-in table holds what the old one beside it does."""
    assert (await convert(engine, layout, batch=1)).swapped
    async with engine.connect() as conn:
        old, new = [
            set((await conn.execute(text(f"SELECT {layout.key} FROM {name}"))).scalars())
            for name in (layout.old, layout.parent)
        ]
    assert old == new, layout.parent


async def _prune_and_check(
    engine: AsyncEngine,
    ids: dict[str, uuid.UUID],
    then: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Prune `_world` and check what is left (after `then`, if given, ran after the prune)."""
    before = await _present(engine, ids)
    dry = await prune_own_data(
        engine, RETENTION, now=NOW, dry_run=True, pepper=PEPPER, signer=SIGNER
    )
    assert await _present(engine, ids) == before
    assert {p.table: p.rows for p in dry} == {
        "retention_outbox_batches": 2,
        "retention_event_status.entity_id": 3,
        "retention_verifications.entity_id": 0,
        "retention_ack_ledger": 2,
        "retention_event_status": 2,
        "retention_verifications": 0,
        "audit_log": 2,
        "retention_vault": 0,
    }

    done = await prune_own_data(
        engine, RETENTION, now=NOW, dry_run=False, pepper=PEPPER, signer=SIGNER
    )
    assert {p.table: p.rows for p in done} == {p.table: p.rows for p in dry}
    if then is not None:
        await then()
    after = await _present(engine, ids)
    # Every open event keeps everything it had, however old.
    for kind in ("pending for 7 years", "overdue for 7 years", "failed for 7 years"):
        assert after[kind] == before[kind] == (1, 1, 1, 1), kind
    assert after[UNTRACKED] == (1, 0, 0, 0)
    # Completed events lose their outbox row after 30 days, the rest after 6 years;
    # the outbox row stays while another event of its batch is open.
    assert after["completed 7 years ago, batched with a pending one"] == (1, 0, 0, 0)
    assert after["completed 7 years ago"] == (0, 0, 0, 0)
    assert after["completed 40 days ago"] == (0, 1, 1, 1)
    assert after["completed yesterday"] == (1, 1, 1, 1)

    async with engine.connect() as conn:
        names = dict(
            (await conn.execute(select(event_status.c.event_id, event_status.c.entity_id))).all()
        )
        ledger = dict(
            (await conn.execute(select(ack_ledger.c.event_id, ack_ledger.c.entity_id))).all()
        )
        # Old evidence names the entity only by its HMAC; open and recent events in clear.
        old = ids["completed 40 days ago"]
        assert names[old] == ledger[old] == PEPPER.pseudonym("user", "completed 40 days ago")
        assert names[ids["pending for 7 years"]] == "pending for 7 years"
        assert names[ids["completed yesterday"]] == "completed yesterday"
        # Whoever knows the id finds its evidence by computing the HMAC.
        entity = ("user", "completed 40 days ago")
        assert await queries.entity_status(conn, *entity, now=NOW) == []
        [found] = await queries.entity_status(conn, *entity, now=NOW, pepper=PEPPER)
        assert found["event_id"] == str(old)
        certificate = await queries.certificate(conn, *entity, now=NOW, pepper=PEPPER)
        assert certificate is not None

        # The two audit rows older than every open event went; the chain verifies
        # across them through their signed checkpoint, and not without it.
        report = await verify_chain(conn, full=True, verifier=Verifier([SIGNER.public]))
        assert report.broken is None
        assert report.from_seq == 1
        remaining = list(
            (await conn.execute(select(audit_log.c.seq).order_by(audit_log.c.seq))).scalars()
        )
        assert remaining[:2] == [3, 4]
    async with engine.begin() as conn:
        await conn.execute(delete(audit_checkpoints))
        broken = await verify_chain(conn, full=True)
    assert broken.broken is not None
    assert broken.broken.seq == 1


async def test_upkeep_signs_a_head_prunes_and_publishes(
    coordinator_db: str, topics: KafkaSettings
) -> None:
    engine = make_engine(coordinator_db)
    try:
        await _world(engine)
        upkeep = Upkeep(
            engine,
            topics,
            RETENTION,
            FrozenClock(NOW),
            signer=SIGNER,
            pepper=PEPPER,
            is_leader=lambda: True,
            interval_s=86400,
        )
        await upkeep.round()
        published = await newest_published_head(topics, Verifier([SIGNER.public]))
        async with engine.connect() as conn:
            kinds = sorted((await conn.execute(select(audit_checkpoints.c.kind))).scalars())
            unpublished = (
                await conn.execute(
                    select(func.count()).where(audit_checkpoints.c.published_at.is_(None))
                )
            ).scalar_one()
        assert kinds == ["head", "pruned"]
        assert unpublished == 0
        assert published is not None
        assert published.last_seq == 4
    finally:
        await engine.dispose()


def _ack_record(
    event_id: uuid.UUID, entity_id: str, offset: int, refused: ledger.RejectReason | None
) -> ledger.ConsumedAck:
    ack = RetentionAck(
        event_id=event_id,
        service="billing",
        entity_type="user",
        entity_id=entity_id,
        status=AckStatus.COMPLETED,
        records_affected=0,
        attempt=1,
        acknowledged_at=NOW,
    )
    return ledger.ConsumedAck("acks", 0, offset, ack, None, refused)


async def _apply(engine: AsyncEngine, records: list[ledger.ConsumedAck]) -> ledger.LedgerOutcome:
    async with engine.begin() as conn:
        return await ledger.apply_acks(
            conn,
            records,
            declared=[("billing", "user", "delete")],
            now=NOW,
            reminder_interval=timedelta(hours=1),
        )


async def _pruned_world(engine: AsyncEngine) -> dict[str, uuid.UUID]:
    ids = await _world(engine)
    await prune_own_data(engine, RETENTION, now=NOW, dry_run=False, pepper=PEPPER, signer=SIGNER)
    return ids


async def test_an_ack_naming_a_pruned_event_does_not_track_it_again(coordinator_db: str) -> None:
    # Its outbox batch stays (a batch-mate is open), its status row is pruned: an ack
    # naming it (a genuine one replayed from the topic verifies) must not reopen it: its
    # reminders would re-publish it to services whose idempotency records are long
    # pruned. An event past the tracker's cursor is tracked by its ack (it overtook the
    # pass).
    engine = make_engine(coordinator_db)
    try:
        ids = await _pruned_world(engine)
        kind = "completed 7 years ago, batched with a pending one"
        assert (await _present(engine, ids))[kind] == (1, 0, 0, 0)
        outcome = await _apply(
            engine,
            [
                _ack_record(ids[kind], kind, 1000, None),
                _ack_record(ids[UNTRACKED], UNTRACKED, 1001, None),
            ],
        )
        assert [(r.ack and r.ack.event_id, why) for r, why in outcome.rejected] == [
            (ids[kind], ledger.RejectReason.UNKNOWN_EVENT)
        ]
        assert [a.event_id for a in outcome.accepted] == [ids[UNTRACKED]]
        after = await _present(engine, ids)
        assert after[kind] == (1, 0, 0, 1)  # its rejected ledger row, nothing else
        assert after[UNTRACKED] == (1, 1, 1, 1)
    finally:
        await engine.dispose()


async def test_an_ack_whose_signature_failed_tracks_nothing(coordinator_db: str) -> None:
    # It is rejected whatever its event: it needs no event locked, let alone tracked.
    engine = make_engine(coordinator_db)
    try:
        ids = await _world(engine)
        outcome = await _apply(
            engine,
            [_ack_record(ids[UNTRACKED], UNTRACKED, 1000, ledger.RejectReason.BAD_SIGNATURE)],
        )
        assert [why for _, why in outcome.rejected] == [ledger.RejectReason.BAD_SIGNATURE]
        assert (await _present(engine, ids))[UNTRACKED] == (1, 0, 0, 1)
        assert await ledger_row_at(engine, 1000) == ("user", None, False, "bad_signature")
    finally:
        await engine.dispose()


async def test_an_ack_to_a_pseudonymised_event_keeps_no_clear_id(coordinator_db: str) -> None:
    """Once an event's entity id is its HMAC, an ack naming the id in clear (a genuine one
    replayed, say) is refused as `evidence_expired`, changes nothing, and its ledger row
    holds no entity id: the clear id would sit beside the HMAC, joined by the event id."""
    engine = make_engine(coordinator_db)
    try:
        ids = await _pruned_world(engine)
        kind = "completed 40 days ago"
        outcome = await _apply(engine, [_ack_record(ids[kind], kind, 1000, None)])
        assert [(r.offset, why.value) for r, why in outcome.rejected] == [
            (1000, "evidence_expired")
        ]
        assert outcome.accepted == []
        assert await ledger_row_at(engine, 1000) == ("user", None, False, "evidence_expired")
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    select(ack_ledger.c.entity_id).where(ack_ledger.c.event_id == ids[kind])
                )
            ).scalars()
        assert kind not in set(stored)
    finally:
        await engine.dispose()
