"""`retention serve` as real processes: one leader across two replicas, hand-over on
SIGKILL, graceful SIGTERM, and /healthz following the database's availability."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence.checkpoints import verify_chain
from coordinator.evidence.heads import newest_published_head
from coordinator.outbox.lookup import EVENTS
from coordinator.store.db import make_engine
from coordinator.store.tables import (
    audit_checkpoints,
    outbox_batches,
    outbox_marks,
    policy_results,
    runs,
    scheduler_fires,
)
from schemas import KafkaSettings
from tests.infra import ROOT, with_database

ticks = Table(
    "ticks",
    MetaData(),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

POLICIES = """\
policies:
  - name: ticks
    table: ticks
    entity_type: tick
    timestamp_column: created_at
    retention: 1d
    action: delete
    legal_basis: "Test: per-second schedule"
    fan_out: true
services:
  - {name: ticker, owner: tests, handles: {tick: [delete]}}
"""
EVERY_2S = "* * * * * */2"
RETENTION = str(Path(sys.executable).parent / "retention")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Serve:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def serve_env(coordinator_db: str, topics: KafkaSettings, tmp_path: Path) -> dict[str, str]:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICIES)
    return {
        **os.environ,
        "RETENTION_DATABASE_URL": coordinator_db,
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": topics.topic_prefix,
        "RETENTION_POLICIES": str(policy_file),
        "RETENTION_SCHEDULE": EVERY_2S,
        "RETENTION_SERVE_TICK_S": "0.2",
        "RETENTION_SERVE_MISFIRE_GRACE_S": "1",
        "RETENTION_SERVE_GAUGES_INTERVAL_S": "0.5",
        "RETENTION_SERVE_SHUTDOWN_TIMEOUT_S": "20",
        "RETENTION_SERVE_HEALTH_TIMEOUT_S": "2",
        "RETENTION_TRACKER_POLL_INTERVAL_S": "0.2",
        "RETENTION_RELAY_IDLE_SLEEP_S": "0.1",
        "RETENTION_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def start(serve_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def launch(name: str, **env: str) -> Serve:
        port = free_port()
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RETENTION, "serve", "--port", str(port)],
                cwd=ROOT,
                env={**serve_env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        serve = Serve(port, proc, log)
        started.append(serve)
        return serve

    yield launch
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait(timeout=30)


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db, pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(ticks.metadata.create_all)
        for table in (scheduler_fires, outbox_marks, outbox_batches, policy_results, runs):
            await conn.execute(table.delete())
    yield engine
    await engine.dispose()


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], *, timeout_s: float, serves: list[Serve]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for serve in serves:
            if serve.proc.poll() is not None:
                pytest.fail(f"serve on {serve.port} exited: {serve.output()}")
        if await check():
            return
        await asyncio.sleep(0.2)
    logs = "\n---\n".join(s.output() for s in serves)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


async def healthy(serve: Serve) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"{serve.url}/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def metric(serve: Serve, line_start: str) -> float | None:
    async with httpx.AsyncClient(timeout=5) as client:
        body = (await client.get(f"{serve.url}/metrics")).text
    for line in body.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def fires(engine: AsyncEngine) -> list[tuple[datetime, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                scheduler_fires.c.fire_at, scheduler_fires.c.status, scheduler_fires.c.node
            ).order_by(scheduler_fires.c.fire_at)
        )
        return [(r.fire_at, r.status, r.node) for r in rows]


async def count(engine: AsyncEngine, query: object) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())  # type: ignore[call-overload]


async def test_two_replicas_run_each_fire_once_and_hand_over(
    engine: AsyncEngine, start: Callable[..., Serve]
) -> None:
    old = datetime.now(UTC) - timedelta(days=3)
    async with engine.begin() as conn:
        await conn.execute(insert(ticks), [{"id": i, "created_at": old} for i in range(20)])
    a = start("a")
    await wait_for("a healthy", lambda: healthy(a), timeout_s=60, serves=[a])
    b = start("b")
    serves = [a, b]
    await wait_for("b healthy", lambda: healthy(b), timeout_s=60, serves=serves)

    async def finished_fires(n: int) -> bool:
        return sum(1 for _, s, _ in await fires(engine) if s == "finished") >= n

    await wait_for("4 finished fires", lambda: finished_fires(4), timeout_s=60, serves=serves)
    # The first run purged the 20 due rows and the relay published their events.
    assert await count(engine, select(func.count()).select_from(ticks)) == 0
    await wait_for(
        "events published",
        lambda: _all_published(engine, 20),
        timeout_s=30,
        serves=serves,
    )

    leaders = {node for _, status, node in await fires(engine) if status != "missed"}
    assert len(leaders) == 1, leaders
    leader, follower = (a, b) if await metric(a, "retention_scheduler_leader") == 1 else (b, a)
    assert await metric(follower, "retention_scheduler_leader") == 0

    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(timeout=10)
    serves = [follower]
    before = len(await fires(engine))
    await wait_for("hand-over", lambda: finished_fires(before + 2), timeout_s=30, serves=serves)
    await wait_for(
        "follower reports leadership",
        lambda: _is_leader(follower),
        timeout_s=10,
        serves=serves,
    )

    # SIGTERM: the current run finishes, then the process exits 0.
    follower.proc.send_signal(signal.SIGTERM)
    assert follower.proc.wait(timeout=40) == 0, follower.output()

    history = await fires(engine)
    nodes = [node for _, status, node in history if status != "missed"]
    assert len(set(nodes)) == 2  # the first leader, then the follower
    first, second = nodes[0], nodes[-1]
    assert nodes == [first] * nodes.count(first) + [second] * nodes.count(second)
    started = [f for f in history if f[1] in ("finished", "failed", "cancelled")]
    # Exactly one run per fire that started: the runs log holds no duplicate.
    assert await count(engine, select(func.count()).select_from(runs)) == len(started)
    assert all(s == "finished" for _, s, _ in started), history
    assert "Traceback" not in follower.output()


async def _all_published(engine: AsyncEngine, n: int) -> bool:
    query = select(func.count()).select_from(EVENTS).where(EVENTS.c.published_at.is_not(None))
    return await count(engine, query) >= n


async def _is_leader(serve: Serve) -> bool:
    return await metric(serve, "retention_scheduler_leader") == 1


async def test_healthz_follows_the_database(
    engine: AsyncEngine, coordinator_db: str, start: Callable[..., Serve]
) -> None:
    """The shared server stays up: only this test's database refuses connections."""
    name = coordinator_db.rpartition("/")[2]
    admin = make_engine(with_database(coordinator_db, "postgres"), pool_size=1)
    serve = start("health", RETENTION_SCHEDULE="0 3 * * *")

    async def status() -> int:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(f"{serve.url}/healthz")).status_code

    async def refuse(refused: bool) -> None:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            allow = "false" if refused else "true"
            # The name is this test's own database, created by the fixture.
            await conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {allow}'))
            if refused:
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )

    try:
        await wait_for("healthy", lambda: healthy(serve), timeout_s=60, serves=[serve])
        await engine.dispose()
        await refuse(True)

        async def down() -> bool:
            return await status() == 503

        await wait_for("503", down, timeout_s=30, serves=[serve])
        async with httpx.AsyncClient(timeout=10) as client:
            body = (await client.get(f"{serve.url}/healthz")).json()
        assert not body["checks"]["database"]["ok"]
        assert body["checks"]["kafka"]["ok"]
        await asyncio.sleep(2)  # the loops ride out the outage instead of exiting
        assert serve.proc.poll() is None, serve.output()
    finally:
        await refuse(False)
        await admin.dispose()
    await wait_for("200 again", lambda: healthy(serve), timeout_s=30, serves=[serve])
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=40) == 0, serve.output()


async def test_the_leader_signs_and_publishes_audit_heads(
    engine: AsyncEngine, topics: KafkaSettings, start: Callable[..., Serve]
) -> None:
    """serve's upkeep (SPEC §13): a head at the chain's end, published to the audit topic."""
    serve = start("upkeep", RETENTION_SERVE_UPKEEP_INTERVAL_S="1")

    async def published() -> bool:
        heads = select(func.count()).where(
            audit_checkpoints.c.kind == "head", audit_checkpoints.c.published_at.is_not(None)
        )
        return await count(engine, heads) >= 2  # every round adds one while runs append

    await wait_for("published heads", published, timeout_s=60, serves=[serve])
    head = await newest_published_head(topics, None)
    assert head is not None
    assert head.kind == "head"
    async with engine.connect() as conn:
        report = await verify_chain(conn)
    assert report.broken is None
