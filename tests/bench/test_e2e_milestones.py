"""The end-to-end bench's milestone checks: cheap, and right about when a service is done.

Each check asks one index range and stops at the first row it finds, so a poll costs
the same whatever the size of the table; it must still see a due user's last row, and
never mistake a held or young user's rows for a due user's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, text, update

from bench import e2e
from coordinator.store.db import make_engine
from services import EXAMPLES
from tests import infra


@pytest.fixture
async def services_url(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "bench_milestones")
    try:
        yield url
    finally:
        await infra.drop_database(url)


async def test_service_checks_hold_exactly_when_no_due_row_is_left(services_url: str) -> None:
    users = e2e.Users.make(200)
    for example in e2e.BENCHED:
        await example.seed(services_url, users.all)
    checks = e2e._service_checks(users)
    engine = make_engine(services_url)
    try:
        async with engine.connect() as conn:
            for service, (database, check) in checks.items():
                assert database == "services"
                assert not await check(conn), service
            for service, table in e2e.TABLES.items():
                # One due user left (the last): not done yet.
                rest = table.c.user_id.in_(users.due[:-1])
                if service in e2e.KEPT:
                    await conn.execute(update(table).where(rest).values(user_id=None))
                else:
                    await conn.execute(delete(table).where(rest))
                assert not await checks[service][1](conn), service
                last = table.c.user_id == users.due[-1]
                if service in e2e.KEPT:
                    await conn.execute(update(table).where(last).values(user_id=None))
                else:
                    await conn.execute(delete(table).where(last))
                # Held and young users' rows remain, unlinked rows too: done.
                assert await checks[service][1](conn), service
            await conn.commit()
    finally:
        await engine.dispose()


async def test_service_checks_read_the_user_index_not_the_table(services_url: str) -> None:
    users = e2e.Users.make(5000)
    for example in EXAMPLES:
        if example.name in e2e.TABLES:
            await example.seed(services_url, users.all)
    engine = make_engine(services_url)
    try:
        async with engine.connect() as conn:
            for table in e2e.TABLES.values():
                await conn.execute(text(f"ANALYZE {table.fullname}"))
            for service in e2e.TABLES:
                query = e2e.first_linked(service, users.due[0], users.due[-1])
                sql = query.compile(conn.sync_engine, compile_kwargs={"literal_binds": True})
                plan = "\n".join(row[0] for row in await conn.execute(text(f"EXPLAIN {sql}")))
                assert "Index" in plan, (service, plan)
                assert "Seq Scan" not in plan, (service, plan)
    finally:
        await engine.dispose()


def test_the_poll_interval_grows_with_the_run() -> None:
    assert e2e.poll_interval(0.0) == e2e.POLL_S
    assert e2e.poll_interval(100.0) == pytest.approx(2.0)
    # Polls over a 1,000-s run: logarithmic, not 5,000 at a fixed 0.2 s.
    t, polls = 0.0, 0
    while t < 1000:
        t += e2e.poll_interval(t)
        polls += 1
    assert polls < 500
