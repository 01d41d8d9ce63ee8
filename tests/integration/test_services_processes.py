"""The three example services as real processes on the real broker and database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

from sqlalchemy import func, select

from coordinator.store.db import make_engine
from schemas import AckStatus, EventType, KafkaSettings, RetentionAck, decode
from services import billing, notifications, preferences
from tests.infra import ROOT
from tests.sdk.helpers import event
from tests.sdk.kafka_io import produce, read_topic


def start(name: str, kafka: KafkaSettings, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RETENTION_SERVICE_DATABASE_URL": database_url,
        "RETENTION_CONSUMER_POLL_TIMEOUT_S": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def test_services_erase_their_data_and_ack(
    topics: KafkaSettings, fresh_database: str
) -> None:
    users = [f"user{i}" for i in range(8)]
    await notifications.seed(fresh_database, users)
    await preferences.seed(fresh_database, users)
    await billing.seed(fresh_database, users, order_ids={"user0": ["order-a", "order-b"]})
    deletes = [event(u) for u in users]
    order_event = event("order-a", entity_type="order", action=EventType.ANONYMIZE)
    await produce(topics, [*deletes, order_event])

    procs = {
        name: start(name, topics, fresh_database)
        for name in ("notifications", "preferences", "billing")
    }
    try:
        # order-a is anonymized by whichever comes first; the user delete covers the rest.
        records = await read_topic(
            topics, topics.topics.acks, expect=3 * len(users) + 1, timeout_s=60
        )
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        outputs = {name: proc.communicate(timeout=30)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name].decode()[-3000:]

    acks = [decode(RetentionAck, r.value) for r in records]
    per_service = Counter((a.service, a.status) for a in acks)
    assert per_service[("notifications", AckStatus.COMPLETED)] == len(users)
    assert per_service[("preferences", AckStatus.COMPLETED)] == len(users)
    assert sum(n for (svc, _), n in per_service.items() if svc == "billing") == len(users) + 1
    assert len({(a.service, a.event_id) for a in acks}) == len(acks)

    engine = make_engine(fresh_database)
    try:
        async with engine.connect() as conn:
            n_left = await conn.scalar(
                select(func.count()).select_from(notifications.notifications)
            )
            p_left = await conn.scalar(select(func.count()).select_from(preferences.preferences))
            linked = await conn.scalar(
                select(func.count())
                .select_from(billing.orders)
                .where(billing.orders.c.user_id.is_not(None))
            )
            unmasked = await conn.scalar(
                select(func.count())
                .select_from(billing.orders)
                .where(billing.orders.c.email != billing.MASK)
            )
    finally:
        await engine.dispose()
    assert (n_left, p_left, linked, unmasked) == (0, 0, 0, 0)
    # Each process logged JSON lines with ids, never the seeded personal data.
    for output in outputs.values():
        assert b"@example.com" not in output
        assert b'"event": "consumer_started"' in output or b'"event":"consumer_started"' in output
