"""A delete's run in two key ranges at once (RETENTION_PURGE_PARALLEL=2,
coordinator.purge.runner.Runner._in_ranges): the same rows as in one range, never a
held one, a hold created mid-run respected, and a run that fails half-way then runs
again loses no event and repeats no event id."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.outbox.events import event_id_texts
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.tables import audit_log, legal_hold_entities, legal_holds, outbox_batches
from demo.seed_data import orders
from tests.policy import test_batch_statements as statements
from tests.policy.conftest import NOW, add_orders

POLICY = parse_policies(statements.POLICY.format(fan_out="true"))
DUE = range(1, 201)
YOUNG = range(1000, 1010)
HELD = {3, 99, 100, 101, 102, 150, 200}


class Refused(Exception):
    pass


def _parallel(settings: Settings, parallel: int, in_flight: int = 2) -> Settings:
    return settings.model_copy(
        update={"purge_parallel": parallel, "purge_batches_in_flight": in_flight}
    )


async def _hold(engine: AsyncEngine, ids: set[int], reason: str = "test") -> None:
    async with engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, POLICY),
            entities={f"order:{i}" for i in ids},
            reason=reason,
            created_by="legal",
            now=NOW,
        )


async def _setup(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in (orders, outbox_batches, legal_hold_entities, legal_holds, audit_log):
            await conn.execute(delete(table))
    await add_orders(engine, DUE, age_days=40)
    await add_orders(engine, YOUNG, age_days=1)
    await _hold(engine, HELD)


async def _left(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(orders.c.id))).scalars())


async def _events(engine: AsyncEngine) -> list[tuple[str, str]]:
    """(event id, entity id) of every event the outbox holds."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox_batches).order_by(outbox_batches.c.seq))).all()
        assert (await audit.verify(conn))[1] is None
    return [
        pair
        for row in rows
        for pair in zip(
            event_id_texts(row.id_base, row.id_first, len(row.entity_ids)),
            row.entity_ids,
            strict=True,
        )
    ]


class Deletes:
    """The batch deletes a run makes: on which connection, with which range bounds."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.bounds: dict[int, list[tuple[Any, Any]]] = {}

    def __call__(self, *args: Any) -> None:
        if re.search(r"^WITH .*DELETE FROM orders", " ".join(args[2].split())):
            params = args[4].compiled_parameters[0]
            key = id(args[0].connection.dbapi_connection)
            self.bounds.setdefault(key, []).append((params.get("after"), params.get("until")))

    def __enter__(self) -> Deletes:
        event.listen(self.engine.sync_engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine.sync_engine, "before_cursor_execute", self)


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_two_ranges_delete_exactly_what_one_range_deletes(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings, in_flight: int
) -> None:
    outcomes = {}
    for parallel in (1, 2):
        await _setup(engine)
        with Deletes(engine) as deletes:
            report = await Runner(
                engine, POLICY, _parallel(settings, parallel, in_flight), clock=clock
            ).run()
        assert report.ok, report.as_dict()
        outcome = report.outcomes[0]
        left = await _left(engine)
        events = await _events(engine)
        outcomes[parallel] = (left, sorted(e for _, e in events), outcome.processed)
        assert left == HELD | set(YOUNG)
        assert len({i for i, _ in events}) == len(events) == outcome.processed
        # Connections that deleted: one range on one (or two, in flight) connections,
        # two ranges on twice as many; the first range ends where the second starts.
        assert len(deletes.bounds) == parallel * in_flight
        if parallel == 2:
            untils = {u for calls in deletes.bounds.values() for _, u in calls} - {None}
            (middle,) = untils
            assert min(DUE) < middle < max(DUE)
            starts = {calls[0][0] for calls in deletes.bounds.values()} - {None}
            assert middle in starts
            # No batch crosses the middle: the ranges are disjoint.
            async with engine.connect() as conn:
                batches = (
                    await conn.execute(
                        select(audit_log.c.data).where(
                            audit_log.c.action == audit.AuditAction.PURGE_BATCH
                        )
                    )
                ).scalars()
                for data in batches:
                    sides = {int(i) <= middle for i in data["ids"]}
                    assert len(sides) == 1, data["ids"]
    assert outcomes[1] == outcomes[2]


async def test_a_hold_created_mid_run_is_respected_in_both_ranges(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await _setup(engine)
    # The last rows of each half: their batches come long after the hold's creation.
    late = {95, 97, 196, 198}
    creating: list[asyncio.Task[None]] = []

    def on_first_delete(*args: Any) -> None:
        if not creating and re.search(r"^WITH .*DELETE FROM orders", " ".join(args[2].split())):
            creating.append(asyncio.get_running_loop().create_task(_hold(engine, late)))

    event.listen(engine.sync_engine, "before_cursor_execute", on_first_delete)
    try:
        report = await Runner(engine, POLICY, _parallel(settings, 2), clock=clock).run()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_first_delete)
    await creating[0]
    assert report.ok, report.as_dict()
    assert await _left(engine) == HELD | late | set(YOUNG)
    async with engine.connect() as conn:
        entries = (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).all()
    seqs = [e.seq for e in entries if e.action == "hold.create"]
    batches = [e for e in entries if e.action == "purge.batch"]
    # The hold committed mid-run, and no batch after it touched what it holds.
    assert batches[0].seq < seqs[-1] < batches[-1].seq
    for entry in batches:
        touched = {int(i) for i in entry.data["ids"]}
        assert not touched & HELD
        if entry.seq > seqs[-1]:
            assert not touched & late


async def test_a_run_failing_half_way_then_run_again_loses_nothing_and_repeats_no_id(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await _setup(engine)
    records = 0

    def fail_fifth_record(*args: Any) -> None:
        nonlocal records
        if " ".join(args[2].split()).startswith("WITH batch AS (INSERT INTO retention_outbox"):
            records += 1
            if records == 5:
                raise Refused("the fifth batch's outbox row")

    chosen = _parallel(settings, 2)
    event.listen(engine.sync_engine, "before_cursor_execute", fail_fifth_record)
    try:
        failed = await Runner(engine, POLICY, chosen, clock=clock).run()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", fail_fifth_record)
    assert failed.outcomes[0].status == "error"
    left = await _left(engine)
    first = await _events(engine)
    # Every committed batch is whole: its rows gone and its events written, nothing else.
    assert {int(e) for _, e in first} == set(DUE) - left
    assert len(first) == failed.outcomes[0].events
    # Both ranges had batches committed, and stopped: rows are left in each.
    middle = (min(DUE) + max(DUE)) // 2
    assert {int(e) for _, e in first} & set(range(middle))
    assert {int(e) for _, e in first} & set(range(middle + 1, max(DUE) + 1))
    assert (left - HELD) & set(range(min(DUE), middle))
    assert (left - HELD) & set(range(middle + 1, max(DUE) + 1))

    again = await Runner(engine, POLICY, chosen, clock=clock).run()
    assert again.ok, again.as_dict()
    assert await _left(engine) == HELD | set(YOUNG)
    events = await _events(engine)
    # The first run's events are unchanged (a replay re-sends the same ids), and no
    # event id or entity is in two events.
    assert events[: len(first)] == first
    assert len({i for i, _ in events}) == len(events)
    assert sorted(int(e) for _, e in events) == sorted(set(DUE) - HELD)
    async with engine.connect() as conn:
        batches = (
            await conn.execute(
                select(func.count()).where(audit_log.c.action == audit.AuditAction.PURGE_BATCH)
            )
        ).scalar()
    async with engine.connect() as conn:
        rows = (await conn.execute(select(func.count()).select_from(outbox_batches))).scalar()
    assert batches == rows
