"""Scenario 12: two relays and two trackers at once → no duplicate effect, no lost ack.

Two `retention relay --drain` processes publish the same outbox (one leads each round,
by an advisory lock, from the shared watermark); two trackers share one consumer group
and one ledger; the services see each
event once per publication and apply it once.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import ServiceProcess, Stack, running_tracker
from tests.faults.drive import coordinator_processes, start_services
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import prepare_world


def _published(relay: ServiceProcess) -> int:
    """What a `retention relay --drain --json` reported it published (its stdout document)."""
    document = re.findall(rb'"published": (\d+)', relay.log())
    return int(document[-1])


async def two_of_each(stack: Stack, directory: Path, *, seed: int, users: int) -> None:
    rng = random.Random(seed)
    world = await prepare_world(stack, directory, users=users, per_category=2)
    run, relay = coordinator_processes(stack, world)
    _, relay_2 = coordinator_processes(stack, world, suffix="-2")
    faults: Counter[str] = Counter()
    async with running_tracker(stack) as tracker, running_tracker(stack) as tracker_2:
        faults["second_tracker"] += 1
        await start_services(stack)
        run.start()
        assert await run.wait(timeout_s=120) == 0, run.log_tail()
        # Both relays start together, in a seeded order, on the whole backlog.
        relays = [relay, relay_2]
        rng.shuffle(relays)
        for process in relays:
            process.start()
        faults["second_relay"] += 1
        for process in relays:
            assert await process.wait(timeout_s=120) == 0, process.log_tail()
        shares = [_published(process) for process in relays]
        # Rounds are led one at a time from one watermark: every event exactly once.
        assert sum(shares) == world.expected_events, shares

        def alive() -> None:
            tracker.check()
            tracker_2.check()

        await settle(stack, world, timeout_s=120, alive=alive)
        stack.check_alive()
    report = await check_invariants(
        stack, world, scenario="12-two-relays-two-trackers", seed=seed, faults=faults
    )
    report.assert_ok()
    assert report.events == world.expected_events


async def test_two_relays_two_trackers(stack: Stack, tmp_path: Path) -> None:
    await two_of_each(stack, tmp_path, seed=1212, users=30)


@pytest.mark.faults_full
async def test_two_relays_two_trackers_large(stack: Stack, tmp_path: Path) -> None:
    await two_of_each(stack, tmp_path, seed=121212, users=300)
