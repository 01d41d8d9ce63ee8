"""Erasure requests end to end on the real broker and database (SPEC §11): every mapped
table, whatever the rows' age and the policies' conditions; exemptions; subject holds in
requests and runs; fan-out with the subject event; completion once every service acked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer_sdk import RetentionConsumer, RetentionEvent
from coordinator.clock import FrozenClock, SystemClock
from coordinator.copies.crypto.keystore import open_keystore
from coordinator.erasure.due import Regulation
from coordinator.erasure.requests import (
    ErasureError,
    Status,
    UnknownSubjectType,
    create_request,
    get_request,
    list_requests,
    request_parts,
)
from coordinator.erasure.service import Erasure
from coordinator.metrics import Metrics
from coordinator.outbox.relay import OutboxRelay
from coordinator.policy.model import PolicySet, parse_policies
from coordinator.purge.archive import (
    CryptoShredded,
    archive_definition,
    clear_columns,
    read_archived,
    store_sealed,
)
from coordinator.purge.holds import (
    EntityTypes,
    IdForm,
    IdKind,
    create_hold,
    entity_types,
    release_hold,
)
from coordinator.purge.runner import Runner
from coordinator.settings import RelaySettings, Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.tracking.tracker import Tracker
from schemas import KafkaSettings
from tests import infra, keys
from tests.integration import operations_support
from tests.integration.tracking_support import (
    insert_published,
    make_tracker,
    produce,
    registration,
)

POLICIES = """\
policies:
  - name: accounts
    table: er_accounts
    entity_type: user
    timestamp_column: closed_at
    retention: 30d
    action: delete
    legal_basis: "GDPR Art. 5(1)(e)"
    conditions: "status = 'closed'"
    fan_out: true
  - name: sessions
    table: er_sessions
    entity_type: session
    timestamp_column: created_at
    retention: 90d
    action: delete
    legal_basis: "Legitimate interest"
    conditions: "id < 0"
    batch_size: 2
    subject: {entity_type: user, column: user_id}
  - name: sessions_scrub
    table: er_sessions
    entity_type: session
    timestamp_column: created_at
    retention: 30d
    action: anonymize
    legal_basis: "Legitimate interest"
    anonymize: {ip: redact}
    subject: {entity_type: user, column: user_id}
  - name: orders
    table: er_orders
    entity_type: order
    timestamp_column: created_at
    retention: 3650d
    action: anonymize
    legal_basis: "Contract"
    anonymize: {customer_name: redact}
    fan_out: true
    subject: {entity_type: user, column: customer_id}
  - name: tickets
    table: er_tickets
    entity_type: ticket
    timestamp_column: resolved_at
    retention: 730d
    action: archive
    legal_basis: "Service improvement"
    fan_out: true
    subject: {entity_type: user, column: owner_id}
  - name: invoices
    table: er_invoices
    entity_type: invoice
    timestamp_column: issued_at
    retention: 3650d
    action: delete
    legal_basis: "Tax law"
    subject: {entity_type: user, column: customer_id}
    on_erasure_request: exempt
    exemption_basis: "GDPR Art. 17(3)(b): tax records kept 10 years"
services:
  - name: billing
    owner: tests
    handles: {user: [delete], order: [anonymize], ticket: [delete]}
    public_keys: ["KEY"]
""".replace("KEY", keys.public_key())

TABLES = """
CREATE TABLE er_accounts (id bigint PRIMARY KEY, email text, status text, closed_at timestamptz);
CREATE TABLE er_sessions (id bigint PRIMARY KEY, user_id bigint, ip text, created_at timestamptz);
CREATE TABLE er_orders (id bigint PRIMARY KEY, customer_id bigint, customer_name text,
                        created_at timestamptz);
CREATE TABLE er_tickets (id bigint PRIMARY KEY, owner_id bigint, body text,
                         resolved_at timestamptz);
CREATE TABLE er_invoices (id bigint PRIMARY KEY, customer_id bigint, issued_at timestamptz);
"""

USERS = (41, 42, 44)
HELD = 44
"""User 44 is under a subject hold; 41 is the bystander."""

FAST = operations_support.FAST.model_copy(update={"max_attempts": 3})


async def _seed(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    young, old = now - timedelta(days=1), now - timedelta(days=5000)
    async with engine.begin() as conn:
        for statement in TABLES.split(";"):
            if statement.strip():
                await conn.execute(text(statement))
        for u in USERS:
            await conn.execute(
                text("INSERT INTO er_accounts VALUES (:u, :e, 'active', NULL)"),
                {"u": u, "e": f"u{u}@example.com"},
            )
            for k, ts in enumerate((young, old)):
                n = u * 10 + k
                params = {"n": n, "u": u, "ts": ts}
                await conn.execute(
                    text("INSERT INTO er_sessions VALUES (:n, :u, '10.0.0.1', :ts)"), params
                )
                await conn.execute(
                    text("INSERT INTO er_orders VALUES (:n, :u, 'Ann', :ts)"), params
                )
                await conn.execute(
                    text("INSERT INTO er_tickets VALUES (:n, :u, 'hi', :ts)"), params
                )
                await conn.execute(text("INSERT INTO er_invoices VALUES (:n, :u, :ts)"), params)
    # An old ticket of user 42 archived, sealed, by an earlier run: its copy is shredded.
    async with engine.begin() as conn:
        tickets = await conn.run_sync(
            lambda sync: Table("er_tickets", MetaData(), autoload_with=sync)
        )
        clear = clear_columns(tickets, ["id", "resolved_at", "owner_id"])
        archive = archive_definition(tickets, clear)
        await conn.run_sync(lambda sync: archive.create(sync))
        archived = (
            await conn.execute(
                text(
                    "SELECT * FROM (VALUES (999, 42, 'old', CAST(:ts AS timestamptz)), "
                    "(998, 41, 'old', CAST(:ts AS timestamptz))) "
                    "AS t(id, owner_id, body, resolved_at)"
                ),
                {"ts": old},
            )
        ).all()
        keys = open_keystore(Settings(), engine)
        await store_sealed(
            conn,
            archive,
            archived,
            id_column="id",
            clear=clear,
            scopes=["tickets/user:42", "tickets/user:41"],
            keys=keys,
            now=now,
        )


async def _rows(engine: AsyncEngine, table: str, user_column: str, user: int) -> list[tuple]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(f"SELECT * FROM {table} WHERE {user_column} = :u ORDER BY id"),
            {"u": user},
        )
        return [tuple(r) for r in result]


@dataclass
class Env:
    engine: AsyncEngine
    policy_set: PolicySet
    settings: Settings
    erasure: Erasure
    kafka: KafkaSettings
    url: str


@pytest.fixture
async def env(postgres_url: str, topics: KafkaSettings) -> AsyncIterator[Env]:
    url = await infra.create_database(postgres_url, "test_erasure")
    await upgrade(url)
    settings = Settings(database_url=url, kafka=topics)
    policy_set = parse_policies(POLICIES, "erasure.yaml")
    engine = make_engine(url)
    await _seed(engine)
    async with engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, policy_set),
            entities=[f"user:{HELD}"],
            reason="Litigation hold, case 7",
            created_by="legal",
            now=datetime.now(UTC),
            hold_id="case-7",
        )
    erasure = Erasure(engine, policy_set, settings, SystemClock(), Metrics())
    try:
        yield Env(engine, policy_set, settings, erasure, topics, url)
    finally:
        await engine.dispose()
        await infra.drop_database(url)


def _service(kafka: KafkaSettings, seen: list[RetentionEvent]) -> RetentionConsumer:
    app = RetentionConsumer("billing", kafka=kafka, settings=FAST)

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        seen.append(event)
        return 1

    @app.on_anonymize("order")
    async def anonymize_order(event: RetentionEvent) -> int:
        seen.append(event)
        return 1

    @app.on_delete("ticket")
    async def delete_ticket(event: RetentionEvent) -> int:
        seen.append(event)
        return 1

    return app


async def _until(check: object, what: str, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_request_erases_every_mapped_table_fans_out_and_completes(env: Env) -> None:
    engine = env.engine
    seen: list[RetentionEvent] = []
    app = _service(env.kafka, seen)
    tracker: Tracker
    tracker, tracker_engine, _ = make_tracker(
        env.url, env.kafka, SystemClock(), services=parse_policies(POLICIES).services
    )
    await app.start()
    await tracker.start()
    try:
        # The service's registration reaches the tracker before anything is published.
        async def registered() -> bool:
            await tracker.poll_registry(timeout_s=0.2)
            async with engine.connect() as conn:
                found = await conn.execute(text("SELECT count(*) FROM retention_services"))
                return bool(found.scalar_one() >= 3)

        await _until(registered, "billing's registration")

        request, created = await env.erasure.create(
            subject="user:42",
            regulation=Regulation.GDPR,
            received_at=datetime(2026, 1, 31, 9, 0, tzinfo=UTC),
            reference="ticket-42",
            by="dpo@example.com",
        )
        assert created
        assert request.status is Status.IN_PROGRESS
        assert request.due_at == datetime(2026, 2, 28, 9, 0, tzinfo=UTC)
        assert request.overdue(datetime.now(UTC))

        # Local work: every mapped table, young and old rows, conditions ignored.
        assert await _rows(engine, "er_accounts", "id", 42) == []
        assert await _rows(engine, "er_sessions", "user_id", 42) == []
        assert [r[2] for r in await _rows(engine, "er_orders", "customer_id", 42)] == [
            "[REDACTED]",
            "[REDACTED]",
        ]
        assert await _rows(engine, "er_tickets", "owner_id", 42) == []
        # The archived copies stay, sealed under a key that no longer exists.
        assert len(await _rows(engine, "er_tickets_archive", "owner_id", 42)) == 3
        assert len(await _rows(engine, "er_invoices", "customer_id", 42)) == 2  # exempt
        # Other users untouched, held user included.
        for user in (41, HELD):
            assert len(await _rows(engine, "er_accounts", "id", user)) == 1
            assert len(await _rows(engine, "er_sessions", "user_id", user)) == 2
            assert {r[2] for r in await _rows(engine, "er_orders", "customer_id", user)} == {"Ann"}
            assert len(await _rows(engine, "er_tickets", "owner_id", user)) == 2
        assert len(await _rows(engine, "er_tickets_archive", "owner_id", 41)) == 1

        async with engine.connect() as conn:
            parts = {p["policy"]: p for p in await request_parts(conn, request.id)}
        assert parts["accounts"]["rows"] == 1
        assert parts["sessions"]["rows"] == 2
        assert parts["sessions_scrub"]["outcome"] == "superseded"  # delete wins over anonymize
        assert parts["orders"]["action"] == "anonymize"
        assert parts["orders"]["rows"] == 2
        # Two just archived, one older: all under user 42's data key, now destroyed.
        assert parts["tickets"]["archived_copies_shredded"] == 3
        assert parts["tickets"]["shredded_key_id"] is not None
        keys = open_keystore(env.settings, engine)
        async with engine.connect() as conn:
            archive = await conn.run_sync(
                lambda sync: Table("er_tickets_archive", MetaData(), autoload_with=sync)
            )
            with pytest.raises(CryptoShredded, match="crypto-shredded"):
                await read_archived(
                    conn, archive, keys, id_column="id", where=archive.c.owner_id == 42
                )
            bystander = await read_archived(
                conn, archive, keys, id_column="id", where=archive.c.owner_id == 41
            )
        assert [(r["id"], r["body"]) for r in bystander] == [(998, "old")]
        assert parts["invoices"]["outcome"] == "exempt"
        assert parts["invoices"]["rows"] == 2
        assert parts["invoices"]["exemption_basis"].startswith("GDPR Art. 17(3)(b)")

        # Fan-out: the relay publishes; the service acks; the tracker records it.
        relay = OutboxRelay(engine, env.kafka, settings=RelaySettings(), metrics=Metrics())
        async with relay:
            published = await relay.drain(timeout_s=60)
        # accounts (1) + orders (2) + tickets (2) + the subject event; sessions: no fan_out.
        assert published == 6

        async def events_seen() -> bool:
            return len({e.event_id for e in seen}) >= 6

        await _until(events_seen, "the service's handlers")
        by_policy = {e.policy: e for e in seen}
        subject_event = by_policy["erasure_request"]
        assert (subject_event.entity_type, subject_event.entity_id) == ("user", "42")
        assert subject_event.legal_basis == "GDPR Art. 17"
        assert subject_event.deadline == request.due_at
        assert {str(e.reason) for e in seen} == {"erasure_request"}
        assert {e.request_id for e in seen} == {request.id}
        assert {e.subject for e in seen} == {"user:42"}

        async def completed() -> bool:
            await tracker.track_published()
            await tracker.consume_acks(timeout_s=0.2)
            await env.erasure.advance()
            async with engine.connect() as conn:
                return (await get_request(conn, request.id)).status is Status.COMPLETED

        await _until(completed, "the request to complete")
        metrics = env.erasure.metrics
        assert metrics is not None
        sample = metrics.registry.get_sample_value
        assert sample("retention_erasure_requests", {"status": "completed"}) == 1
        assert sample("retention_erasure_requests_overdue", {}) == 0

        # Idempotent by reference: the first request, nothing acted twice.
        again, created = await env.erasure.create(
            subject="user:41",
            regulation=Regulation.CCPA,
            received_at=None,
            reference="ticket-42",
            by="dpo@example.com",
        )
        assert (again.id, created) == (request.id, False)
        assert len(await _rows(engine, "er_accounts", "id", 41)) == 1
    finally:
        await tracker.stop()
        await tracker_engine.dispose()
        await app.stop()


async def test_subject_hold_keeps_every_mapped_row_and_names_the_hold(env: Env) -> None:
    engine = env.engine
    request, _ = await env.erasure.create(
        subject=f"user:{HELD}",
        regulation=Regulation.CCPA,
        received_at=None,
        reference=None,
        by="dpo@example.com",
    )
    assert request.status is Status.ON_HOLD
    assert request.holds == ("case-7",)
    assert len(await _rows(engine, "er_accounts", "id", HELD)) == 1
    assert len(await _rows(engine, "er_sessions", "user_id", HELD)) == 2
    assert {r[2] for r in await _rows(engine, "er_orders", "customer_id", HELD)} == {"Ann"}
    async with engine.connect() as conn:
        events = await conn.execute(
            text("SELECT count(*) FROM retention_outbox_batches WHERE request_id = :r"),
            {"r": request.id},
        )
        assert events.scalar_one() == 0  # no subject event while the subject is held
        parts = {p["policy"]: p for p in await request_parts(conn, request.id)}
    assert parts["sessions"]["held"] == 2

    # The hold is released: the next status move executes the request again.
    async with engine.begin() as conn:
        await release_hold(conn, "case-7", by="legal", now=datetime.now(UTC))
    await env.erasure.advance()
    async with engine.connect() as conn:
        after = await get_request(conn, request.id)
        parts = {p["policy"]: p for p in await request_parts(conn, request.id)}
    assert after.status is Status.IN_PROGRESS
    assert after.holds == ()
    assert await _rows(engine, "er_sessions", "user_id", HELD) == []
    # The parts add up both executions: held first, erased after the release.
    assert (parts["sessions"]["rows"], parts["sessions"]["held"]) == (2, 0)
    assert (parts["invoices"]["outcome"], parts["invoices"]["rows"]) == ("exempt", 2)


async def test_a_request_whose_execution_was_lost_is_executed_again(env: Env) -> None:
    engine = env.engine
    filed_at = datetime.now(UTC) - timedelta(minutes=5)
    async with engine.begin() as conn:
        types = await entity_types(conn, env.policy_set)
        for subject, reference in (("user:41", "lost-1"), ("user:42", "lost-2")):
            # Recorded, then the process died before acting (no run, status received).
            await create_request(
                conn,
                env.policy_set,
                types,
                subject=subject,
                regulation=Regulation.GDPR,
                received_at=None,
                reference=reference,
                by="dpo",
                now=filed_at,
                default_days=30,
            )
    # Filing it again with its reference resumes it.
    resumed, created = await env.erasure.create(
        subject="user:41",
        regulation=Regulation.GDPR,
        received_at=None,
        reference="lost-1",
        by="dpo",
    )
    assert (created, resumed.status) == (False, Status.IN_PROGRESS)
    assert await _rows(engine, "er_accounts", "id", 41) == []
    # The leader's status moves pick up the other one.
    await env.erasure.advance()
    assert await _rows(engine, "er_accounts", "id", 42) == []
    async with engine.connect() as conn:
        lost = await list_requests(conn, now=datetime.now(UTC), status=Status.RECEIVED)
    assert lost == []


async def test_subject_hold_protects_mapped_rows_in_a_policy_run(env: Env) -> None:
    engine = env.engine
    async with engine.begin() as conn:
        # Everyone's sessions are due for the anonymize policy; the held user's stay.
        await conn.execute(text("UPDATE er_sessions SET created_at = now() - interval '400 days'"))
    runner = Runner(engine, env.policy_set, env.settings)
    report = await runner.run(only=["sessions_scrub"])
    (outcome,) = report.outcomes
    assert outcome.status == "ok", outcome.errors
    assert outcome.processed == 4
    assert outcome.held == 2
    assert {r[2] for r in await _rows(engine, "er_sessions", "user_id", HELD)} == {"10.0.0.1"}
    assert {r[2] for r in await _rows(engine, "er_sessions", "user_id", 41)} == {"[REDACTED]"}


async def test_unknown_subject_types_and_bad_input_are_refused(env: Env) -> None:
    with pytest.raises(UnknownSubjectType, match="known subject types: user"):
        await env.erasure.create(
            subject="customer:42",
            regulation=Regulation.GDPR,
            received_at=None,
            reference=None,
            by="dpo",
        )
    with pytest.raises(ErasureError, match="is not one"):
        await env.erasure.create(
            subject="user:abc",  # every user column is an integer
            regulation=Regulation.GDPR,
            received_at=None,
            reference=None,
            by="dpo",
        )
    # Ids are normalised as holds normalise them: user:041 is user:41.
    request, _ = await env.erasure.create(
        subject="user:041", regulation=Regulation.GDPR, received_at=None, reference=None, by="dpo"
    )
    assert request.subject == "user:41"
    assert await _rows(env.engine, "er_accounts", "id", 41) == []
    with pytest.raises(ErasureError, match="in the future"):
        await env.erasure.create(
            subject="user:42",
            regulation=Regulation.GDPR,
            received_at=datetime.now(UTC) + timedelta(days=1),
            reference=None,
            by="dpo",
        )


async def test_reminders_skip_events_whose_entity_or_subject_is_held(
    postgres_url: str, topics: KafkaSettings
) -> None:
    url = await infra.create_database(postgres_url, "test_erasure_reminders")
    await upgrade(url)
    t0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    clock = FrozenClock(t0)
    tracker, engine, _ = make_tracker(
        url, topics, clock, services=[keys.declared("crm", {"session": ["delete"]})]
    )
    try:
        await produce(
            topics, topics.topics.services, [registration("crm", t0 - timedelta(days=1), "session")]
        )
        await tracker.start()
        await tracker.sync_registry()
        subject_held, entity_held, free = await insert_published(
            engine,
            ["1", "2", "3"],
            published_at=t0,
            entity_type="session",
            subjects=["user:44", None, "user:41"],
        )
        async with engine.begin() as conn:
            await create_hold(
                conn,
                types=EntityTypes(
                    {"user": (IdForm(IdKind.TEXT),), "session": (IdForm(IdKind.TEXT),)}
                ),
                entities=["user:44", "session:2"],
                reason="case",
                created_by="legal",
                now=t0,
            )
        assert await tracker.track_published() == 3
        clock.advance(timedelta(hours=2))
        assert await tracker.send_reminders() == 1
        async with engine.connect() as conn:
            sent = dict(
                (
                    await conn.execute(
                        text("SELECT event_id, reminders_sent FROM retention_event_status")
                    )
                ).all()
            )
        assert sent == {subject_held: 0, entity_held: 0, free: 1}
    finally:
        await tracker.stop()
        await engine.dispose()
        await infra.drop_database(url)


async def test_a_mapped_table_that_does_not_bind_is_an_error_not_a_skip(env: Env) -> None:
    async with env.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE er_invoices RENAME COLUMN customer_id TO client_id"))
    request, _ = await env.erasure.create(
        subject="user:42", regulation=Regulation.GDPR, received_at=None, reference=None, by="dpo"
    )
    assert request.status is Status.RECEIVED  # open: not every mapped table was handled
    async with env.engine.connect() as conn:
        parts = {p["policy"]: p for p in await request_parts(conn, request.id)}
    assert parts["invoices"]["outcome"] == "error"
    assert "no column 'customer_id'" in parts["invoices"]["detail"]
    assert parts["sessions"]["outcome"] == "done"  # the rest is still done


async def test_an_entity_hold_keeps_one_row_and_the_parts_add_up_after_release(env: Env) -> None:
    engine = env.engine
    async with engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, env.policy_set),
            entities=["session:420"],
            reason="one session under review",
            created_by="legal",
            now=datetime.now(UTC),
            hold_id="review-420",
        )
    request, _ = await env.erasure.create(
        subject="user:42", regulation=Regulation.GDPR, received_at=None, reference=None, by="dpo"
    )
    assert (request.status, request.holds) == (Status.ON_HOLD, ("review-420",))
    assert [r[0] for r in await _rows(engine, "er_sessions", "user_id", 42)] == [420]
    assert await _rows(engine, "er_accounts", "id", 42) == []  # the rest is still done
    async with engine.begin() as conn:
        await release_hold(conn, "review-420", by="legal", now=datetime.now(UTC))
    await env.erasure.advance()
    async with engine.connect() as conn:
        after = await get_request(conn, request.id)
        parts = {p["policy"]: p for p in await request_parts(conn, request.id)}
    assert after.status is Status.IN_PROGRESS
    assert await _rows(engine, "er_sessions", "user_id", 42) == []
    assert (parts["sessions"]["rows"], parts["sessions"]["held"]) == (2, 0)
    assert parts["accounts"]["rows"] == 1  # not counted twice
