"""The five seed policies end to end: plan, then run, leaves exactly the expected rows."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any

from sqlalchemy import MetaData, Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence import audit
from coordinator.metrics import Metrics
from coordinator.outbox.lookup import EVENTS
from coordinator.policy.model import PolicySet, load_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.tables import policy_results, runs
from demo.seed_data import SEED_POLICIES, SeedData, populate
from tests.policy.conftest import HASH_SECRET, NOW
from tests.policy.conftest import SEED_POLICIES as SEED_POLICY_FILE


async def seed(engine: AsyncEngine) -> SeedData:
    async with engine.begin() as conn:
        data = await populate(conn, NOW)
        await create_hold(
            conn,
            types=await entity_types(conn, load_policies(SEED_POLICY_FILE)),
            entities=data.holds,
            reason="litigation 42",
            created_by="legal",
            now=NOW,
        )
    return data


async def ids_of(engine: AsyncEngine, table: str) -> set[Any]:
    async with engine.connect() as conn:
        reflected = await conn.run_sync(lambda sync: Table(table, MetaData(), autoload_with=sync))
        return set((await conn.execute(select(reflected.c.id))).scalars())


async def test_plan_then_run_leaves_exactly_the_expected_rows(
    engine: AsyncEngine, seed_policies: PolicySet, settings: Settings, clock: FrozenClock
) -> None:
    data = await seed(engine)
    metrics = Metrics()
    runner = Runner(engine, seed_policies, settings, clock=clock, metrics=metrics)

    plan = await runner.plan()
    assert plan.ok, plan.as_dict()
    for item in plan.plans:
        assert item.due == len(data.expected_processed(item.policy)), item
        assert item.held == len(data.ids[item.policy]["held"]), item
        assert item.cutoff == NOW - SEED_POLICIES[item.policy].retention

    report = await runner.run()
    assert report.ok, report.as_dict()
    by_policy = {o.policy: o for o in report.outcomes}
    for name in SEED_POLICIES:
        outcome = by_policy[name]
        assert outcome.processed == len(data.expected_processed(name)), outcome
        assert outcome.held == len(data.ids[name]["held"]), outcome
        assert outcome.oldest_unprocessed_days is None  # nothing due is left
        assert (
            metrics.registry.get_sample_value(
                "retention_records_processed_total", {"policy": name, "action": outcome.action}
            )
            == outcome.processed
        )

    # delete and archive: exactly the untouched rows remain
    for name in ("session_logs", "analytics_events", "support_tickets", "abandoned_carts"):
        table = SEED_POLICIES[name].table.name
        assert await ids_of(engine, table) == data.untouched(name), name
    assert await ids_of(engine, "support_tickets_archive") == data.expected_processed(
        "support_tickets"
    )

    # anonymize: every row remains; processed ones rewritten per strategy, others intact
    async with engine.connect() as conn:
        rows = {
            r.id: r for r in await conn.execute(select(SEED_POLICIES["purchase_records"].table))
        }
    assert set(rows) == data.expected_processed("purchase_records") | data.untouched(
        "purchase_records"
    )
    for row_id, row in rows.items():
        if row_id in data.expected_processed("purchase_records"):
            assert len(row.customer_name) == 64
            assert not row.customer_name.startswith("Customer")
            assert row.email == f"anon-{row_id}@example.invalid"
            assert row.shipping_address == "[REDACTED]"
            assert row.phone is None
        else:
            assert row.email.endswith("@shop.example")
            assert row.phone is not None

    # fan-out policies wrote one outbox row per processed entity, in the same transactions
    async with engine.connect() as conn:
        events = (await conn.execute(select(EVENTS))).all()
    for name in ("purchase_records", "support_tickets", "abandoned_carts"):
        mine = [e for e in events if e.policy == name]
        assert sorted(e.entity_id for e in mine) == sorted(
            str(i) for i in data.expected_processed(name)
        )
        seed_policy = seed_policies.get(name)
        for event in mine:
            assert event.entity_type == seed_policy.entity_type
            assert event.event_type == ("anonymize" if name == "purchase_records" else "delete")
            assert event.deadline - event.initiated_at == timedelta(days=30)
            assert event.event_id.version == 7  # time-ordered ids (migration 0005)
            assert event.run_id == report.run_id
    assert {e.policy for e in events} == {"purchase_records", "support_tickets", "abandoned_carts"}
    assert next(e.fields for e in events if e.policy == "purchase_records") == [
        "customer_name",
        "email",
        "phone",
        "shipping_address",
    ]

    # the run log says the same
    async with engine.connect() as conn:
        run = (await conn.execute(select(runs))).one()
        results = {r.policy: r for r in await conn.execute(select(policy_results))}
        checked, broken = await audit.verify(conn)
    assert run.status == "ok"
    assert run.finished_at is not None
    assert {n: r.processed for n, r in results.items()} == {
        n: len(data.expected_processed(n)) for n in SEED_POLICIES
    }
    assert {n: r.held for n, r in results.items()} == {
        n: len(data.ids[n]["held"]) for n in SEED_POLICIES
    }
    assert broken is None
    assert checked > 0

    # a second run finds nothing: no row rewritten, no second event
    again = await runner.run()
    assert again.ok
    assert all(o.processed == 0 and o.events == 0 for o in again.outcomes)
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(EVENTS))).scalar() == len(
            events
        )


async def test_hash_strategy_is_hmac_sha256_of_the_value(
    engine: AsyncEngine, seed_policies: PolicySet, settings: Settings, clock: FrozenClock
) -> None:
    data = await seed(engine)
    await Runner(engine, seed_policies, settings, clock=clock).run(only=["purchase_records"])
    async with engine.connect() as conn:
        table = SEED_POLICIES["purchase_records"].table
        row_id = data.ids["purchase_records"]["due"][0]
        stored = (
            await conn.execute(select(table.c.customer_name).where(table.c.id == row_id))
        ).scalar()
    # populate() names the first due order "Customer 0"
    expected = hmac.new(HASH_SECRET.encode(), b"Customer 0", hashlib.sha256).hexdigest()
    assert stored == expected
