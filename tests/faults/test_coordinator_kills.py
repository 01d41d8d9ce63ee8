"""Scenario 1: SIGKILL the coordinator at random points of a run, restart each time.

`retention run` (batch size 1) and `retention relay --drain` run as subprocesses and
are killed at points a seeded schedule picks: while starting (binding, planning), right
after the run's start entry, after a random number of committed purge batches (each
batch is delete/anonymize/archive + outbox + ledger + audit in one transaction), and
after a random number of published events (a kill between the send and the mark makes
the next relay publish those events again). The services and the tracker keep running.
After the last kill the run and the relay complete; then the six invariants.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import ServiceProcess, Stack, running_tracker
from tests.faults.drive import (
    audit_entries,
    complete,
    coordinator_processes,
    count,
    published_events,
    start_services,
    wait_until_above,
)
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import prepare_world

PHASES = ("startup", "planning", "purge", "purge", "purge", "publish", "publish")


async def _kill_at(
    rng: random.Random, phase: str, stack: Stack, run: ServiceProcess, relay: ServiceProcess
) -> ServiceProcess | None:
    """Start the process the phase belongs to and SIGKILL it there; None if it ended first."""
    target = relay if phase == "publish" else run
    if phase == "startup":
        target = rng.choice((run, relay))
    started = await count(stack, audit_entries("run.start"))
    batches = await count(stack, audit_entries("purge.batch"))
    published = await count(stack, published_events())
    target.start()
    if phase == "startup":
        await asyncio.sleep(rng.uniform(0.1, 1.5))
    elif phase == "planning":
        seen = await wait_until_above(
            lambda: count(stack, audit_entries("run.start")), started, process=target
        )
        if seen is None:
            return None
    elif phase == "purge":
        seen = await wait_until_above(
            lambda: count(stack, audit_entries("purge.batch")),
            batches + rng.randint(0, 4),
            process=target,
        )
        if seen is None:
            return None
        await asyncio.sleep(rng.uniform(0, 0.03))
    else:
        seen = await wait_until_above(
            lambda: count(stack, published_events()), published + rng.randint(0, 6), process=target
        )
        if seen is None:
            return None
        await asyncio.sleep(rng.uniform(0, 0.02))
    if not target.alive:
        return None
    target.kill()
    return target


async def coordinator_kills(
    stack: Stack, directory: Path, *, seed: int, kills: int, users: int, per_category: int
) -> None:
    rng = random.Random(seed)
    world = await prepare_world(
        stack, directory, users=users, per_category=per_category, batch_size=1
    )
    run, relay = coordinator_processes(stack, world)
    faults: Counter[str] = Counter()
    async with running_tracker(stack) as tracker:
        await start_services(stack)
        attempts = 0
        schedule = list(dict.fromkeys(PHASES))
        rng.shuffle(schedule)
        while sum(faults.values()) < kills:
            attempts += 1
            assert attempts < kills * 4, f"only {dict(faults)} kills in {attempts} attempts"
            # Every phase early on (shuffled), then random ones.
            phase = schedule.pop() if schedule else rng.choice(PHASES)
            killed = await _kill_at(rng, phase, stack, run, relay)
            if killed is not None:
                faults[f"kill_coordinator_{phase}"] += 1
            else:
                # It finished before the kill: a completed command must have succeeded.
                for process in (run, relay):
                    if process.proc is not None and process.proc.returncode not in (None, -9):
                        assert process.proc.returncode == 0, process.log_tail()
        await complete(run)
        await complete(relay)
        await settle(stack, world, timeout_s=120, alive=tracker.check)
        stack.check_alive()
    report = await check_invariants(
        stack, world, scenario="1-coordinator-kills", seed=seed, faults=faults
    )
    report.assert_ok()
    assert report.events == world.expected_events


async def test_coordinator_killed_at_random_points(stack: Stack, tmp_path: Path) -> None:
    await coordinator_kills(stack, tmp_path, seed=1001, kills=6, users=16, per_category=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4242])
async def test_coordinator_killed_twenty_times(stack: Stack, tmp_path: Path, seed: int) -> None:
    await coordinator_kills(stack, tmp_path, seed=seed, kills=24, users=60, per_category=5)
