"""The notification kinds added for operations: `signature_failures` above a threshold,
`verification_found_data` on `resurrected` events, both posted signed to a real HTTP
server on loopback; and the gauge the undelivered-webhook alert watches."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock
from coordinator.evidence.partitions import ledger_event_at
from coordinator.metrics import Metrics
from coordinator.operations.notify.delivery import Backoff, deliver_due
from coordinator.operations.notify.notifier import Notifier
from coordinator.operations.notify.sweep import SignatureAlarm, sweep
from coordinator.operations.notify.webhooks import Kind, Webhook
from coordinator.settings import NotifySettings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import ack_ledger, event_status
from tests import infra
from tests.overdue_rows import insert_events
from tests.webhook_receiver import Receiver, receiving

T0 = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
SECRET = "security-secret-0123456789"
ALARM = SignatureAlarm(threshold=10, window=timedelta(hours=1))
LOOKBACK = timedelta(days=7)


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    url = await infra.create_database(postgres_url, "test_notify_alarms")
    await upgrade(url)
    engine = make_engine(url, pool_size=2)
    yield engine
    await engine.dispose()
    await infra.drop_database(url)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with receiving(fail=0) as found:
        yield found


async def _bad_signatures(engine: AsyncEngine, n: int, *, at: datetime, service: str) -> None:
    async with engine.begin() as conn:
        last = (await conn.execute(ack_ledger.select().order_by(ack_ledger.c.id.desc()))).first()
        start = 0 if last is None else last.kafka_offset + 1
        await conn.execute(
            insert(ack_ledger),
            [
                {
                    "received_at": at,
                    "kafka_topic": "data.retention.acks",
                    "kafka_partition": 0,
                    "kafka_offset": start + i,
                    "event_id": event_id,
                    "service": service,
                    "accepted": False,
                    "reject_reason": "bad_signature",
                    "event_at": ledger_event_at(event_id, at),
                }
                for i, event_id in enumerate(uuid.uuid4() for _ in range(n))
            ],
        )


async def _allow_verification_states(engine: AsyncEngine) -> None:
    # What the verification migration does (SPEC §15 `resurrected`, `still_present`); the
    # sweep's queries need nothing else once those states exist.
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "ALTER TABLE retention_event_status DROP CONSTRAINT ck_retention_event_status_state,"
            " ADD CONSTRAINT ck_retention_event_status_state CHECK (state IN"
            " ('pending', 'completed', 'failed', 'overdue', 'resurrected'))"
        )
        await conn.exec_driver_sql(
            "ALTER TABLE retention_expected_acks DROP CONSTRAINT ck_retention_expected_acks_status,"
            " ADD CONSTRAINT ck_retention_expected_acks_status CHECK (status IN"
            " ('pending', 'completed', 'not_found', 'failed', 'waived', 'still_present'))"
        )


def _verified(headers: dict[str, str], body: bytes) -> bool:
    expected = hmac.new(
        SECRET.encode(), headers["X-Retention-Timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(headers["X-Retention-Signature"], f"sha256={expected}")


async def test_signature_failures_and_found_data_are_notified_signed(
    engine: AsyncEngine, receiver: tuple[Receiver, str]
) -> None:
    server, base = receiver
    hook = Webhook(
        name="security",
        url=f"{base}/security",  # type: ignore[arg-type]
        events=frozenset({Kind.SIGNATURE_FAILURES, Kind.VERIFICATION_FOUND_DATA}),
        secret=SECRET,  # type: ignore[arg-type]
    )
    # The sweep's query runs before the verification states exist, and finds nothing.
    async with engine.begin() as conn:
        assert await sweep(conn, [hook], now=T0, lookback=LOOKBACK, alarm=ALARM) == 0

    # Nine bad signatures in the hour, and older ones outside it: below the threshold.
    await _bad_signatures(engine, 9, at=T0 - timedelta(minutes=20), service="billing")
    await _bad_signatures(engine, 30, at=T0 - timedelta(hours=2), service="billing")
    async with engine.begin() as conn:
        assert await sweep(conn, [hook], now=T0, lookback=LOOKBACK, alarm=ALARM) == 0
    await _bad_signatures(engine, 1, at=T0 - timedelta(minutes=1), service="x-forged")
    async with engine.begin() as conn:
        assert await sweep(conn, [hook], now=T0, lookback=LOOKBACK, alarm=ALARM) == 1
        # Once per UTC hour however often it is swept.
        assert (
            await sweep(
                conn, [hook], now=T0 + timedelta(minutes=20), lookback=LOOKBACK, alarm=ALARM
            )
            == 0
        )

    await _allow_verification_states(engine)
    [found] = await insert_events(
        engine,
        {"crm": "still_present", "billing": "completed"},
        n=1,
        deadline=T0,
        state="resurrected",
    )
    # A resurrected event last touched before the lookback is history: not announced.
    await insert_events(
        engine, {"crm": "still_present"}, n=1, deadline=T0 - timedelta(days=60), state="resurrected"
    )
    async with engine.begin() as conn:
        await conn.execute(
            update(event_status)
            .where(event_status.c.event_id == found)
            .values(updated_at=T0 - timedelta(hours=1))
        )
        assert await sweep(conn, [hook], now=T0, lookback=LOOKBACK, alarm=ALARM) == 1

    async with httpx.AsyncClient(timeout=5) as client, engine.begin() as conn:
        outcomes = await deliver_due(
            conn,
            client,
            [hook],
            now=T0,
            limit=10,
            backoff=Backoff(initial=timedelta(seconds=30), maximum=timedelta(hours=1)),
        )
    assert [o.delivered for o in outcomes] == [True, True]
    documents = {}
    for path, headers, body in server.received:
        assert path == "/security"
        assert _verified(headers, body)
        document = json.loads(body)
        documents[document["kind"]] = document
    failures = documents["signature_failures"]
    assert failures["key"] == "signature_failures:2026-11-20T10"
    assert failures["data"]["rejected_acks"] == 10
    assert failures["data"]["claimed_services"] == {"billing": 9, "x-forged": 1}
    found_data = documents["verification_found_data"]
    assert found_data["key"] == f"verification_found_data:{found}"
    assert found_data["data"]["services"] == ["crm"]
    assert found_data["data"]["entity_type"] == "user"
    assert "u-" not in json.dumps(found_data["data"])  # no entity id leaves


async def test_the_oldest_undelivered_notification_is_a_gauge(engine: AsyncEngine) -> None:
    gone = Webhook(
        name="gone",
        url="http://127.0.0.1:9/hook",  # type: ignore[arg-type]
        events=frozenset({Kind.SERVICE_OVERDUE}),
        secret="x" * 20,  # type: ignore[arg-type]
    )
    idle = Webhook(
        name="idle",
        url="http://127.0.0.1:9/idle",  # type: ignore[arg-type]
        events=frozenset({Kind.REQUEST_COMPLETED}),
        secret="y" * 20,  # type: ignore[arg-type]
    )
    await insert_events(engine, {"crm": "pending"}, n=1, deadline=T0)
    clock = FrozenClock(T0)
    metrics = Metrics(CollectorRegistry())
    notifier = Notifier(engine, [gone, idle], NotifySettings(), clock=clock, metrics=metrics)

    def waited(webhook: str) -> float | None:
        return metrics.registry.get_sample_value(
            "retention_notifications_oldest_pending_seconds", {"webhook": webhook}
        )

    async with httpx.AsyncClient(timeout=2) as client:
        assert await notifier.run_once(client) == (1, 0, 1)
        assert (waited("gone"), waited("idle")) == (0.0, 0.0)
        clock.advance(timedelta(minutes=90))
        await notifier.run_once(client)
        assert (waited("gone"), waited("idle")) == (5400.0, 0.0)
