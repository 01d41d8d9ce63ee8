"""`schemas.is_disconnect` and `coordinator.store.db.when_reachable`: disconnects are waited
out, real errors are not."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError, InterfaceError

from coordinator.store.db import when_reachable
from schemas import RetryPolicy, is_disconnect

FAST = RetryPolicy(initial_s=0.01, max_s=0.01)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        InterfaceError("SELECT 1", {}, Exception("connection is closed")),
    ],
)
def test_unreachable_server_is_a_disconnect(exc: BaseException) -> None:
    assert is_disconnect(exc)


@pytest.mark.parametrize(
    "exc",
    [
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        ValueError("bad input"),
        asyncpg.UniqueViolationError("duplicate key"),
    ],
)
def test_statement_errors_are_not(exc: BaseException) -> None:
    assert not is_disconnect(exc)


async def test_retries_until_reachable() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError(111, "Connect call failed")
        return "recorded"

    assert await when_reachable(flaky, what="test", policy=FAST) == "recorded"
    assert calls == 3


async def test_gives_up_after_the_timeout_and_never_retries_real_errors() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(111, "Connect call failed")

    with pytest.raises(ConnectionRefusedError):
        await when_reachable(
            down, what="test", policy=FAST.model_copy(update={"give_up_after_s": 0.05})
        )
    assert 2 <= calls <= 6

    async def wrong() -> None:
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        await when_reachable(wrong, what="test", policy=FAST)
