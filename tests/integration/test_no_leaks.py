"""No secret or personal data in any stored or served error text (SPEC §13, issue 14).

Two failures are injected, each with a message holding a known e-mail address and bound
parameters holding a known secret:

- an anonymize batch whose UPDATE a trigger refuses, quoting the row's e-mail; the
  statement's parameters are the HMAC key's pads (once stored in the run log, served
  at /v1/runs and /v1/policies);
- a service handler whose statement fails on a parameter holding both (once in ack
  `detail`, the DLQ's headers, the ledger and the API).

Then every table, every record of every topic (key, value, headers), every log line and
every API response is searched for the secret, its pads and the e-mail address.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import ConsumerSettings, RetentionConsumer
from coordinator.api import ApiContext, create_app
from coordinator.api.health import KafkaHealth
from coordinator.api.tokens import Scope, TokenStore, add_token, new_token
from coordinator.clock import SystemClock
from coordinator.metrics import Metrics
from coordinator.policy.model import parse_policies
from coordinator.purge.runner import Runner
from coordinator.settings import Settings, TrackerSettings
from coordinator.store.db import make_engine
from coordinator.tracking.tracker import Tracker
from schemas import KafkaSettings, RetentionEvent
from schemas.logs import configure_logging
from schemas.signing import SignatureMode
from tests import keys
from tests.sdk.helpers import event
from tests.sdk.kafka_io import produce, read_topic

SECRET = "Leaky-HMAC-Key-7f3a9c"
EMAIL = "alice.leak@example.com"

POLICIES = """\
policies:
  - name: leak_customers
    table: leak_customers
    entity_type: customer
    timestamp_column: updated_at
    retention: 1d
    action: anonymize
    legal_basis: "Test: an anonymize batch that fails"
    anonymize:
      email: hash
"""


def _forms_of_the_secret() -> list[str]:
    # The HMAC key goes to PostgreSQL as its two pads (coordinator/policy/anonymizers.py);
    # either one gives the key back, in any rendering a driver or a log might use.
    block = SECRET.encode().ljust(64, b"\0")
    forms = [SECRET]
    for pad in (0x36, 0x5C):
        padded = bytes(b ^ pad for b in block)[: len(SECRET)]
        forms += [padded.hex(), repr(padded)[2:-1], padded.decode("latin-1")]
    return forms


NEEDLES = [*_forms_of_the_secret(), EMAIL]


def _leaks(where: str, haystack: Iterable[str]) -> list[str]:
    return [
        f"{where}: {needle!r} in {item[:200]!r}"
        for item in haystack
        for needle in NEEDLES
        if needle in item
    ]


async def _tables(conn: AsyncConnection, *, but: str) -> dict[str, list[str]]:
    names = (
        await conn.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        )
    ).scalars()
    dump = {}
    for name in names:
        if name == but:
            continue
        rows = await conn.execute(text(f'SELECT CAST(t AS text) FROM "{name}" t'))
        dump[name] = list(rows.scalars())
    return dump


async def _topic_texts(kafka: KafkaSettings) -> list[str]:
    texts = []
    for topic in kafka.topics.all():
        for record in await read_topic(kafka, topic, expect=10**9, timeout_s=3):
            parts = [record.key or b"", record.value or b""]
            parts += [k.encode() + b"=" + v for k, v in record.headers]
            texts += [p.decode("utf-8", "replace") for p in parts]
            texts += [repr(p) for p in parts]
    return texts


@pytest.fixture
async def subject_table(coordinator_db: str) -> str:
    engine = make_engine(coordinator_db)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS leak_customers"))
        await conn.execute(
            text(
                "CREATE TABLE leak_customers (id integer PRIMARY KEY, email text, "
                "updated_at timestamptz NOT NULL)"
            )
        )
        await conn.execute(
            text("INSERT INTO leak_customers VALUES (1, :email, now() - interval '30 days')"),
            {"email": EMAIL},
        )
        # The failure quotes the row's personal data, as constraint errors do.
        await conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION leak_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN RAISE EXCEPTION 'refusing to change %', OLD.email "
                "USING ERRCODE = 'P0001'; END$$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER leak_refuse BEFORE UPDATE ON leak_customers "
                "FOR EACH ROW EXECUTE FUNCTION leak_refuse()"
            )
        )
    await engine.dispose()
    return "leak_customers"


async def test_no_secret_or_email_in_tables_topics_logs_or_responses(
    coordinator_db: str,
    topics: KafkaSettings,
    subject_table: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    configure_logging("DEBUG", json=True)
    engine = make_engine(coordinator_db)
    try:
        # 1. The anonymize batch fails inside PostgreSQL.
        settings = Settings(database_url=SecretStr(coordinator_db), hash_secret=SecretStr(SECRET))
        report = await Runner(engine, parse_policies(POLICIES), settings, clock=SystemClock()).run()
        [outcome] = report.outcomes
        assert outcome.errors == ["DBAPIError SQLSTATE P0001"], outcome.errors

        # 2. A handler's statement fails on a parameter holding the e-mail and the secret.
        app = RetentionConsumer(
            "leaky",
            kafka=topics,
            settings=ConsumerSettings(
                database_url=None,
                max_attempts=2,
                retry_initial_s=0.01,
                retry_max_s=0.02,
                retry_jitter_s=0.0,
                poll_timeout_s=0.2,
            ),
            database_url=coordinator_db,
        )

        @app.on_delete("user")
        async def delete_user(event: RetentionEvent, conn: AsyncConnection) -> int:
            await conn.execute(text("SELECT CAST(:v AS integer)"), {"v": f"{EMAIL} {SECRET}"})
            return 1

        sent = event("leak-1")
        await produce(topics, [sent])
        await app.start()
        try:
            [ack] = await read_topic(topics, topics.topics.acks, expect=1)
            [dead] = await read_topic(topics, topics.topics.dlq, expect=1)
        finally:
            await app.stop()
        assert b"failed" in ack.value
        assert dict(dead.headers)["retention.dlq.error"].startswith(b"DBAPIError")

        # The tracker ledgers the ack (detail included).
        tracker = Tracker(
            engine,
            topics,
            TrackerSettings(group_id=f"{topics.topic_prefix}.tracker"),
            clock=SystemClock(),
            metrics=Metrics(CollectorRegistry()),
            services=[keys.declared("leaky", {"user": ["delete"]})],
            signatures=SignatureMode.REQUIRED,
            signer=keys.signer(keys.COORDINATOR),
        )
        await tracker.start()
        try:
            assert await tracker.consume_acks(timeout_s=5.0) is not None
        finally:
            await tracker.stop()

        # 3. Everything that is stored, sent or served.
        tokens_file = tmp_path / "tokens.yaml"
        reader = new_token("leak-reader", Scope.READ)
        add_token(tokens_file, reader.entry)
        health = KafkaHealth(topics)
        ctx = ApiContext(
            engine=engine,
            kafka_health=health,
            registry=CollectorRegistry(),
            clock=SystemClock(),
            tokens=TokenStore(tokens_file),
            policy_set=parse_policies(POLICIES),
            global_schedule="30 2 * * *",
            health_timeout_s=15.0,
        )
        responses: list[str] = []
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://api",
            headers={"Authorization": f"Bearer {reader.token}"},
        ) as client:
            paths = [
                "/healthz",
                "/metrics",
                "/v1/policies",
                "/v1/runs",
                f"/v1/runs/{report.run_id}",
                f"/v1/events/{sent.event_id}",
                f"/v1/entities/user/{sent.entity_id}",
                "/v1/entities/customer/1",
            ]
            for path in paths:
                response = await client.get(path)
                responses.append(f"{path} {response.status_code} {response.text}")
        await health.close()
        assert any(str(report.run_id) in r for r in responses)

        async with engine.connect() as conn:
            tables = await _tables(conn, but=subject_table)
            # The search works: the subject's own row holds the e-mail it must find.
            subject = (
                await conn.execute(text(f"SELECT CAST(t AS text) FROM {subject_table} t"))
            ).scalars()
            assert _leaks(subject_table, subject)
    finally:
        await engine.dispose()

    assert {"retention_runs", "retention_ack_ledger"} <= tables.keys()
    logs = capsys.readouterr()
    found = [
        *(leak for name, rows in tables.items() for leak in _leaks(f"table {name}", rows)),
        *_leaks("topic", await _topic_texts(topics)),
        *_leaks("log", (logs.out + logs.err).splitlines()),
        *_leaks("API", responses),
    ]
    assert found == []
    assert "DBAPIError" in logs.err, "the failures were logged"
