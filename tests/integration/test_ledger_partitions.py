"""The ack ledger partitioned by month of its events: both unique keys still hold (a
forged ack never takes a genuine one's place), pruning drops a month only when none of
its events is open, and an existing ledger converts batch by batch while acks keep
coming."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.evidence import ledger_pseudonyms
from coordinator.evidence.partitions import (
    EPOCH,
    LEDGER,
    Month,
    convert,
    ensure_months,
    is_partitioned,
    ledger_event_at,
    months,
)
from coordinator.evidence.prune import prune_ack_ledger, pseudonymise
from coordinator.evidence.pseudonyms import Pepper
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import ack_ledger, audit_log, event_status
from coordinator.tracking import ledger
from tests import infra
from tests.integration.tracking_support import ack

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
KEEP = timedelta(days=2192)
AUGUST, SEPTEMBER = datetime(2019, 8, 10, tzinfo=UTC), datetime(2019, 9, 10, tzinfo=UTC)


def _minted(at: datetime) -> uuid.UUID:
    """A UUIDv7 minted at `at`, as the outbox mints event ids."""
    ms = int(at.timestamp() * 1000).to_bytes(6, "big")
    return uuid.UUID(bytes=ms + bytes([0x70]) + os.urandom(9))


_offsets = iter(range(1, 10_000))


def _ack(event_id: uuid.UUID | None, received: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "received_at": received,
        "kafka_topic": "acks",
        "kafka_partition": 0,
        "kafka_offset": next(_offsets),
        "event_id": event_id,
        "service": "billing",
        "status": "completed",
        "attempt": 1,
        "accepted": True,
        "event_at": ledger_event_at(event_id, received),
        **extra,
    }


async def _status(engine: AsyncEngine, event_id: uuid.UUID, at: datetime, state: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(event_status).values(
                event_id=event_id,
                policy="p",
                event_type="delete",
                entity_type="user",
                entity_id=str(event_id),
                initiated_at=at,
                deadline=at + timedelta(days=30),
                published_at=at,
                state=state,
                expected=1,
                completed_at=at + timedelta(days=1) if state == "completed" else None,
                tracked_at=at,
                updated_at=at,
            )
        )


async def test_both_unique_keys_hold_the_partition_key_and_still_deduplicate(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
    try:
        event = _minted(NOW - timedelta(minutes=5))
        genuine = _ack(event, NOW)
        async with engine.begin() as conn:
            await conn.execute(insert(ack_ledger).values(genuine))
        # A forged ack for the same slot is rejected: it never takes the genuine one's key.
        forged = _ack(event, NOW + timedelta(seconds=1), accepted=False, reject_reason="x")
        async with engine.begin() as conn:
            await conn.execute(insert(ack_ledger).values(forged))
        # The same ack accepted again (another record, received later: the same month key).
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(ack_ledger).values(_ack(event, NOW + timedelta(days=40))))
        # The same record again, received later (a redelivery).
        again = {**genuine, "received_at": NOW + timedelta(days=40), "accepted": False}
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(ack_ledger).values(again))
        # Ids made up ahead of their arrival, or none at all, all take the epoch.
        assert ledger_event_at(_minted(NOW + timedelta(days=400)), NOW) == EPOCH
        assert ledger_event_at(uuid.UUID(int=2**128 - 1), NOW) == EPOCH
        assert ledger_event_at(None, NOW) == EPOCH
        assert ledger_event_at(event, NOW) == datetime.fromtimestamp(
            int.from_bytes(event.bytes[:6], "big") / 1000, UTC
        )
        async with engine.connect() as conn:
            # The SQL twin of `ledger_event_at` (the conversion uses it) agrees.
            for claimed in (event, _minted(NOW + timedelta(days=400)), None):
                assert await conn.scalar(
                    text("SELECT retention_ack_event_at(:e, :r)"), {"e": claimed, "r": NOW}
                ) == ledger_event_at(claimed, NOW)
    finally:
        await engine.dispose()


async def test_a_month_goes_whole_only_when_none_of_its_events_is_open(
    coordinator_db: str,
) -> None:
    engine = make_engine(coordinator_db)
    try:
        async with engine.begin() as conn:
            for table in (ack_ledger, event_status):
                await conn.execute(delete(table))
            await ensure_months(conn, [Month.of(AUGUST), Month.of(SEPTEMBER)], LEDGER)
        august = [_minted(AUGUST + timedelta(hours=h)) for h in range(3)]
        september = [_minted(SEPTEMBER + timedelta(hours=h)) for h in range(2)]
        for event_id in august:
            await _status(engine, event_id, AUGUST, "completed")
        await _status(engine, september[0], SEPTEMBER, "completed")
        await _status(engine, september[1], SEPTEMBER, "pending")
        rows = [_ack(e, AUGUST + timedelta(days=2)) for e in august]
        rows.append(_ack(august[0], AUGUST, accepted=False, reject_reason="bad_signature"))
        rows += [_ack(e, SEPTEMBER + timedelta(days=2)) for e in september]
        malformed = _ack(None, AUGUST, accepted=False, reject_reason="malformed")
        async with engine.begin() as conn:
            await conn.execute(insert(ack_ledger), [*rows, malformed])

        dry = await prune_ack_ledger(engine, now=NOW, keep=KEEP, dry_run=True)
        assert dry.partitions == ("retention_ack_ledger_y2019m08",)
        # August's 4 by its partition; by row the malformed one and September's completed
        # event's ack (its month stays: the other event is open).
        assert dry.rows == 6
        done = await prune_ack_ledger(engine, now=NOW, keep=KEEP, dry_run=False)
        assert (done.partitions, done.rows) == (dry.partitions, dry.rows)
        async with engine.connect() as conn:
            left = {LEDGER.partition(m) for m in await months(conn, LEDGER)}
            kept = set(
                (await conn.execute(select(ack_ledger.c.event_id, ack_ledger.c.accepted))).all()
            )
        assert "retention_ack_ledger_y2019m08" not in left
        assert kept == {(september[1], True)}
    finally:
        await engine.dispose()


_OLD_COLUMNS = (
    "received_at, kafka_topic, kafka_partition, kafka_offset, event_id, service, status, "
    "attempt, accepted"
)


async def _insert_old(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    """Ledger rows as the tracker wrote them before 0025 (no event_at)."""
    async with engine.begin() as conn:
        for row in rows:
            await conn.execute(
                text(
                    f"INSERT INTO retention_ack_ledger ({_OLD_COLUMNS}) VALUES (:received_at, "
                    ":kafka_topic, :kafka_partition, :kafka_offset, :event_id, :service, "
                    ":status, :attempt, :accepted)"
                ),
                {k: row[k] for k in _OLD_COLUMNS.split(", ")},
            )


async def test_an_existing_ledger_converts_batch_by_batch_while_acks_keep_coming(
    postgres_url: str,
) -> None:
    url = await infra.create_database(postgres_url, "ledger_convert")
    engine = make_engine(url)
    try:
        await upgrade(url, "0024_outbox_partitions")
        first = [
            _ack(_minted(AUGUST + timedelta(days=d)), AUGUST + timedelta(days=d + 1))
            for d in range(7)
        ]
        await _insert_old(engine, first)
        # 0025: the ledger has rows, so only the shadow table is made (and the old one
        # gets the event_at column the upgraded tracker writes).
        await upgrade(url)
        async with engine.connect() as conn:
            assert not await is_partitioned(conn, LEDGER.parent)

        step = await convert(engine, LEDGER, batch=2, max_batches=2)
        assert (step.copied, step.swapped) == (4, False)
        # serve, upgraded, keeps recording acks in the old table meanwhile, malformed ones
        # too, with their event_at.
        later = [_ack(_minted(NOW), NOW), _ack(None, NOW, accepted=False)]
        async with engine.begin() as conn:
            await conn.execute(insert(ack_ledger), later)
        rest = await convert(engine, LEDGER, batch=2)
        assert (rest.copied, rest.swapped) == (5, True)
        after = _ack(_minted(NOW), NOW + timedelta(seconds=1))
        async with engine.begin() as conn:
            new_id = (
                await conn.execute(insert(ack_ledger).values(after).returning(ack_ledger.c.id))
            ).scalar_one()
            # The ids' sequence moved to the new table: the old one drops on its own.
            await conn.execute(text("DROP TABLE retention_ack_ledger_unpartitioned"))

        async with engine.connect() as conn:
            assert await is_partitioned(conn, LEDGER.parent)
            stored = dict(
                (await conn.execute(select(ack_ledger.c.kafka_offset, ack_ledger.c.event_at))).all()
            )
            names = {LEDGER.partition(m) for m in await months(conn, LEDGER)}
            count = await conn.scalar(select(func.count()).select_from(ack_ledger))
        assert count == 10
        assert new_id == 10
        assert stored == {
            r["kafka_offset"]: ledger_event_at(r["event_id"], r["received_at"])
            for r in first + later + [after]
        }
        assert "retention_ack_ledger_y2019m08" in names
        assert (await convert(engine, LEDGER)).swapped
    finally:
        await engine.dispose()
        await infra.drop_database(url)


PEPPER = Pepper(b"p" * 32)


async def _completed_mid_conversion(engine: AsyncEngine, url: str, count: int) -> list[uuid.UUID]:
    """`count` completed events, each with one ledger row naming its entity in clear, in a
    ledger that had rows when migration 0025 ran (so it converts); nothing copied yet."""
    await upgrade(url, "0024_outbox_partitions")
    events = [_minted(AUGUST + timedelta(days=d)) for d in range(count)]
    await _insert_old(engine, [_ack(e, AUGUST + timedelta(days=5)) for e in events])
    async with engine.begin() as conn:
        for event_id in events:
            await conn.execute(
                text(
                    "UPDATE retention_ack_ledger SET entity_type = 'user', entity_id = :id"
                    " WHERE event_id = :e"
                ),
                {"id": f"person {event_id}", "e": event_id},
            )
    await upgrade(url)
    for event_id in events:
        await _status(engine, event_id, AUGUST, "completed")
    return events


async def _pseudonymise(engine: AsyncEngine, batch: int = 5_000) -> int:
    done = await pseudonymise(
        engine, PEPPER, now=NOW, keep=timedelta(days=30), dry_run=False, batch=batch
    )
    return done.rows


async def _assert_no_id_in_clear(engine: AsyncEngine, events: list[uuid.UUID]) -> None:
    """Swapped: the partitioned ledger and the old one beside it, and the event status,
    name each entity only by its HMAC."""
    async with engine.connect() as conn:
        assert await is_partitioned(conn, LEDGER.parent)
        for name in (LEDGER.parent, LEDGER.old):
            stored = dict(
                (await conn.execute(text(f"SELECT event_id, entity_id FROM {name}"))).all()
            )
            assert stored == {e: PEPPER.pseudonym("user", f"person {e}") for e in events}
        clear = await conn.scalar(
            select(func.count())
            .select_from(event_status)
            .where(event_status.c.entity_id.not_like("hmac:%"))
        )
    assert clear == 0


async def test_ids_pseudonymised_mid_conversion_are_hmacs_in_the_swapped_in_ledger(
    postgres_url: str,
) -> None:
    """An ack row copied into the shadow before its event's id became an HMAC gets the
    HMAC too: after the swap no table holds the id in clear (the status row is marked,
    nothing would redo it)."""
    url = await infra.create_database(postgres_url, "ledger_pseudonymise")
    engine = make_engine(url)
    try:
        events = await _completed_mid_conversion(engine, url, 3)
        # The first event's row is in the shadow; the others are copied later.
        assert (await convert(engine, LEDGER, batch=1, max_batches=1)).copied == 1
        assert await _pseudonymise(engine, batch=2) == 3
        assert (await convert(engine, LEDGER, batch=1)).swapped
        await _assert_no_id_in_clear(engine, events)
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def test_pseudonymising_waits_for_a_copy_step_in_flight(postgres_url: str) -> None:
    """A copy step that read the old ledger before the HMACs and has not committed: the
    pseudonymisation waits for it, then rewrites what it copied."""
    url = await infra.create_database(postgres_url, "ledger_pseudonymise_wait")
    engine = make_engine(url)
    try:
        events = await _completed_mid_conversion(engine, url, 2)
        async with engine.connect() as copier:
            await copier.begin()
            # The conversion's copy of the old rows, as a step makes it (names fixed).
            columns = ", ".join(LEDGER.columns)
            await copier.execute(
                text(
                    f"INSERT INTO {LEDGER.shadow} ({columns}, event_at) SELECT {columns},"
                    f" {LEDGER.computed[0][1]} FROM {LEDGER.parent}"
                )
            )
            pseudonymising = asyncio.create_task(_pseudonymise(engine))
            await asyncio.sleep(1)
            assert not pseudonymising.done()
            await copier.commit()
        assert await asyncio.wait_for(pseudonymising, 30) == 2
        assert (await convert(engine, LEDGER)).swapped
        await _assert_no_id_in_clear(engine, events)
    finally:
        await engine.dispose()
        await infra.drop_database(url)


def _partition(url: str, pepper: Path | None) -> subprocess.CompletedProcess[str]:
    """`retention db partition retention_ack_ledger --batch 1`, with the pepper file if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_DATABASE_URL"] = url
    env["RETENTION_HASH_SECRET"] = "k"
    if pepper is not None:
        env["RETENTION_SUPPRESSION_PEPPER_FILE"] = str(pepper)
    command = [str(Path(sys.executable).with_name("retention")), "db", "partition"]
    return subprocess.run(
        [*command, LEDGER.parent, "--batch", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pepper_file(tmp_path: Path) -> Path:
    path = tmp_path / "pepper"
    path.write_bytes(b"p" * 32 + b"\n")
    return path


async def test_ids_an_older_version_pseudonymised_mid_conversion_are_hmacs_after_the_swap(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A conversion begun by an older version, whose pseudonymisation rewrote the old
    ledger only (as this one does with no conversion seen), finished by this version's
    command: without the pepper it swaps, says what it left in clear and fails; run once
    more with it, it rewrites them."""
    url = await infra.create_database(postgres_url, "ledger_pseudonymise_older")
    engine = make_engine(url)
    try:
        events = await _completed_mid_conversion(engine, url, 2)
        assert (await convert(engine, LEDGER, batch=1, max_batches=1)).copied == 1
        with monkeypatch.context() as older:
            older.setattr(ledger_pseudonyms, "lock_copies", _never_converting)
            assert await _pseudonymise(engine) == 2
        assert await _pseudonymise(engine) == 0

        unpeppered = _partition(url, None)
        assert unpeppered.returncode == 1, unpeppered.stderr
        assert f"{LEDGER.parent} partitioned; 1 rows copied" in unpeppered.stderr
        assert "1 ids of pseudonymised events are still in clear" in unpeppered.stderr
        assert "RETENTION_SUPPRESSION_PEPPER_FILE is not set" in unpeppered.stderr

        done = _partition(url, _pepper_file(tmp_path))
        assert done.returncode == 0, done.stderr
        assert "1 ids of pseudonymised events rewritten as HMACs" in done.stderr
        await _assert_no_id_in_clear(engine, events)
        async with engine.connect() as conn:
            repairs = (
                await conn.execute(
                    select(audit_log.c.data).where(
                        audit_log.c.action == "db.prune",
                        audit_log.c.data["repair"].as_string() == "pseudonyms",
                    )
                )
            ).scalars()
            assert [d["rows"] for d in repairs] == [1]
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def test_the_repair_changes_no_row_of_a_clean_ledger(
    postgres_url: str, tmp_path: Path
) -> None:
    """Ids this version pseudonymised mid-conversion, and an event not pseudonymised yet
    (its id stays in clear): the command's repair rewrites no row, with or without the
    pepper."""
    url = await infra.create_database(postgres_url, "ledger_pseudonymise_clean")
    engine = make_engine(url)
    try:
        events = await _completed_mid_conversion(engine, url, 3)
        assert (await convert(engine, LEDGER, batch=1, max_batches=1)).copied == 1
        assert await _pseudonymise(engine) == 3
        recent = _minted(NOW - timedelta(days=1))
        await _status(engine, recent, NOW - timedelta(days=1), "completed")
        async with engine.begin() as conn:
            await conn.execute(
                insert(ack_ledger).values(
                    _ack(recent, NOW, entity_type="user", entity_id="person recent")
                )
            )
            await conn.execute(insert(ack_ledger).values(_ack(None, NOW, accepted=False)))
        assert (await convert(engine, LEDGER)).swapped

        async def stored() -> list[Any]:
            async with engine.connect() as conn:
                return list(
                    (
                        await conn.execute(
                            text(
                                f"SELECT id, xmin::text, entity_id FROM {LEDGER.parent} ORDER BY id"
                            )
                        )
                    ).all()
                )

        before = await stored()
        for pepper in (None, _pepper_file(tmp_path)):
            done = _partition(url, pepper)
            assert done.returncode == 0, done.stderr
            assert await stored() == before
        assert "0 ids of pseudonymised events rewritten as HMACs" in done.stderr
        assert sorted(r.entity_id for r in before if r.entity_id is not None) == sorted(
            ["person recent", *(PEPPER.pseudonym("user", f"person {e}") for e in events)]
        )
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def _never_converting(conn: Any, layout: Any) -> bool:
    return False


def test_the_command_converts_each_table_and_refuses_an_unknown_one(coordinator_db: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_DATABASE_URL"] = coordinator_db
    env["RETENTION_HASH_SECRET"] = "k"
    command = [str(Path(sys.executable).with_name("retention")), "db", "partition"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # A new deployment's tables were partitioned by their migrations already.
    for table in ("audit_log", "retention_outbox_batches", "retention_ack_ledger"):
        assert f"{table} partitioned; 0 rows copied" in done.stderr
    refused = subprocess.run(
        [*command, "retention_event_status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "not a partitioned table: retention_event_status" in refused.stderr


async def test_the_tracker_s_milliseconds_store_the_function_s_event_at(
    coordinator_db: str,
) -> None:
    """Migration 0030: the ack path sends `event_at` as Unix milliseconds and the insert
    turns them back; the stored time must be `ledger_event_at`'s to the microsecond, for
    ids minted now, long ago, made up ahead, the largest id, and no id at all."""
    claimed = [
        _minted(NOW - timedelta(minutes=5)),
        _minted(AUGUST),
        _minted(datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)),
        _minted(NOW + timedelta(days=400)),
        uuid.UUID(int=2**128 - 1),
        None,
    ]
    records = [
        ledger.ConsumedAck(
            "acks.event-ms",
            0,
            offset,
            None if event_id is None else ack(event_id, "billing", "u-1", NOW),
            poison=None if event_id else "not json",
        )
        for offset, event_id in enumerate(claimed)
    ]
    rows = [
        ledger.ledger_row(r, NOW, None if r.ack else ledger.RejectReason.MALFORMED) for r in records
    ]
    engine = make_engine(coordinator_db)
    try:
        async with engine.begin() as conn:
            await ledger.insert_ledger(conn, rows, audit_seq=1, received_at=NOW)
            stored = dict(
                (
                    await conn.execute(
                        select(ack_ledger.c.kafka_offset, ack_ledger.c.event_at).where(
                            ack_ledger.c.kafka_topic == "acks.event-ms"
                        )
                    )
                ).all()
            )
        assert stored == {
            offset: ledger_event_at(event_id, NOW) for offset, event_id in enumerate(claimed)
        }
    finally:
        await engine.dispose()


async def _explain(conn: AsyncConnection, statement: Any, params: dict[str, Any]) -> str:
    """The plan of `statement` as the tracker runs it: bound parameters, not literals."""
    compiled = statement.compile(dialect=conn.dialect)
    bound = compiled.construct_params(params)
    values = [bound[name] for name in compiled.positiontup]
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    rows = await driver.fetch("EXPLAIN " + compiled.string, *values)
    return "\n".join(row[0] for row in rows)


async def test_the_de_duplication_reads_visit_only_the_batch_s_months(
    coordinator_db: str,
) -> None:
    """A batch's two de-duplication reads find its redelivered records and re-sent acks
    where they were stored (the event's month, or the epoch for an id minted after its
    record arrived, or no event at all), and read no other month's partition: with six
    years of months kept, each read would otherwise probe 72 indexes."""
    engine = make_engine(coordinator_db)
    old_event = _minted(NOW - timedelta(days=300))
    ahead = _minted(NOW + timedelta(hours=1))  # minted after its record arrived
    stored = [
        _ack(old_event, NOW),
        _ack(ahead, NOW, accepted=False, reject_reason="unknown_event"),
        _ack(None, NOW, accepted=False, reject_reason="malformed"),
    ]
    try:
        async with engine.begin() as conn:
            await ensure_months(
                conn, {Month.of(NOW - timedelta(days=30 * k)) for k in range(24)}, LEDGER
            )
            await conn.execute(insert(ack_ledger), stored)
        where = [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in stored]
        new = ("acks", 0, next(_offsets))
        later = NOW + timedelta(days=1)  # redelivered a day later: `ahead` is minted by then
        event_ms = ledger.LedgerEventMs(later)
        months_ms = [event_ms(old_event), event_ms(ahead), event_ms(None), event_ms(old_event)]
        span = (min(months_ms), max(months_ms))
        async with engine.begin() as conn:
            recorded, acks = await ledger._recorded(conn, [*where, new], span, [old_event])
            assert recorded == set(where)
            assert acks == {(old_event.int, "billing", 1, "completed")}

            # Only the months between the batch's events, and the default (the epoch).
            one_month = (event_ms(old_event), event_ms(old_event))
            low, high = ledger._at(one_month[0]), ledger._at(one_month[1])
            accepted_plan = await _explain(
                conn,
                ledger._ACCEPTED_OF,
                {"event_ids": [old_event], "low_at": low, "high_at": high},
            )
            spans = ledger.unnest_values(
                "spans",
                ledger._SPAN_TYPES,
                [{"topic": "acks", "partition": 0, "low": 1, "high": 10_000}],
            )
            recorded_plan = await _explain(
                conn, ledger._RECORDED_AT, {**spans, "low_at": low, "high_at": high}
            )
        month = LEDGER.partition(Month.of(NOW - timedelta(days=300)))
        for plan in (accepted_plan, recorded_plan):
            visited = {p for p in await _partitions(engine) if f" on {p} " in plan}
            assert visited == {month, LEDGER.default}, plan
    finally:
        await engine.dispose()


async def _partitions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                        " WHERE i.inhparent = 'retention_ack_ledger'::regclass"
                    )
                )
            ).scalars()
        )


# Any time the wire accepts: an unsigned ack is refused, but its row keeps what arrived.
ACK_TIMES = [
    datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2255, 6, 5, 23, 47, 34, 740_993, tzinfo=UTC),  # just past 2**53 µs
    datetime(8999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
]


@pytest.mark.parametrize("at", ACK_TIMES, ids=[t.isoformat() for t in ACK_TIMES])
async def test_an_ack_time_is_stored_to_the_microsecond(coordinator_db: str, at: datetime) -> None:
    # Sent as Unix microseconds (migration 0034); PostgreSQL multiplies an interval
    # through float8, so all of them at once came back rounded past 2**53 (review30).
    completed = ack(uuid.uuid4(), "billing", "u-1", at)
    topic = f"acks-{uuid.uuid4().hex[:8]}"
    row = ledger.ledger_row(
        ledger.ConsumedAck(topic, 0, 1, completed), NOW, ledger.RejectReason.BAD_SIGNATURE
    )
    engine = make_engine(coordinator_db)
    try:
        async with engine.connect() as conn:  # rolled back
            await ledger.insert_ledger(conn, [row], audit_seq=1, received_at=NOW)
            stored = await conn.scalar(
                select(ack_ledger.c.acknowledged_at).where(ack_ledger.c.kafka_topic == topic)
            )
    finally:
        await engine.dispose()
    assert stored == at
