"""The relay gives back the heap its rounds kept (coordinator/heap.py): after a drain that
published, and in `run_forever` once a whole idle wait passed after rounds that published;
never with the thresholds off. The allocator calls are recorded, not made: pytest's own
allocator stays as it is (tests/test_heap.py makes them for real, in subprocesses)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import heap
from coordinator.outbox import relay as relay_module
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from schemas import KafkaSettings
from tests.outbox import insert_rows, outbox_rows

FAST = RelaySettings(batch_size=100, idle_sleep_s=0.05, backoff_initial_s=0.05)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []

    def keep(mmap_threshold: int, trim_threshold: int) -> bool:
        made.append("keep")
        return True

    def trim() -> bool:
        made.append("trim")
        return True

    monkeypatch.setattr(relay_module, "keep_freed_memory", keep)
    monkeypatch.setattr(heap, "return_freed_memory", trim)
    return made


async def test_a_drain_that_published_gives_the_heap_back(
    engine: AsyncEngine, topics: KafkaSettings, calls: list[str]
) -> None:
    async with OutboxRelay(engine, topics, settings=FAST) as relay:
        assert await relay.drain(timeout_s=60) == 0
        assert calls == ["keep"]  # nothing published: nothing kept to give back
        await insert_rows(engine, outbox_rows(250, policy="session_logs"))
        assert await relay.drain(timeout_s=60) == 250
    assert calls == ["keep", "keep", "trim"]


async def test_thresholds_off_neither_keep_nor_trim(
    engine: AsyncEngine, topics: KafkaSettings, calls: list[str]
) -> None:
    await insert_rows(engine, outbox_rows(50, policy="session_logs"))
    off = FAST.model_copy(update={"malloc_mmap_threshold": 0})
    async with OutboxRelay(engine, topics, settings=off) as relay:
        assert await relay.drain(timeout_s=60) == 50
    assert calls == []


async def test_a_serving_relay_gives_the_heap_back_once_idle(
    engine: AsyncEngine, topics: KafkaSettings, calls: list[str]
) -> None:
    stop = asyncio.Event()
    async with OutboxRelay(engine, topics, settings=FAST) as relay:
        serving = asyncio.create_task(relay.run_forever(stop))
        try:
            await asyncio.sleep(0.5)  # idle from the start: nothing to give back
            assert calls == ["keep"]
            for round_ in range(2):
                await insert_rows(
                    engine, outbox_rows(120, policy="session_logs", start=1000 * round_)
                )
                async with asyncio.timeout(30):
                    while calls.count("trim") <= round_:
                        await asyncio.sleep(0.05)
                # Many idle waits later, still one trim for that work.
                await asyncio.sleep(0.5)
                assert calls.count("trim") == round_ + 1
        finally:
            stop.set()
            await serving
    assert calls == ["keep", "trim", "trim"]
