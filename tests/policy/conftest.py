"""Fixtures of the policy-engine tests: the seed tables on a fresh database, a frozen clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.policy.model import PolicySet, load_policies
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from demo.seed_data import create_seed_tables, drop_seed_tables, orders

SEED_POLICIES = Path(__file__).resolve().parent.parent / "data" / "seed_policies.yaml"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def add_orders(engine: AsyncEngine, ids: range, *, age_days: float) -> None:
    """Paid orders `ids`, created `age_days` before NOW (a second apart, older first)."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(orders),
            [
                {
                    "id": i,
                    "customer_name": f"name {i}",
                    "email": f"u{i}@shop.example",
                    "status": "paid",
                    "total": 1,
                    "created_at": NOW - timedelta(days=age_days, seconds=i),
                }
                for i in ids
            ],
        )


"""Before the real date, so min(clock, database clock) is the frozen clock."""
HASH_SECRET = "test-hash-secret"

COORDINATOR_DATA = (
    "legal_hold_entities, legal_holds, retention_outbox_batches, "
    "retention_outbox_marks, retention_outbox_cursors, retention_anonymized, "
    "retention_policy_results, retention_runs, audit_log, retention_anonymize_marks"
)


async def reset(engine: AsyncEngine) -> None:
    """Empty seed tables and every coordinator table, so each test starts clean."""
    async with engine.begin() as conn:
        await drop_seed_tables(conn)
        await create_seed_tables(conn)
        await conn.execute(text(f"TRUNCATE {COORDINATOR_DATA}"))


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db)
    await reset(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def settings(coordinator_db: str) -> Settings:
    return Settings(database_url=coordinator_db, hash_secret=HASH_SECRET)


@pytest.fixture(scope="session")
def seed_policies() -> PolicySet:
    return load_policies(SEED_POLICIES)
