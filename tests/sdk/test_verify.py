"""`@app.verify`: answers to verify events (SPEC §12), and what they never do."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import (
    AckStatus,
    ConfigurationError,
    ConsumerSettings,
    EventType,
    RetentionConsumer,
    RetentionEvent,
)
from consumer_sdk.testing import TestConsumer
from tests.sdk.helpers import event


def make_app() -> RetentionConsumer:
    return RetentionConsumer("svc", settings=ConsumerSettings(max_attempts=3, database_url=None))


async def test_counts_become_verified_or_still_present() -> None:
    app = make_app()
    left = {"42": 0, "43": 2}

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        raise AssertionError("a verify event reached the delete handler")

    @app.verify("user")
    async def count_user(event: RetentionEvent) -> int:
        return left[event.entity_id]

    gone, back = event("42", action=EventType.VERIFY), event("43", action=EventType.VERIFY)
    async with TestConsumer(app) as t:
        acks = await t.deliver(gone, back)
        assert [(a.event_id, a.status, a.records_affected) for a in acks] == [
            (gone.event_id, AckStatus.VERIFIED, 0),
            (back.event_id, AckStatus.STILL_PRESENT, 2),
        ]
        # Asked again, counted again: verification is never "already processed".
        again = await t.deliver_batch(back)
        assert [a.status for a in again] == [AckStatus.STILL_PRESENT]
        assert t.mock(count_user).call_count == 3
        t.mock(delete_user).assert_not_called()


async def test_without_a_verify_handler_the_answer_is_unsupported() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        raise AssertionError("a verify event reached the delete handler")

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event(action=EventType.VERIFY))
        assert (ack.status, ack.records_affected) == (AckStatus.UNSUPPORTED, 0)
        # A type the service doesn't handle is not its to answer.
        assert await t.deliver(event(entity_type="order", action=EventType.VERIFY)) == []
        t.mock(delete_user).assert_not_called()


async def test_a_verify_event_in_a_batch_runs_after_the_deletes_before_it() -> None:
    app = make_app()
    rows = {"42"}

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        rows.discard(event.entity_id)
        return 1

    @app.verify("user")
    async def count_user(event: RetentionEvent) -> int:
        return int(event.entity_id in rows)

    delete, verify = event("42"), event("42", action=EventType.VERIFY)
    async with TestConsumer(app) as t:
        acks = await t.deliver_batch(delete, verify)
    assert [a.status for a in acks] == [AckStatus.COMPLETED, AckStatus.VERIFIED]


async def test_a_failing_count_is_acked_failed_never_verified() -> None:
    app = make_app()

    @app.verify("user")
    async def count_user(event: RetentionEvent) -> int:
        raise RuntimeError("no database")

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event(action=EventType.VERIFY))
        assert ack.status is AckStatus.FAILED
        assert ack.detail.startswith("RuntimeError")
        assert t.dead_letters == []


def test_verification_is_not_in_the_registration_and_one_per_type() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    @app.verify("user")
    async def count_user(event: RetentionEvent) -> int:
        return 0

    assert [(h.entity_type, h.actions) for h in app.registration().handles] == [
        ("user", [EventType.DELETE])
    ]
    with pytest.raises(ConfigurationError, match="already handled"):
        app.verify("user")(count_user)


def test_verification_is_never_a_data_changing_handler() -> None:
    app = make_app()

    async def count_user(event: RetentionEvent) -> int:
        return 0

    with pytest.raises(ConfigurationError, match=r"@app\.verify"):
        app.handlers.add(
            "user",
            EventType.VERIFY,
            count_user,
            max_attempts=None,
            throws=(),
            database_available=False,
        )


def test_a_verify_handler_taking_a_connection_needs_a_database() -> None:
    app = make_app()

    async def count_user(event: RetentionEvent, conn: AsyncConnection) -> int:
        return 0

    with pytest.raises(ConfigurationError, match="no database"):
        app.verify("user")(count_user)


async def test_an_anonymize_only_service_is_never_asked_and_stays_silent() -> None:
    app = make_app()

    @app.on_anonymize("order")
    async def anonymize_order(event: RetentionEvent) -> int:
        raise AssertionError("a verify event reached the anonymize handler")

    async with TestConsumer(app) as t:
        assert await t.deliver(event(entity_type="order", action=EventType.VERIFY)) == []


async def test_a_verify_handler_cannot_write_through_its_connection(fresh_database: str) -> None:
    app = RetentionConsumer(
        "svc", settings=ConsumerSettings(max_attempts=3, database_url=fresh_database)
    )

    @app.on_startup
    async def create(conn: AsyncConnection) -> None:
        await conn.execute(text("CREATE TABLE kept (id text)"))

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        raise AssertionError("a verify event reached the delete handler")

    @app.verify("user")
    async def count_and_delete(event: RetentionEvent, conn: AsyncConnection) -> int:
        await conn.execute(text("INSERT INTO kept VALUES ('written by a verify handler')"))
        await conn.commit()
        return 0

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event(action=EventType.VERIFY))
        assert t.engine is not None
        async with t.engine.connect() as conn:
            left = await conn.scalar(text("SELECT count(*) FROM kept"))
    assert ack.status is AckStatus.FAILED
    assert left == 0
