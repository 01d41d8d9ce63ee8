"""Guard, failure isolation, clock skew, hooks, hold lifecycle, keyset batching."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.outbox.lookup import EVENTS
from coordinator.policy.model import PolicySet, parse_policies
from coordinator.purge.holds import (
    HoldError,
    create_hold,
    entity_types,
    get_hold,
    list_holds,
    release_hold,
)
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.tables import anonymized, policy_results
from demo.seed_data import orders, session_logs, shopping_carts
from tests.policy import hooks
from tests.policy.conftest import NOW

SESSIONS = """
policies:
  - name: sessions
    table: session_logs
    entity_type: session
    timestamp_column: created_at
    retention: 90d
    action: delete
    legal_basis: test
    batch_size: 3
{extra}
"""


def policies(extra: str = "", more: str = "") -> str:
    return SESSIONS.format(extra=extra) + more


async def insert_sessions(engine: AsyncEngine, ages_days: list[float]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(session_logs),
            [
                {"id": i, "user_id": "u", "created_at": NOW - timedelta(days=age)}
                for i, age in enumerate(ages_days, start=1)
            ],
        )


async def remaining(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(session_logs.c.id))).scalars())


async def test_guard_blocks_everything_and_names_both_limits(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await insert_sessions(engine, [100] * 6 + [10] * 4)
    text_ = policies("    max_rows_per_run: 5\n    max_fraction: 0.5\n")
    runner = Runner(
        engine, parse_policies(text_, hook_modules=hooks.ALLOWED), settings, clock=clock
    )
    report = await runner.run()
    assert not report.ok
    (error,) = report.outcomes[0].errors
    assert "6 due rows" in error
    assert "max_rows_per_run=5" in error
    assert "max_fraction=0.5" in error
    assert await remaining(engine) == set(range(1, 11))

    forced = await runner.run(force=True)
    assert forced.ok
    assert forced.outcomes[0].processed == 6
    assert await remaining(engine) == {7, 8, 9, 10}


async def test_fraction_guard_alone(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await insert_sessions(engine, [100] * 6 + [10] * 4)
    runner = Runner(
        engine, parse_policies(policies("    max_fraction: 0.5\n")), settings, clock=clock
    )
    plan = await runner.plan()
    assert plan.plans[0].guard is not None
    assert "exceeded: max_fraction" in plan.plans[0].guard


async def test_a_run_refuses_as_the_plan_does_and_reports_what_it_left(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    """The run counts only what its guard needs (coordinator/purge/planner.py
    `count_due`, `leftover`): each guard alone refuses or allows as the plan's counts
    say, and the outcome reports the held rows and the oldest unprocessed one."""
    await insert_sessions(engine, [100] * 6 + [10] * 4)
    async with engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, parse_policies(policies())),
            entities=["session:1"],
            reason="r",
            created_by="me",
            now=NOW,
        )

    async def run(guard: str) -> Any:
        runner = Runner(engine, parse_policies(policies(guard)), settings, clock=clock)
        return (await runner.run()).outcomes[0]

    refused = await run("    max_fraction: 0.4\n")
    assert refused.status == "error"
    assert "5 due rows = 50.00% of 10" in refused.errors[0]
    assert (refused.held, refused.oldest_unprocessed_days) == (1, 100.0)
    refused = await run("    max_rows_per_run: 4\n")
    assert "5 due rows" in refused.errors[0]
    assert "exceeded: max_rows_per_run" in refused.errors[0]
    assert await remaining(engine) == set(range(1, 11))

    done = await run("    max_rows_per_run: 5\n    max_fraction: 0.5\n")
    assert (done.status, done.due, done.processed) == ("ok", 5, 5)
    assert (done.held, done.oldest_unprocessed_days) == (1, None)
    assert await remaining(engine) == {1, 7, 8, 9, 10}


async def test_a_failing_policy_never_stops_the_others(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await insert_sessions(engine, [100, 100])
    more = """
  - name: broken_hook
    table: shopping_carts
    timestamp_column: updated_at
    retention: 1d
    action: delete
    legal_basis: test
    before_purge: "tests.policy.hooks:fail"
  - name: missing_table
    table: no_such_table
    timestamp_column: ts
    retention: 1d
    action: delete
    legal_basis: test
"""
    async with engine.begin() as conn:
        await conn.execute(
            insert(shopping_carts).values(
                id="00000000-0000-0000-0000-000000000001",
                user_id="u",
                status="abandoned",
                updated_at=NOW - timedelta(days=5),
            )
        )
    report = await Runner(
        engine,
        parse_policies(policies(more=more), hook_modules=hooks.ALLOWED),
        settings,
        clock=clock,
    ).run()
    outcomes = {o.policy: o for o in report.outcomes}
    assert outcomes["sessions"].status == "ok"
    assert outcomes["sessions"].processed == 2
    # Class and SQLSTATE only: a message can quote personal data (SPEC §13).
    assert outcomes["broken_hook"].errors == ["RuntimeError"]
    assert "does not exist" in outcomes["missing_table"].errors[0]
    async with engine.connect() as conn:
        results = {r.policy: r for r in await conn.execute(select(policy_results))}
        carts = (await conn.execute(select(func.count()).select_from(shopping_carts))).scalar()
    assert {n: r.status for n, r in results.items()} == {
        "sessions": "ok",
        "broken_hook": "error",
        "missing_table": "error",
    }
    assert carts == 1  # the failed hook rolled its batch back


async def test_coordinator_clock_ahead_of_the_database_purges_nothing_young(
    engine: AsyncEngine, settings: Settings
) -> None:
    async with engine.connect() as conn:
        db_now = (await conn.execute(select(func.now()))).scalar_one()
    async with engine.begin() as conn:
        await conn.execute(
            insert(session_logs),
            [
                {"id": 1, "user_id": "u", "created_at": db_now - timedelta(days=91)},
                {"id": 2, "user_id": "u", "created_at": db_now - timedelta(days=89, hours=20)},
            ],
        )
    skewed = FrozenClock(db_now + timedelta(hours=6))
    report = await Runner(engine, parse_policies(policies()), settings, clock=skewed).run()
    assert report.outcomes[0].processed == 1
    assert await remaining(engine) == {2}


async def test_hook_sees_every_batch_and_keyset_covers_all_rows(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await insert_sessions(engine, [100] * 10)
    async with engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, parse_policies(policies())),
            entities=["session:2", "session:5"],
            reason="r",
            created_by="me",
            now=NOW,
        )
    text_ = policies('    before_purge: "tests.policy.hooks:record"\n')
    hooks.calls.clear()
    report = await Runner(
        engine, parse_policies(text_, hook_modules=hooks.ALLOWED), settings, clock=clock
    ).run()
    # windows of 3 ids in key order; held ids are stepped over, never re-scanned
    assert [list(b.ids) for b in hooks.calls] == [[1, 3], [4, 6], [7, 8, 9], [10]]
    assert report.outcomes[0].processed == 8
    assert report.outcomes[0].held == 2
    assert await remaining(engine) == {2, 5}


async def test_hold_expiry_and_release(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await insert_sessions(engine, [100, 100, 100])
    async with engine.begin() as conn:
        expiring = await create_hold(
            conn,
            types=await entity_types(conn, parse_policies(policies())),
            entities=["session:1"],
            reason="r",
            created_by="me",
            now=NOW,
            expires_at=NOW + timedelta(days=1),
        )
        released = await create_hold(
            conn,
            types=await entity_types(conn, parse_policies(policies())),
            entities=["session:2", "session:3"],
            reason="r",
            created_by="me",
            now=NOW,
            hold_id="case-7",
        )
    runner = Runner(engine, parse_policies(policies()), settings, clock=clock)
    assert (await runner.run()).outcomes[0].processed == 0

    async with engine.begin() as conn:
        await release_hold(conn, released.id, by="counsel", now=NOW)
        with pytest.raises(HoldError, match="already released"):
            await release_hold(conn, released.id, by="counsel", now=NOW)
        assert [h.id for h in await list_holds(conn, now=NOW)] == [expiring.id]
        shown = await get_hold(conn, "case-7")
    assert shown.status(NOW) == "released"
    assert shown.entities == (("session", "2"), ("session", "3"))
    assert (await runner.run()).outcomes[0].processed == 2

    clock.advance(timedelta(days=2))
    assert (await runner.run()).outcomes[0].processed == 1
    assert await remaining(engine) == set()


async def test_hold_input_errors(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        with pytest.raises(HoldError, match="TYPE:ID"):
            await create_hold(
                conn,
                types=await entity_types(conn, parse_policies(policies())),
                entities=["nocolon"],
                reason="r",
                created_by="me",
                now=NOW,
            )
        with pytest.raises(HoldError, match="not in the future"):
            await create_hold(
                conn,
                types=await entity_types(conn, parse_policies(policies())),
                entities=["session:1"],
                reason="r",
                created_by="me",
                now=NOW,
                expires_at=NOW,
            )
        await create_hold(
            conn,
            types=await entity_types(conn, parse_policies(policies())),
            entities=["session:1"],
            reason="r",
            created_by="me",
            now=NOW,
            hold_id="x",
        )
        with pytest.raises(HoldError, match="already exists"):
            await create_hold(
                conn,
                types=await entity_types(conn, parse_policies(policies())),
                entities=["session:1"],
                reason="r",
                created_by="me",
                now=NOW,
                hold_id="x",
            )
        with pytest.raises(HoldError, match="no hold"):
            await get_hold(conn, "nope")


async def test_plan_counts_match_a_raw_query(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await insert_sessions(engine, [100, 95, 90, 89, 1])
    plan = await Runner(engine, parse_policies(policies()), settings, clock=clock).plan()
    async with engine.connect() as conn:
        raw = (
            await conn.execute(
                text("SELECT count(*) FROM session_logs WHERE created_at < :cutoff"),
                {"cutoff": NOW - timedelta(days=90)},
            )
        ).scalar()
    assert plan.plans[0].due == raw == 2
    assert plan.plans[0].oldest_age_days == 100


async def test_a_policy_already_running_elsewhere_is_skipped_and_untouched(
    engine: AsyncEngine, clock: FrozenClock, settings: Settings
) -> None:
    await insert_sessions(engine, [100] * 4)
    runner = Runner(engine, parse_policies(policies()), settings, clock=clock)
    async with engine.connect() as other:
        # Another process (a replica, a manual run) holds the policy's run lock.
        await other.execute(
            select(func.pg_advisory_lock(func.hashtext("retention.policy:sessions")))
        )
        report = await runner.run()
        (outcome,) = report.outcomes
        assert outcome.status == "error"
        assert "already being run by another process" in outcome.errors[0]
        assert await remaining(engine) == {1, 2, 3, 4}
        await other.execute(
            select(func.pg_advisory_unlock(func.hashtext("retention.policy:sessions")))
        )
    report = await runner.run()
    assert report.ok
    assert await remaining(engine) == set()


ORDERS = """
policies:
  - name: orders
    table: orders
    entity_type: order
    timestamp_column: created_at
    retention: 30d
    action: anonymize
    legal_basis: test
    batch_size: 2
    fan_out: true
    anonymize:
{fields}
services:
  - {{name: billing, owner: tests, handles: {{order: [anonymize]}}}}
"""


async def test_a_policy_that_gains_a_field_reanonymizes_its_rows_once(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(orders),
            [
                {
                    "id": i,
                    "customer_name": f"name {i}",
                    "email": f"u{i}@shop.example",
                    "phone": f"+44{i}",
                    "status": "paid",
                    "total": 1,
                    "created_at": NOW - timedelta(days=40 + i),
                }
                for i in range(1, 6)
            ],
        )
    narrow = parse_policies(ORDERS.format(fields="      email: fake_email"))
    wide = parse_policies(ORDERS.format(fields='      email: fake_email\n      phone: "null"'))
    settings = Settings(hash_secret="k")

    async def run(policy_set: PolicySet) -> int:
        report = await Runner(engine, policy_set, settings, clock=FrozenClock(NOW)).run()
        assert report.ok, report.as_dict()
        return report.outcomes[0].events

    assert await run(narrow) == 5  # first pass: plain ledger inserts
    assert await run(narrow) == 0
    assert await run(wide) == 5  # the ledger rows exist and now get updated
    assert await run(wide) == 0
    assert await run(narrow) == 0  # the wider ledger entries cover the narrow policy
    async with engine.connect() as conn:
        ledger = (await conn.execute(select(anonymized.c.entity_id, anonymized.c.fields))).all()
        phones = set((await conn.execute(select(orders.c.phone))).scalars())
        events = (await conn.execute(select(EVENTS.c.fields))).scalars().all()
    assert sorted((e, sorted(f)) for e, f in ledger) == [
        (str(i), ["email", "phone"]) for i in range(1, 6)
    ]
    assert phones == {None}
    assert sorted(map(sorted, events)) == [["email"]] * 5 + [["email", "phone"]] * 5


ARCHIVE_SESSIONS = """
policies:
  - name: sessions
    table: session_logs
    entity_type: session
    timestamp_column: created_at
    retention: 90d
    action: archive
    legal_basis: test
    batch_size: 3
"""


async def test_archive_policy_with_nothing_due_and_no_archive_table_yet(
    engine: AsyncEngine, settings: Settings
) -> None:
    # Regression (fault scenario 9, clock behind by months): nothing due and no archive
    # table yet, while the batch statement names the archive table.
    async with engine.begin() as conn:
        db_now = (await conn.execute(select(func.now()))).scalar_one()
        await conn.execute(
            insert(session_logs),
            [
                {"id": i, "user_id": "u", "created_at": db_now - timedelta(days=days)}
                for i, days in ((1, 10), (2, 20))
            ],
        )
    report = await Runner(engine, parse_policies(ARCHIVE_SESSIONS), settings).run()
    assert report.ok, report.as_dict()
    assert report.outcomes[0].processed == 0
    assert await remaining(engine) == {1, 2}
    async with engine.connect() as conn:
        archived = await conn.execute(text("SELECT count(*) FROM session_logs_archive"))
        assert archived.scalar_one() == 0
