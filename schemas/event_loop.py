"""Which event loop the long-running processes run on, read in one place.

`RETENTION_EVENT_LOOP` is `auto` (uvloop where it is installed and supported, else the
standard library's loop), `uvloop` (uvloop or a clear error) or `asyncio` (the standard
library's loop, whatever is installed). `run()` is the one way the coordinator's commands
and the consumer SDK's runner start a loop; docs/operations.md says what uvloop saves.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

__all__ = [
    "EVENT_LOOP_VARIABLE",
    "EventLoop",
    "EventLoopError",
    "chosen",
    "loop_factory",
    "run",
    "uvloop_usable",
]

EVENT_LOOP_VARIABLE = "RETENTION_EVENT_LOOP"

EventLoop = Literal["auto", "uvloop", "asyncio"]
_CHOICES: tuple[str, ...] = get_args(EventLoop)

T = TypeVar("T")


class EventLoopError(ValueError):
    """`RETENTION_EVENT_LOOP` names no loop, or one this process cannot run."""


def uvloop_usable() -> bool:
    """uvloop is installed, on a platform it supports (POSIX, CPython)."""
    return (
        sys.platform != "win32"
        and sys.implementation.name == "cpython"
        and importlib.util.find_spec("uvloop") is not None
    )


def chosen(value: str | None = None) -> Literal["uvloop", "asyncio"]:
    """The loop `value` (default: the variable, else `auto`) resolves to on this process."""
    raw = os.environ.get(EVENT_LOOP_VARIABLE, "auto") if value is None else value
    wanted = raw.strip().lower()
    if wanted not in _CHOICES:
        raise EventLoopError(
            f"{EVENT_LOOP_VARIABLE} must be one of {', '.join(_CHOICES)}, not {raw!r}"
        )
    if wanted == "asyncio":
        return "asyncio"
    if uvloop_usable():
        return "uvloop"
    if wanted == "uvloop":
        raise EventLoopError(
            f"{EVENT_LOOP_VARIABLE}=uvloop but uvloop is not installed or not supported "
            "here: install it, or set auto or asyncio"
        )
    return "asyncio"


def loop_factory(value: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A new-loop factory for `asyncio.Runner`, as `chosen(value)` says; None for the
    standard library's loop, so that `asyncio` runs exactly as `asyncio.run` does."""
    if chosen(value) == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None) -> T:
    """`asyncio.run(main)` on the loop the setting (or `loop`) names.

    The setting is checked before anything runs: a bad value closes `main` unawaited and
    raises `EventLoopError`."""
    try:
        factory = loop_factory(loop)
    except EventLoopError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
