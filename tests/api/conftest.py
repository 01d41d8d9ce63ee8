"""An API client on the ASGI app, against a fresh migrated database and real Kafka topics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext, create_app
from coordinator.clock import SystemClock
from coordinator.db import make_engine
from coordinator.metrics import Metrics
from coordinator.policy.model import load_policies
from schemas import KafkaSettings
from tests.infra import ROOT

TOKEN = "s3cret-token"
SEED_POLICIES = load_policies(ROOT / "tests" / "data" / "seed_policies.yaml")
GLOBAL_CRON = "30 2 * * *"


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db, pool_size=2)
    yield engine
    await engine.dispose()


def make_client(ctx: ApiContext) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(ctx))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


@pytest.fixture
async def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def ctx(engine: AsyncEngine, topics: KafkaSettings, metrics: Metrics) -> ApiContext:
    return ApiContext(
        engine=engine,
        kafka=topics,
        registry=metrics.registry,
        clock=SystemClock(),
        api_token=SecretStr(TOKEN),
        policy_set=SEED_POLICIES,
        global_schedule=GLOBAL_CRON,
        # Generous: under a loaded CI machine a fresh Kafka client needs seconds to answer.
        health_timeout_s=15.0,
    )


@pytest.fixture
async def client(ctx: ApiContext) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(ctx) as client:
        yield client
