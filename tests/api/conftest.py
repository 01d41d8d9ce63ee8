"""An API client on the ASGI app, against a fresh migrated database and real Kafka topics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext, create_app
from coordinator.api.health import KafkaHealth
from coordinator.api.tokens import Scope, TokenStore, add_token, new_token
from coordinator.clock import SystemClock
from coordinator.metrics import Metrics
from coordinator.policy.model import load_policies
from coordinator.store.db import make_engine
from schemas import KafkaSettings
from tests.infra import ROOT

SEED_POLICIES = load_policies(ROOT / "tests" / "data" / "seed_policies.yaml")
GLOBAL_CRON = "30 2 * * *"


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db, pool_size=2)
    yield engine
    await engine.dispose()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_client(ctx: ApiContext, token: str | None = None) -> httpx.AsyncClient:
    """A client on the app; with `token`, every request carries it unless it sets its own."""
    transport = httpx.ASGITransport(app=create_app(ctx))
    headers = auth(token) if token is not None else None
    return httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.yaml"


@pytest.fixture
def tokens(tokens_file: Path) -> dict[Scope, str]:
    """One token per scope, in a tokens file written the way `retention tokens create` does;
    each token's name is `<scope>-bot`."""
    made = {}
    for scope in Scope:
        created = new_token(f"{scope.value}-bot", scope)
        add_token(tokens_file, created.entry)
        made[scope] = created.token
    return made


@pytest.fixture
async def kafka_health(topics: KafkaSettings) -> AsyncIterator[KafkaHealth]:
    health = KafkaHealth(topics)
    yield health
    await health.close()


@pytest.fixture
async def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def ctx(
    engine: AsyncEngine,
    kafka_health: KafkaHealth,
    metrics: Metrics,
    tokens_file: Path,
    tokens: dict[Scope, str],
) -> ApiContext:
    return ApiContext(
        engine=engine,
        kafka_health=kafka_health,
        registry=metrics.registry,
        metrics=metrics,
        clock=SystemClock(),
        tokens=TokenStore(tokens_file),
        policy_set=SEED_POLICIES,
        global_schedule=GLOBAL_CRON,
        # Generous: under a loaded CI machine a fresh Kafka client needs seconds to answer.
        health_timeout_s=15.0,
    )


@pytest.fixture
async def client(ctx: ApiContext, tokens: dict[Scope, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests carry the `read` token by default."""
    async with make_client(ctx, tokens[Scope.READ]) as client:
        yield client
