"""Webhook notifications end to end: derived from the database, queued once, posted to a
real HTTP server on loopback, every signature checked, failures retried with backoff."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.clock import FrozenClock
from coordinator.metrics import Metrics
from coordinator.operations.notify.delivery import Backoff, deliver_due, list_notifications
from coordinator.operations.notify.notifier import Notifier
from coordinator.operations.notify.sweep import sweep
from coordinator.operations.notify.webhooks import Kind, Webhook, WebhooksFileError, load_webhooks
from coordinator.settings import NotifySettings
from coordinator.store.db import make_engine
from coordinator.store.tables import erasure_requests, notifications
from tests.overdue_rows import insert_events
from tests.webhook_receiver import Receiver, receiving

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
BACKOFF = Backoff(initial=timedelta(seconds=30), maximum=timedelta(minutes=10))
PRIVACY_SECRET = "privacy-secret-0123456789"
CHAT_SECRET = "chat-secret-0123456789abc"


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with receiving(fail=1) as found:
        yield found


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db, pool_size=2)
    yield engine
    await engine.dispose()


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    expected = hmac.new(
        secret.encode(),
        headers["X-Retention-Timestamp"].encode() + b"." + body,
        hashlib.sha256,
    ).hexdigest()
    return hmac.compare_digest(headers["X-Retention-Signature"], f"sha256={expected}")


async def _request(engine: AsyncEngine, status: str, *, due: datetime, **extra: Any) -> uuid.UUID:
    request_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(erasure_requests).values(
                id=request_id,
                subject_type="customer",
                subject_id="alice@example.com",
                regulation="gdpr",
                status=status,
                received_at=due - timedelta(days=30),
                due_at=due,
                created_at=due - timedelta(days=30),
                created_by="privacy-bot",
                **extra,
            )
        )
    return request_id


async def test_signed_notifications_delivered_at_least_once(
    engine: AsyncEngine, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    server, base = receiver
    webhooks_file = tmp_path / "webhooks.yaml"
    webhooks_file.write_text(
        f"""
webhooks:
  - name: privacy
    url: {base}/privacy
    events: [request_completed, request_overdue, request_on_hold, service_overdue]
    secret: {PRIVACY_SECRET}
  - name: chat
    url: {base}/chat
    events: [service_overdue]
    secret: {CHAT_SECRET}
"""
    )
    hooks = load_webhooks(webhooks_file)
    completed = await _request(
        engine, "completed", due=T0 + timedelta(days=5), completed_at=T0 - timedelta(hours=1)
    )
    # Completed long before the lookback: history is not announced.
    await _request(
        engine, "completed", due=T0 - timedelta(days=20), completed_at=T0 - timedelta(days=30)
    )
    held = await _request(engine, "on_hold", due=T0 + timedelta(days=5), holds=["litigation-7"])
    late = await _request(engine, "in_progress", due=T0 - timedelta(hours=2))
    await insert_events(
        engine, {"crm": "pending", "billing": "completed"}, n=3, deadline=T0 - timedelta(hours=1)
    )
    await insert_events(engine, {"crm": "failed"}, n=1, deadline=T0 - timedelta(days=1))

    lookback = timedelta(days=7)
    async with engine.begin() as conn:
        assert await sweep(conn, hooks, now=T0, lookback=lookback) == 5
    async with engine.begin() as conn:
        assert await sweep(conn, hooks, now=T0 + timedelta(hours=3), lookback=lookback) == 0

    async with httpx.AsyncClient(timeout=5) as client:

        async def deliver(now: datetime) -> tuple[int, int]:
            async with engine.begin() as conn:
                outcomes = await deliver_due(
                    conn, client, hooks, now=now, limit=100, backoff=BACKOFF
                )
            delivered = sum(1 for o in outcomes if o.delivered)
            return delivered, len(outcomes) - delivered

        # The first post (ordered by id: privacy's first) gets a 500 and is retried later.
        assert await deliver(T0) == (4, 1)
        assert await deliver(T0 + timedelta(seconds=29)) == (0, 0)
        assert await deliver(T0 + timedelta(seconds=30)) == (1, 0)
        assert await deliver(T0 + timedelta(hours=1)) == (0, 0)

        # The next day the service is overdue still: one more per webhook, not one per event.
        async with engine.begin() as conn:
            assert await sweep(conn, hooks, now=T0 + timedelta(days=1), lookback=lookback) == 2
        assert await deliver(T0 + timedelta(days=1)) == (2, 0)

    secrets = {"/privacy": PRIVACY_SECRET, "/chat": CHAT_SECRET}
    assert len(server.received) == 8
    bodies: dict[str, list[dict[str, Any]]] = {"/privacy": [], "/chat": []}
    for path, headers, body in server.received:
        assert _verify(secrets[path], headers, body), (path, headers)
        assert not _verify(secrets[path], headers, body + b" ")
        document = json.loads(body)
        assert headers["X-Retention-Event"] == document["kind"]
        assert headers["X-Retention-Delivery"] == str(document["id"])
        assert b"alice@example.com" not in body  # the subject never leaves in a notification
        bodies[path].append(document)
    # The retried delivery reached the receiver twice with the same id: receivers dedupe.
    privacy_ids = [d["id"] for d in bodies["/privacy"]]
    assert len(privacy_ids) == 6
    assert len(set(privacy_ids)) == 5
    privacy = {d["key"]: d["data"] for d in bodies["/privacy"]}
    assert privacy[f"request_completed:{completed}"]["status"] == "completed"
    assert privacy[f"request_on_hold:{held}"]["holds"] == ["litigation-7"]
    assert privacy[f"request_overdue:{late}"]["due_at"] == "2026-11-20T08:00:00.000000Z"
    overdue_today = privacy["service_overdue:crm:2026-11-20"]
    assert (overdue_today["overdue_events"], overdue_today["oldest_deadline"]) == (
        4,
        "2026-11-19T10:00:00.000000Z",
    )
    assert {d["key"] for d in bodies["/chat"]} == {
        "service_overdue:crm:2026-11-20",
        "service_overdue:crm:2026-11-21",
    }

    async with engine.connect() as conn:
        listed = await list_notifications(conn, status=None, limit=100)
    assert {row["status"] for row in listed} == {"delivered"}
    [retried] = [row for row in listed if row["attempts"] == 2]
    assert (retried["last_error"], retried["webhook"]) == ("HTTP 500", "privacy")


async def test_unreachable_and_removed_webhooks(engine: AsyncEngine, tmp_path: Path) -> None:
    # A port nobody listens on: connection refused, retried with growing waits, never lost.
    gone = Webhook(
        name=f"gone_{uuid.uuid4().hex[:6]}",
        url="http://127.0.0.1:9/hook",  # type: ignore[arg-type]
        events=frozenset({Kind.SERVICE_OVERDUE}),
        secret="x" * 20,  # type: ignore[arg-type]
    )
    service = f"svc_{uuid.uuid4().hex[:6]}"
    await insert_events(engine, {service: "pending"}, n=1, deadline=T0)
    now = T0 + timedelta(days=40)
    async with engine.begin() as conn:
        assert await sweep(conn, [gone], now=now, lookback=timedelta(days=1)) >= 1
    async with httpx.AsyncClient(timeout=2) as client:
        for attempt, wait in enumerate((30, 60, 120), 1):
            async with engine.begin() as conn:
                outcomes = await deliver_due(
                    conn, client, [gone], now=now, limit=100, backoff=BACKOFF
                )
            assert outcomes
            assert not any(o.delivered for o in outcomes)
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(notifications).where(
                            notifications.c.webhook == gone.name,
                            notifications.c.key == f"service_overdue:{service}:2026-12-30",
                        )
                    )
                ).one()
            assert (row.status, row.attempts, row.last_error) == (
                "pending",
                attempt,
                "ConnectError",
            )
            assert row.next_attempt_at == now + timedelta(seconds=wait)
            now = row.next_attempt_at

        # Taken out of the file: its rows are dropped, not posted.
        async with engine.begin() as conn:
            await deliver_due(conn, client, [], now=now, limit=100, backoff=BACKOFF)
    async with engine.connect() as conn:
        listed = await list_notifications(conn, status="dropped", limit=100)
    assert any(row["webhook"] == gone.name for row in listed)

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "webhooks:\n  - name: x\n    url: ftp://h/\n    events: []\n    secret: s3cr3t\n"
    )
    with pytest.raises(WebhooksFileError) as caught:
        load_webhooks(bad)
    assert "s3cr3t" not in str(caught.value)
    assert "events" in str(caught.value)


async def test_notifier_pass_and_cli_show_delivery_state(
    engine: AsyncEngine, coordinator_db: str, receiver: tuple[Receiver, str]
) -> None:
    server, base = receiver
    name = f"ops_{uuid.uuid4().hex[:6]}"
    hook = Webhook(
        name=name,
        url=f"{base}/ops",  # type: ignore[arg-type]
        events=frozenset({Kind.REQUEST_COMPLETED}),
        secret=PRIVACY_SECRET,  # type: ignore[arg-type]
    )
    now = T0 + timedelta(days=100)
    request_id = await _request(
        engine, "completed", due=now, completed_at=now - timedelta(minutes=5)
    )
    clock = FrozenClock(now)
    metrics = Metrics(CollectorRegistry())
    notifier = Notifier(
        engine, [hook], NotifySettings(backoff_initial_s=60), clock=clock, metrics=metrics
    )
    async with httpx.AsyncClient(timeout=5) as client:
        # The receiver fails the first post: queued, not delivered, retried a minute later.
        assert await notifier.run_once(client) == (1, 0, 1)
        shown = await _cli_json(
            coordinator_db, "notifications", "list", "--status", "pending", "--json"
        )
        [pending] = [row for row in shown["notifications"] if row["webhook"] == name]
        assert (pending["key"], pending["attempts"], pending["last_error"]) == (
            f"request_completed:{request_id}",
            1,
            "HTTP 500",
        )
        assert pending["next_attempt_at"] == "2027-02-28T10:01:00.000000Z"
        clock.advance(timedelta(minutes=1))
        assert await notifier.run_once(client) == (0, 1, 0)
    shown = await _cli_json(coordinator_db, "notifications", "list", "--json")
    [done] = [row for row in shown["notifications"] if row["webhook"] == name]
    assert (done["status"], done["attempts"], done["next_attempt_at"]) == ("delivered", 2, None)
    assert [p for p, _, _ in server.received] == ["/ops", "/ops"]
    for outcome in ("delivered", "failed"):
        sample = metrics.registry.get_sample_value(
            "retention_notifications_total", {"webhook": name, "outcome": outcome}
        )
        assert sample == 1


async def _cli_json(database_url: str, *args: str) -> Any:
    """The CLI runs its own event loop: off this one, in a thread."""
    result = await asyncio.to_thread(
        CliRunner().invoke, app, list(args), env={"RETENTION_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)
