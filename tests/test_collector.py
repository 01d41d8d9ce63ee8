"""Batches (the relay's rounds, the tracker's, the SDK's) collect cyclic garbage less often,
and leave the collector as found."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from schemas.collector import fewer_collections


@pytest.fixture
def threshold() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_overlapping_rounds_raise_the_threshold_once_and_the_last_restores_it(
    threshold: tuple[int, int, int],
) -> None:
    raised = (50_000, *threshold[1:])
    first, second = fewer_collections(50_000), fewer_collections(50_000)
    first.__enter__()
    assert gc.get_threshold() == raised
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == raised
    second.__exit__(None, None, None)
    assert gc.get_threshold() == threshold


def test_overlapping_batches_get_the_largest_of_their_values(
    threshold: tuple[int, int, int],
) -> None:
    # A tracker's batch (123,457) under way when a relay round (200,000) starts, and
    # the round ending first: each value applies while its holder is the largest.
    tracker, relay = fewer_collections(123_457), fewer_collections(200_000)
    tracker.__enter__()
    assert gc.get_threshold() == (123_457, *threshold[1:])
    relay.__enter__()
    assert gc.get_threshold() == (200_000, *threshold[1:])
    relay.__exit__(None, None, None)
    assert gc.get_threshold() == (123_457, *threshold[1:])
    with fewer_collections(60_000):
        assert gc.get_threshold() == (123_457, *threshold[1:])
    assert gc.get_threshold() == (123_457, *threshold[1:])
    tracker.__exit__(None, None, None)
    assert gc.get_threshold() == threshold


def test_a_threshold_above_the_values_is_kept(threshold: tuple[int, int, int]) -> None:
    gc.set_threshold(300_000, 10, 10)
    with fewer_collections(50_000), fewer_collections(200_000):
        assert gc.get_threshold() == (300_000, 10, 10)
    assert gc.get_threshold() == (300_000, 10, 10)


async def test_a_cancelled_batch_leaves_and_the_others_value_applies(
    threshold: tuple[int, int, int],
) -> None:
    entered = asyncio.Event()

    async def batch() -> None:
        with fewer_collections(200_000):
            entered.set()
            await asyncio.Event().wait()

    with fewer_collections(123_457):
        task = asyncio.create_task(batch())
        await entered.wait()
        assert gc.get_threshold()[0] == 200_000
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gc.get_threshold()[0] == 123_457
    assert gc.get_threshold() == threshold


def test_a_failing_round_restores_the_threshold(threshold: tuple[int, int, int]) -> None:
    with pytest.raises(RuntimeError), fewer_collections(50_000):
        raise RuntimeError("round failed")
    assert gc.get_threshold() == threshold


def test_a_collector_switched_off_by_threshold_stays_off(threshold: tuple[int, int, int]) -> None:
    gc.set_threshold(0, 10, 10)
    with fewer_collections(50_000):
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold() == (0, 10, 10)
