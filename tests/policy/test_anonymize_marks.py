"""Anonymize runs start after what is already anonymized, and never miss a due row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import case, event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import create_hold, entity_types, release_hold
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.tables import anonymize_marks
from demo.seed_data import orders
from tests.policy.conftest import NOW, add_orders

POLICY = """
services:
  - {name: billing, owner: tests, handles: {order: [anonymize]}}
policies:
  - name: orders
    table: orders
    entity_type: order
    timestamp_column: created_at
    retention: 30d
    action: anonymize
    legal_basis: test
    batch_size: 10
    fan_out: true
    anonymize:
      email: fake_email
"""


async def originals(engine: AsyncEngine) -> set[int]:
    """Ids whose email was never rewritten."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(orders.c.id, orders.c.email))
        return {i for i, email in rows if email == f"u{i}@shop.example"}


async def mark(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return (await conn.execute(select(anonymize_marks.c.last_key))).scalar_one_or_none()


@contextmanager
def windows(engine: AsyncEngine) -> Iterator[list[str]]:
    """The select-and-lock statements (one per keyset window) run on `orders`."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FOR UPDATE OF orders" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def run(engine: AsyncEngine, clock: FrozenClock) -> int:
    report = await Runner(
        engine, parse_policies(POLICY), Settings(hash_secret="k"), clock=clock
    ).run()
    assert report.ok, report.as_dict()
    return report.outcomes[0].processed


async def test_a_rerun_walks_only_the_new_rows(engine: AsyncEngine, clock: FrozenClock) -> None:
    await add_orders(engine, range(1, 101), age_days=40)
    with windows(engine) as first:
        assert await run(engine, clock) == 100
    assert len(first) == 11  # ten full windows, then the empty one that ends the walk
    assert await mark(engine) == "100"

    await add_orders(engine, range(101, 106), age_days=40)
    with windows(engine) as second:
        assert await run(engine, clock) == 5
    # One window for the five new rows, which ends the walk as it was not full: the 100
    # anonymized rows are neither walked nor locked again.
    assert len(second) == 1
    assert await originals(engine) == set()
    assert await mark(engine) == "105"

    with windows(engine) as third:
        assert await run(engine, clock) == 0
    assert len(third) == 1


async def test_held_rows_are_passed_and_caught_when_their_hold_ends(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_orders(engine, range(1, 31), age_days=40)
    await add_orders(engine, range(31, 36), age_days=10)  # young
    async with engine.begin() as conn:
        released = await create_hold(
            conn,
            entities=["order:3"],
            types=await entity_types(conn, parse_policies(POLICY)),
            reason="r",
            created_by="me",
            now=NOW,
        )
        await create_hold(
            conn,
            entities=["order:15"],
            types=await entity_types(conn, parse_policies(POLICY)),
            reason="r",
            created_by="me",
            now=NOW,
            expires_at=NOW + timedelta(days=2),
        )
    with windows(engine) as first:
        assert await run(engine, clock) == 28
    assert len(first) == 4
    # Held rows among the oldest do not pin the prefix (a hold on an old entity can last
    # years); the young rows end it.
    assert await mark(engine) == "30"
    assert await originals(engine) == {3, 15, *range(31, 36)}

    with windows(engine) as idle:
        assert await run(engine, clock) == 0
    assert len(idle) == 1  # nothing walked below the mark while the holds last

    clock.advance(timedelta(hours=2))
    async with engine.begin() as conn:
        await release_hold(conn, released.id, by="counsel", now=clock.now())
    assert await run(engine, clock) == 1  # back to just before order 3
    assert await originals(engine) == {15, *range(31, 36)}
    assert await mark(engine) == "30"
    clock.advance(timedelta(hours=2))
    assert await run(engine, clock) == 0  # within the clock margin: walked once more
    with windows(engine) as settled:
        assert await run(engine, clock) == 0
    assert len(settled) == 1  # the release is behind the mark now

    clock.advance(timedelta(days=21))  # order 15's hold expired; orders 31-35 are old now
    assert await run(engine, clock) == 6
    assert await originals(engine) == set()
    assert await mark(engine) == "35"


async def test_a_row_committed_below_the_mark_later_is_still_anonymized(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    """A transaction still open while a run passed: its row lands below the mark."""
    await add_orders(engine, range(10, 31), age_days=40)
    assert await run(engine, clock) == 21
    assert await mark(engine) == "30"

    await add_orders(engine, range(5, 6), age_days=0)  # a key below the mark, written now
    assert await run(engine, clock) == 0  # not due yet
    clock.advance(timedelta(days=31))
    assert await run(engine, clock) == 1
    assert await originals(engine) == set()


async def test_a_changed_policy_walks_from_the_start(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_orders(engine, range(1, 21), age_days=40)
    assert await run(engine, clock) == 20
    wider = POLICY + '      phone: "null"\n'
    report = await Runner(
        engine, parse_policies(wider), Settings(hash_secret="k"), clock=clock
    ).run()
    assert report.outcomes[0].processed == 20  # every row gets the new field


async def test_rows_held_through_their_subject_are_caught_when_that_hold_ends(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    """A hold on a user covers that user's orders (SPEC §11): the mark passes them, and
    the user's hold ending sends the next run back to them."""
    policy = parse_policies(POLICY + "    subject: {entity_type: user, column: customer_id}\n")
    await add_orders(engine, range(1, 21), age_days=40)
    async with engine.begin() as conn:
        await conn.execute(
            update(orders).values(customer_id=case((orders.c.id.in_([4, 12]), "u7"), else_="u1"))
        )
        hold = await create_hold(
            conn,
            entities=["user:u7"],
            types=await entity_types(conn, policy),
            reason="r",
            created_by="me",
            now=NOW,
        )
    runner = Runner(engine, policy, Settings(hash_secret="k"), clock=clock)
    assert (await runner.run()).outcomes[0].processed == 18
    assert await mark(engine) == "20"
    assert await originals(engine) == {4, 12}

    clock.advance(timedelta(hours=2))
    async with engine.begin() as conn:
        await release_hold(conn, hold.id, by="counsel", now=clock.now())
    assert (await runner.run()).outcomes[0].processed == 2
    assert await originals(engine) == set()
