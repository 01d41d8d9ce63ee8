"""/healthz names what is down; /metrics exposes the injected registry; OpenAPI is served."""

from __future__ import annotations

import dataclasses
import re

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext
from coordinator.api.health import KafkaHealth
from coordinator.metrics import Metrics
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from schemas import KafkaSettings
from schemas.signing import SignatureMode
from tests import infra
from tests.api.conftest import make_client

# What an open route may say about a failed check: its kind, never an error text.
SAFE_DETAIL = re.compile(r"unavailable \(\w+\)|no answer within [\d.]+s|topics missing: [\w., -]+")


async def test_healthz_ok_when_database_and_kafka_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["kafka"]["ok"], body["checks"]["kafka"]
    assert body["signatures"] == "required"


async def test_healthz_shows_signatures_off(ctx: ApiContext) -> None:
    async with make_client(dataclasses.replace(ctx, signatures=SignatureMode.OFF)) as client:
        body = (await client.get("/healthz")).json()
    assert body["signatures"] == "off"


async def test_healthz_503_names_the_database_when_it_is_unreachable(ctx: ApiContext) -> None:
    # A closed port stands in for a stopped server: the shared one stays up for others.
    dead = make_engine("postgresql://retention:retention@127.0.0.1:1/retention", pool_size=1)
    try:
        async with make_client(dataclasses.replace(ctx, engine=dead)) as client:
            response = await client.get("/healthz")
    finally:
        await dead.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert not body["checks"]["database"]["ok"]
    assert SAFE_DETAIL.fullmatch(body["checks"]["database"]["detail"]), body
    assert body["checks"]["kafka"]["ok"], body["checks"]["kafka"]


async def test_healthz_503_names_kafka_when_the_broker_is_unreachable(ctx: ApiContext) -> None:
    broken = KafkaHealth(
        KafkaSettings(
            bootstrap_servers="127.0.0.1:1", topic_prefix=ctx.kafka_health.kafka.topic_prefix
        )
    )
    try:
        async with make_client(
            dataclasses.replace(ctx, kafka_health=broken, health_timeout_s=2)
        ) as client:
            response = await client.get("/healthz")
    finally:
        await broken.close()
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"]
    assert not checks["kafka"]["ok"]
    assert SAFE_DETAIL.fullmatch(checks["kafka"]["detail"]), checks


async def test_healthz_503_when_the_topics_are_missing(ctx: ApiContext) -> None:
    kafka = ctx.kafka_health.kafka
    missing = KafkaHealth(
        KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers, topic_prefix=kafka.topic_prefix + ".x"
        )
    )
    try:
        async with make_client(dataclasses.replace(ctx, kafka_health=missing)) as client:
            response = await client.get("/healthz")
    finally:
        await missing.close()
    assert response.status_code == 503
    assert "topics missing" in response.json()["checks"]["kafka"]["detail"]


async def test_healthz_503_while_the_tracker_cannot_record(
    ctx: ApiContext, metrics: Metrics
) -> None:
    # A database one migration behind the code: `serve` works on, but its tracker records
    # no ack until the types exist; a readiness probe must see that.
    url = await infra.create_database(infra.database_url(), "healthz_tracker_types")
    behind = make_engine(url, pool_size=1)
    missing = metrics.registry.get_sample_value
    try:
        await upgrade(url, "0033_verify_findings_index")
        async with make_client(
            dataclasses.replace(ctx, engine=behind, health_timeout_s=10)
        ) as client:
            response = await client.get("/healthz")
            assert response.status_code == 503, response.text
            checks = response.json()["checks"]
            assert (checks["database"]["ok"], checks["tracker"]) == (
                True,
                {
                    "ok": False,
                    "detail": "types missing: retention_ack_change_us, retention_ack_row_us "
                    "(migrations 0034_ack_times_us: retention db upgrade)",
                    "seconds": checks["tracker"]["seconds"],
                },
            )
            assert missing("retention_tracker_types_missing") == 2
            await upgrade(url)
            response = await client.get("/healthz")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["tracker"]["ok"]
            assert missing("retention_tracker_types_missing") == 0
    finally:
        await behind.dispose()
        await infra.drop_database(url)


async def test_healthz_reuses_one_kafka_client_and_the_pool(
    client: httpx.AsyncClient, ctx: ApiContext, engine: AsyncEngine
) -> None:
    connects = 0

    def count(*_: object) -> None:
        nonlocal connects
        connects += 1

    event.listen(engine.sync_engine, "connect", count)
    try:
        for _ in range(5):
            assert (await client.get("/healthz")).status_code == 200
    finally:
        event.remove(engine.sync_engine, "connect", count)
    assert ctx.kafka_health.clients_started == 1
    assert connects <= 1  # the pool may open its first connection, never one per call


async def test_metrics_exposes_the_injected_registry(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    metrics.records_processed.labels("session_logs", "delete").inc(7)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'retention_records_processed_total{action="delete",policy="session_logs"} 7.0' in (
        response.text
    )


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = set(response.json()["paths"])
    assert {
        "/healthz",
        "/metrics",
        "/v1/runs",
        "/v1/entities/{entity_type}/{entity_id}",
        "/v1/events/{event_id}",
    } <= paths
    assert (await client.get("/docs")).status_code == 200
