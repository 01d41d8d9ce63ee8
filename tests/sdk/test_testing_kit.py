"""The in-memory test kit: what a service author sees, and the SDK's ack rules."""

from __future__ import annotations

import asyncio
import json

import pytest

from consumer_sdk import (
    AckStatus,
    ConsumerSettings,
    DlqHeader,
    DlqReason,
    EntityNotFound,
    EventType,
    HandlerContext,
    PermanentFailure,
    RetentionConsumer,
    RetentionEvent,
    RetryLater,
)
from consumer_sdk.testing import TestConsumer
from tests.sdk.helpers import event


def make_app() -> RetentionConsumer:
    return RetentionConsumer("svc", settings=ConsumerSettings(max_attempts=3, database_url=None))


async def test_completed_ack_and_mock() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 3

    e = event()
    async with TestConsumer(app) as t:
        acks = await t.deliver(e)
        assert [(a.status, a.records_affected, a.attempt) for a in acks] == [
            (AckStatus.COMPLETED, 3, 1)
        ]
        assert acks[0].event_id == e.event_id
        assert acks[0].service == "svc"
        t.mock(delete_user).assert_called_once_with(e)
        delete_user.mock.assert_called_once_with(e)  # type: ignore[attr-defined]
    assert not hasattr(delete_user, "mock")


async def test_redelivery_acks_again_without_calling_the_handler() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 2

    e = event()
    async with TestConsumer(app) as t:
        first = await t.deliver(e)
        second = await t.deliver(e)
        assert t.mock(delete_user).call_count == 1
    assert (second[0].status, second[0].records_affected) == (AckStatus.COMPLETED, 2)
    assert "redelivered" in second[0].detail
    assert first[0].detail == ""


async def test_entity_not_found_is_acked_not_found() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        raise EntityNotFound("no such user")

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event())
        assert (ack.status, ack.records_affected, ack.detail) == (
            AckStatus.NOT_FOUND,
            0,
            "EntityNotFound",
        )
        assert t.dead_letters == []


async def test_retry_later_then_success() -> None:
    app = make_app()

    @app.on_anonymize("order")
    async def anonymize(event: RetentionEvent, ctx: HandlerContext) -> int:
        if ctx.attempt < 3:
            raise RetryLater("database busy")
        return 1

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event(entity_type="order", action=EventType.ANONYMIZE))
        assert (ack.status, ack.attempt) == (AckStatus.COMPLETED, 3)
        assert t.mock(anonymize).call_count == 3


async def test_always_raising_handler_fails_after_max_attempts_to_the_dlq() -> None:
    app = make_app()

    @app.on_delete("user", max_attempts=4)
    async def delete_user(event: RetentionEvent) -> int:
        raise RuntimeError("disk on fire")

    e = event()
    async with TestConsumer(app) as t:
        [ack] = await t.deliver(e)
        assert (ack.status, ack.attempt, ack.detail) == (
            AckStatus.FAILED,
            4,
            "RuntimeError",
        )
        assert t.mock(delete_user).call_count == 4
        [dead] = t.dead_letters
        assert dead.reason is DlqReason.FAILED
        assert dead.key == e.key.encode()
        assert dead.headers[DlqHeader.ATTEMPTS] == "4"
        assert dead.headers[DlqHeader.SERVICE] == "svc"
        assert RetentionEvent.model_validate_json(dead.value) == e
        # A failed event is not recorded: a replay tries again.
        await t.deliver(e)
        assert t.mock(delete_user).call_count == 8


@pytest.mark.parametrize(
    "error", [PermanentFailure("bad data"), KeyError("missing")], ids=["permanent", "throws"]
)
async def test_permanent_errors_are_not_retried(error: Exception) -> None:
    app = make_app()

    @app.on_delete("user", throws=[KeyError])
    async def delete_user(event: RetentionEvent) -> int:
        raise error

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event())
        assert (ack.status, ack.attempt) == (AckStatus.FAILED, 1)
        assert len(t.dead_letters) == 1


async def test_bad_return_value_is_a_permanent_failure() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return -1

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event())
        assert ack.status is AckStatus.FAILED
        assert ack.detail == "PermanentFailure"
        assert ack.attempt == 1


async def test_unhandled_entity_type_gets_no_ack() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    other = event(entity_type="invoice")
    async with TestConsumer(app) as t:
        assert await t.deliver(other) == []
        assert await t.deliver(event(action=EventType.ANONYMIZE)) == []
        assert t.skipped[0] == other
        assert t.acks == []
        t.mock(delete_user).assert_not_called()


async def test_poison_records_go_to_the_dlq_with_the_reason() -> None:
    app = make_app()

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        return 1

    future = event().model_dump(mode="json") | {"schema_version": 2}
    async with TestConsumer(app) as t:
        assert await t.deliver_raw(b"\xff\xfe", key=b"k") == []
        assert await t.deliver_raw(None) == []
        assert await t.deliver_raw(json.dumps(future).encode()) == []
        reasons = [d.error for d in t.dead_letters]
        assert reasons[0].startswith("not UTF-8")
        assert reasons[1] == "empty value (tombstone)"
        assert "schema_version is newer" in reasons[2]
        assert {d.reason for d in t.dead_letters} == {DlqReason.POISON}
        assert t.dead_letters[0].headers[DlqHeader.ATTEMPTS] == "0"
        # And the stream goes on.
        [ack] = await t.deliver(event())
        assert ack.status is AckStatus.COMPLETED


async def test_metrics_count_outcomes() -> None:
    app = make_app()

    @app.on_delete("user", max_attempts=2)
    async def delete_user(event: RetentionEvent) -> int:
        if event.entity_id == "bad":
            raise RuntimeError("no")
        return 1

    async with TestConsumer(app) as t:
        await t.deliver(event(), event("bad"))
    registry = app.metrics.registry
    labels = {"service": "svc", "entity_type": "user", "action": "delete"}
    assert registry.get_sample_value("retention_consumer_events_failed_total", labels) == 1
    assert registry.get_sample_value("retention_consumer_handler_retries_total", labels) == 1
    assert (
        registry.get_sample_value("retention_consumer_handler_duration_seconds_count", labels) == 3
    )


async def test_error_texts_hold_no_message_unless_the_service_opts_in() -> None:
    # SPEC §13: a handler's message can hold personal data (a duplicate key's e-mail).
    message = "duplicate key (email)=(alice@example.com)"
    for opt_in, detail in ((False, "RuntimeError"), (True, f"RuntimeError: {message}")):
        app = RetentionConsumer(
            "svc", settings=ConsumerSettings(error_messages=opt_in), max_attempts=1
        )

        @app.on_delete("user")
        async def delete_user(event: RetentionEvent) -> int:
            raise RuntimeError(message)

        async with TestConsumer(app) as t:
            [ack] = await t.deliver(event())
            [dead] = t.dead_letters
        assert (ack.status, ack.detail) == (AckStatus.FAILED, detail)
        assert dead.headers[DlqHeader.ERROR] == detail


async def test_a_hung_handler_times_out_retries_then_fails_to_the_dlq() -> None:
    app = RetentionConsumer(
        "svc",
        settings=ConsumerSettings(
            database_url=None, handler_timeout_s=0.05, max_attempts=3, retry_initial_s=0
        ),
    )
    hang_until = {"late": 3, "never": 99}

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent, ctx: HandlerContext) -> int:
        if ctx.attempt < hang_until[event.entity_id]:
            await asyncio.Event().wait()  # forever
        return 1

    async with TestConsumer(app) as t:
        [late] = await t.deliver(event("late"))
        [never] = await t.deliver(event("never"))
        [dead] = t.dead_letters
    assert (late.status, late.attempt) == (AckStatus.COMPLETED, 3)
    assert (never.status, never.attempt, never.detail) == (AckStatus.FAILED, 3, "HandlerTimeout")
    assert dead.headers[DlqHeader.ERROR] == "HandlerTimeout"


async def test_a_handlers_own_timeout_error_is_not_taken_for_the_sdks() -> None:
    app = RetentionConsumer(
        "svc", settings=ConsumerSettings(database_url=None, max_attempts=1, handler_timeout_s=5)
    )

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        raise TimeoutError("the search cluster did not answer")

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event())
    assert (ack.status, ack.detail) == (AckStatus.FAILED, "TimeoutError")


async def test_an_opted_in_message_that_the_wire_refuses_is_made_safe() -> None:
    app = RetentionConsumer(
        "svc", settings=ConsumerSettings(error_messages=True, max_attempts=1, database_url=None)
    )

    @app.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        raise RuntimeError("nul \x00 and a lone \ud800 surrogate")

    async with TestConsumer(app) as t:
        [ack] = await t.deliver(event())
    assert ack.detail == "RuntimeError: nul \\0 and a lone ? surrogate"
