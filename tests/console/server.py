"""`create_app` served by uvicorn on a free port in a thread of its own, for the browser.

The browser tests use Playwright's sync API, which cannot run inside an event loop; the
server gets its own loop in a thread, and `call` runs a coroutine there (the engine belongs
to that loop), e.g. to seed rows or to run a tracker pass with the test's FrozenClock.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.api import ApiContext, create_app
from coordinator.api.health import KafkaHealth
from coordinator.api.tokens import TokenStore
from coordinator.clock import FrozenClock
from coordinator.erasure.service import Erasure
from coordinator.policy.model import PolicySet
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from schemas import KafkaSettings

T = TypeVar("T")


class ConsoleServer:
    def __init__(
        self, database_url: str, tokens_file: Path, policy_set: PolicySet, clock: FrozenClock
    ) -> None:
        self.database_url = database_url
        self.tokens_file = tokens_file
        self.policy_set = policy_set
        self.clock = clock
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.engine: AsyncEngine | None = None
        self._server: uvicorn.Server | None = None
        self._error: BaseException | None = None

    def start(self) -> ConsoleServer:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the console server did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self.engine = make_engine(self.database_url, pool_size=4)
        health = KafkaHealth(KafkaSettings())
        ctx = ApiContext(
            engine=self.engine,
            kafka_health=health,
            registry=CollectorRegistry(),
            clock=self.clock,
            tokens=TokenStore(self.tokens_file),
            policy_set=self.policy_set,
            global_schedule="0 3 * * *",
            erasure=Erasure(
                self.engine,
                self.policy_set,
                Settings(database_url=self.database_url, hash_secret="test-secret"),
                self.clock,
            ),
        )
        config = uvicorn.Config(create_app(ctx), log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        serving = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.02)
        self._ready.set()
        try:
            await serving
        finally:
            await health.close()
            await self.engine.dispose()

    def call(self, make: Callable[[AsyncEngine], Awaitable[T]], timeout: float = 60) -> T:
        """Run `make(engine)` on the server's loop and return its result."""
        assert self.loop is not None
        assert self.engine is not None
        engine = self.engine

        async def run() -> Any:
            return await make(engine)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(30)
