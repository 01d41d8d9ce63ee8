"""RETENTION_EVENT_LOOP picks the loop every long-running entry point runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from typer.testing import CliRunner

from consumer_sdk import ConsumerSettings, RetentionConsumer
from coordinator.cli import app
from coordinator.cli._app import run_async
from schemas import event_loop
from schemas.event_loop import EVENT_LOOP_VARIABLE, EventLoopError


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def stdlib(loop: asyncio.AbstractEventLoop) -> bool:
    # uvloop.Loop is an AbstractEventLoop but no BaseEventLoop: that is the stdlib's own.
    return isinstance(loop, asyncio.BaseEventLoop) and not isinstance(loop, uvloop.Loop)


@pytest.mark.parametrize("value", ["asyncio", "ASYNCIO", " asyncio "])
def test_asyncio_forces_the_standard_library_loop_with_uvloop_installed(value: str) -> None:
    assert event_loop.uvloop_usable()
    assert stdlib(event_loop.run(running_loop(), loop=value))


def test_uvloop_runs_on_uvloop() -> None:
    assert isinstance(event_loop.run(running_loop(), loop="uvloop"), uvloop.Loop)


def test_auto_is_uvloop_where_installed_else_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(EVENT_LOOP_VARIABLE, raising=False)
    assert isinstance(event_loop.run(running_loop()), uvloop.Loop)
    monkeypatch.setattr(event_loop, "uvloop_usable", lambda: False)
    assert stdlib(event_loop.run(running_loop()))
    assert stdlib(event_loop.run(running_loop(), loop="auto"))
    with pytest.raises(EventLoopError, match=f"{EVENT_LOOP_VARIABLE}=uvloop but uvloop is not"):
        event_loop.run(running_loop(), loop="uvloop")


def test_the_variable_decides_when_no_loop_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "asyncio")
    assert stdlib(event_loop.run(running_loop()))
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "uvloop")
    assert isinstance(event_loop.run(running_loop()), uvloop.Loop)


def test_an_unknown_value_is_refused_naming_the_setting_and_runs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "tokio")
    ran = []

    async def work() -> None:
        ran.append(True)

    main = work()
    with pytest.raises(EventLoopError) as refused:
        event_loop.run(main)
    assert str(refused.value) == (
        "RETENTION_EVENT_LOOP must be one of auto, uvloop, asyncio, not 'tokio'"
    )
    assert ran == []
    assert main.cr_frame is None  # closed, so no "never awaited" warning either


def test_the_cli_runs_commands_on_the_named_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "asyncio")
    assert stdlib(run_async(running_loop()))
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "uvloop")
    assert isinstance(run_async(running_loop()), uvloop.Loop)


def test_the_cli_refuses_an_unknown_loop_with_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "trio")
    result = CliRunner().invoke(app, ["relay", "--drain"])
    assert result.exit_code == 2, result.output
    assert "invalid settings" in result.output
    assert "RETENTION_EVENT_LOOP must be one of auto, uvloop, asyncio" in result.output


@pytest.mark.parametrize(("value", "uvloop_expected"), [("asyncio", False), ("uvloop", True)])
def test_the_sdk_runner_serves_on_the_named_loop(
    monkeypatch: pytest.MonkeyPatch, value: str, uvloop_expected: bool
) -> None:
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, value)
    consumer = RetentionConsumer("svc", settings=ConsumerSettings(database_url=None))
    served_on: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        served_on.append(asyncio.get_running_loop())

    monkeypatch.setattr(consumer, "serve", serve)
    consumer.run()
    assert isinstance(served_on[0], uvloop.Loop) is uvloop_expected
    assert stdlib(served_on[0]) is not uvloop_expected


def test_the_sdk_runner_refuses_an_unknown_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "gevent")
    consumer = RetentionConsumer("svc", settings=ConsumerSettings(database_url=None))
    with pytest.raises(EventLoopError, match=EVENT_LOOP_VARIABLE):
        consumer.run()
