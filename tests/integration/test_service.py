"""The service in-process: schedules from policies, gauges, graceful stop, failing parts."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api.tokens import Scope, add_token, new_token
from coordinator.operations.notify.webhooks import WebhooksFileError, sign
from coordinator.policy.model import load_policies, parse_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.serve import GLOBAL_SCHEDULE, Service, ServiceFailed, schedules_for
from coordinator.settings import NotifySettings, ServeSettings, Settings
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log, erasure_requests
from demo.seed_data import create_seed_tables, drop_seed_tables, populate
from schemas import KafkaSettings
from tests import infra
from tests.infra import ROOT
from tests.webhook_receiver import receiving

SEED = load_policies(ROOT / "tests" / "data" / "seed_policies.yaml")


def test_policies_with_a_schedule_get_their_own_the_rest_share_the_global() -> None:
    schedules = {s.name: s for s in schedules_for(SEED, "15 1 * * *")}
    assert schedules["policy:abandoned_carts"].cron == "0 3 * * *"
    assert schedules["policy:abandoned_carts"].policies == ("abandoned_carts",)
    assert schedules[GLOBAL_SCHEDULE].cron == "15 1 * * *"
    assert schedules[GLOBAL_SCHEDULE].policies == (
        "session_logs",
        "analytics_events",
        "purchase_records",
        "support_tickets",
    )


def test_no_global_schedule_when_every_policy_has_its_own() -> None:
    only = parse_policies(
        "policies:\n"
        "  - {name: a, table: t, timestamp_column: ts, retention: 1d, action: delete,\n"
        "     legal_basis: x, schedule: '*/5 * * * *'}\n"
    )
    assert [s.name for s in schedules_for(only, "0 3 * * *")] == ["policy:a"]


def test_a_bad_global_schedule_is_rejected_naming_it() -> None:
    with pytest.raises(ValueError, match="invalid cron expression 'every day'"):
        Settings(schedule="every day")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def seeded(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db, pool_size=2)
    async with engine.begin() as conn:
        await drop_seed_tables(conn)
        await create_seed_tables(conn)
        await conn.execute(text("TRUNCATE scheduler_fires"))
        now = datetime.now(UTC)
        data = await populate(conn, now)
        await create_hold(
            conn,
            types=await entity_types(conn, SEED),
            entities=data.holds,
            reason="case 1",
            created_by="legal",
            now=now,
        )
    yield engine
    await engine.dispose()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens.yaml"


@pytest.fixture
def token(tokens_file: Path) -> str:
    """A `write` token named `ops`, in the file `settings_for` points the service at."""
    created = new_token("ops", Scope.WRITE)
    add_token(tokens_file, created.entry)
    return created.token


def settings_for(
    coordinator_db: str, topics: KafkaSettings, tokens_file: Path, **serve: float
) -> Settings:
    return Settings(
        database_url=coordinator_db,
        kafka=topics,
        hash_secret="test",
        api_tokens_file=tokens_file,
        schedule="0 3 * * *",
        serve=ServeSettings(tick_s=0.2, gauges_interval_s=0.3, shutdown_timeout_s=10, **serve),
    )


async def test_leader_exports_gauges_and_stops_gracefully(
    seeded: AsyncEngine, coordinator_db: str, topics: KafkaSettings, tokens_file: Path, token: str
) -> None:
    registry = CollectorRegistry()
    port = free_port()
    settings = settings_for(coordinator_db, topics, tokens_file)
    service = Service(settings, SEED, registry=registry, port=port)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    try:
        async with asyncio.timeout(30):
            while value("retention_oldest_unprocessed_days", policy="abandoned_carts") is None:
                assert not running.done(), running
                await asyncio.sleep(0.1)
        assert value("retention_scheduler_leader") == 1
        for policy in SEED.policies:
            oldest = value("retention_oldest_unprocessed_days", policy=policy.name)
            retention = value("retention_policy_retention_days", policy=policy.name)
            assert retention == policy.retention.total_seconds() / 86400
            # The oldest due row is 3 days past the cutoff; held ones (5 days) do not count.
            assert oldest == pytest.approx(retention + 3, abs=0.01), policy.name
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            # Over the real server too, the body limit comes before the token check.
            oversized = await client.post("/v1/holds", content=b"x" * (2 * 1024 * 1024))
            assert oversized.status_code == 413
            # A run over HTTP: its metrics land in this process's registry.
            accepted = await client.post("/v1/runs", headers=headers)
            assert accepted.status_code == 202, accepted.text
            status_url = accepted.json()["status_url"]
            assert (await client.get(status_url)).status_code == 401
            async with asyncio.timeout(60):
                while (run := (await client.get(status_url, headers=headers)).json())[
                    "finished_at"
                ] is None:
                    await asyncio.sleep(0.2)
            assert run["status"] == "ok", run
            assert run["trigger"] == "api"
            body = (await client.get("/metrics")).text
        async with seeded.connect() as conn:
            actors = set(
                (
                    await conn.execute(
                        select(audit_log.c.actor).where(
                            audit_log.c.action.in_(["run.start", "run.finish"]),
                            audit_log.c.data["run_id"].astext == run["id"],
                        )
                    )
                ).scalars()
            )
        assert actors == {"ops"}  # the token's name is the run's recorded actor
        for result in run["policies"]:
            # due + boundary, and at_cutoff rows once the real clock has moved on.
            assert result["processed"] in (6, 9), result
            assert result["held"] == 3, result
            processed = value(
                "retention_records_processed_total",
                policy=result["policy"],
                action=result["action"],
            )
            assert processed == result["processed"]
        assert 'retention_oldest_unprocessed_days{policy="session_logs"}' in body
        assert 'retention_records_held_total{policy="session_logs"}' in body
        # Each policy's success is when that policy finished, within the run's span
        # (a loaded machine stretches the span, so no fixed tolerance to the run's end).
        started = datetime.fromisoformat(run["started_at"]).timestamp()
        finished = datetime.fromisoformat(run["finished_at"]).timestamp()
        for policy in SEED.policies:
            last = value("retention_last_successful_run_timestamp_seconds", policy=policy.name)
            assert last is not None, policy.name
            assert started - 0.001 <= last <= finished + 0.001, policy.name
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await running  # returns normally: a graceful stop is not a failure


async def test_a_port_in_use_fails_the_service_naming_it(
    coordinator_db: str, topics: KafkaSettings, tokens_file: Path, token: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = Service(settings_for(coordinator_db, topics, tokens_file), SEED, port=port)
        with pytest.raises(ServiceFailed, match=f"could not listen on 127.0.0.1:{port}"):
            async with asyncio.timeout(30):
                await service.run(asyncio.Event())


async def test_topics_the_broker_refuses_fail_the_service_naming_them(
    coordinator_db: str, topics: KafkaSettings, tokens_file: Path, token: str
) -> None:
    """One broker cannot hold three replicas: serve stops at start, naming the topics,
    instead of starting with none."""
    fresh = topics.model_copy(update={"topic_prefix": infra.unique_topic_prefix("refused")})
    settings = settings_for(coordinator_db, fresh, tokens_file, topic_replication_factor=3)
    service = Service(settings, SEED, port=free_port())
    with pytest.raises(ServiceFailed, match=f"could not create topics: {fresh.topics.events} "):
        async with asyncio.timeout(30):
            await service.run(asyncio.Event())


async def test_serve_notifies_the_webhooks_of_its_file(
    coordinator_db: str, topics: KafkaSettings, tokens_file: Path, token: str, tmp_path: Path
) -> None:
    webhooks = tmp_path / "webhooks.yaml"
    webhooks.write_text("webhooks: [{name: x, url: 'ftp://nope/', events: [], secret: s3cr3t}]\n")
    broken = settings_for(coordinator_db, topics, tokens_file).model_copy(
        update={"webhooks_file": webhooks}
    )
    with pytest.raises(WebhooksFileError) as caught:
        Service(broken, SEED, port=free_port())
    assert "s3cr3t" not in str(caught.value)

    engine = make_engine(coordinator_db, pool_size=1)
    request_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(erasure_requests).values(
                id=request_id,
                subject_type="customer",
                subject_id="c-1",
                regulation="gdpr",
                status="completed",
                received_at=now - timedelta(days=2),
                due_at=now + timedelta(days=28),
                created_at=now - timedelta(days=2),
                created_by="privacy-bot",
                completed_at=now,
            )
        )
    await engine.dispose()
    secret = "serve-test-secret-0123"
    with receiving() as (receiver, base):
        webhooks.write_text(
            f"webhooks:\n  - name: privacy\n    url: {base}/hook\n"
            f"    events: [request_completed]\n    secret: {secret}\n"
        )
        settings = settings_for(coordinator_db, topics, tokens_file).model_copy(
            update={"webhooks_file": webhooks, "notify": NotifySettings(interval_s=0.2)}
        )
        stop = asyncio.Event()
        task = asyncio.create_task(Service(settings, SEED, port=free_port()).run(stop))
        try:
            async with asyncio.timeout(30):
                while not any(
                    f"request_completed:{request_id}".encode() in b for *_, b in receiver.received
                ):
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
    [(path, headers, body)] = [
        r for r in receiver.received if f"request_completed:{request_id}".encode() in r[2]
    ]
    assert path == "/hook"
    assert headers["X-Retention-Signature"] == sign(secret, headers["X-Retention-Timestamp"], body)
