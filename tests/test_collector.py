"""Batches (the relay's rounds, the SDK's) collect cyclic garbage less often, and leave the
collector as found."""

from __future__ import annotations

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


def test_a_failing_round_restores_the_threshold(threshold: tuple[int, int, int]) -> None:
    with pytest.raises(RuntimeError), fewer_collections(50_000):
        raise RuntimeError("round failed")
    assert gc.get_threshold() == threshold


def test_a_collector_switched_off_by_threshold_stays_off(threshold: tuple[int, int, int]) -> None:
    gc.set_threshold(0, 10, 10)
    with fewer_collections(50_000):
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold() == (0, 10, 10)
