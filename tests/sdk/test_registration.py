"""Handler registration fails at import time, with messages that name the problem."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from consumer_sdk import (
    ConfigurationError,
    ConsumerSettings,
    DuplicateHandlerError,
    EventType,
    HandlerContext,
    RetentionConsumer,
    RetentionEvent,
    RetentionSDKError,
)
from schemas import KafkaSettings


def make_app(**kwargs: object) -> RetentionConsumer:
    return RetentionConsumer("svc", settings=ConsumerSettings(database_url=None), **kwargs)  # type: ignore[arg-type]


def test_decorator_returns_the_function_itself() -> None:
    app = make_app()

    async def delete_user(event: RetentionEvent) -> int:
        return 1

    assert app.on_delete("user")(delete_user) is delete_user
    spec = app.handlers.get("user", EventType.DELETE)
    assert spec is not None
    assert spec.func is delete_user


def test_duplicate_registration_raises_at_import_time() -> None:
    app = make_app()

    @app.on_delete("user")
    async def first(event: RetentionEvent) -> int:
        return 1

    with pytest.raises(DuplicateHandlerError, match=r"already handled by .*first"):

        @app.on_delete("user")
        async def second(event: RetentionEvent) -> int:
            return 1

    # The other action for the same entity type is a different handler.
    @app.on_anonymize("user")
    async def third(event: RetentionEvent) -> int:
        return 1

    assert issubclass(DuplicateHandlerError, RetentionSDKError)


def test_sync_handler_is_refused() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="async def"):
        app.on_delete("user")(lambda event: 1)  # type: ignore[arg-type,return-value]


def test_bad_second_parameter_is_refused() -> None:
    app = make_app(database_url="postgresql://u:p@localhost/db")

    async def handler(event: RetentionEvent, other: int) -> int:
        return 0

    with pytest.raises(ConfigurationError, match="AsyncConnection or HandlerContext"):
        app.on_delete("user")(handler)


def test_connection_handler_needs_a_database() -> None:
    app = make_app()

    async def handler(event: RetentionEvent, conn: AsyncConnection) -> int:
        return 0

    with pytest.raises(ConfigurationError, match="no database"):
        app.on_delete("user")(handler)


def test_context_handler_without_database_is_allowed() -> None:
    app = make_app()

    @app.on_delete("user", max_attempts=2)
    async def handler(event: RetentionEvent, ctx: HandlerContext) -> int:
        return ctx.attempt

    assert app.handlers.get("user", EventType.DELETE) is not None


def test_bad_options_are_refused() -> None:
    app = make_app()

    async def handler(event: RetentionEvent) -> int:
        return 0

    with pytest.raises(ConfigurationError, match="max_attempts"):
        app.on_delete("user", max_attempts=0)(handler)
    with pytest.raises(ConfigurationError, match="entity_type"):
        app.on_delete(" ")(handler)
    with pytest.raises(ConfigurationError, match="service"):
        RetentionConsumer("")
    with pytest.raises(ValueError, match="unsupported database URL scheme"):
        make_app(database_url="mysql://x/y")


def test_registration_lists_what_is_handled() -> None:
    app = make_app()

    @app.on_delete("user")
    async def a(event: RetentionEvent) -> int:
        return 0

    @app.on_anonymize("user")
    async def b(event: RetentionEvent) -> int:
        return 0

    @app.on_anonymize("order")
    async def c(event: RetentionEvent) -> int:
        return 0

    reg = app.registration()
    assert reg.service == "svc"
    assert reg.key == "svc"
    assert [(h.entity_type, h.actions) for h in reg.handles] == [
        ("order", [EventType.ANONYMIZE]),
        ("user", [EventType.ANONYMIZE, EventType.DELETE]),
    ]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_SERVICE_DATABASE_URL", "postgresql://a:b@h/servicedb")
    monkeypatch.setenv("RETENTION_DATABASE_URL", "postgresql://a:b@h/coordinator")
    monkeypatch.setenv("RETENTION_CONSUMER_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("RETENTION_KAFKA_TOPIC_PREFIX", "acme.retention")
    app = RetentionConsumer("billing")
    assert app.settings.database_url is not None
    assert app.settings.database_url.get_secret_value() == "postgresql://a:b@h/servicedb"
    assert "a:b" not in repr(app.settings)
    assert app.settings.max_attempts == 7
    assert app.kafka.topics.acks == "acme.retention.acks"
    assert app.group_id == "retention.billing"
    # Keyword arguments win over the environment.
    app = RetentionConsumer(
        "billing", max_attempts=2, kafka=KafkaSettings(topic_prefix="x"), database_url=None
    )
    assert app.settings.max_attempts == 2
    assert app.kafka.topic_prefix == "x"
