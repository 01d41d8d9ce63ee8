"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.store.db import make_engine
from tests.outbox import clear_outbox


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    """The coordinator database with an empty outbox (the relay's tests start from none;
    a module that needs another start defines its own `engine`)."""
    engine = make_engine(coordinator_db)
    await clear_outbox(engine)
    yield engine
    await engine.dispose()
