"""Scenario 4: PostgreSQL connections terminated under the coordinator and the services.

`pg_terminate_backend` on every connection to this test's two databases (never
another's): while `retention run` is inside its purge batches (the batch in flight
rolls back; the run records the policy's error, exits 1, and the next run finishes the
job), and while the tracker, the relay and the services are inside their transactions
(acks being recorded, rows being marked, effects being applied). Everything must keep
running and the invariants hold.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from coordinator.store.tables import ack_ledger
from tests.e2e.harness import Stack, all_of, running_relay, running_tracker
from tests.faults.drive import (
    audit_entries,
    complete,
    coordinator_processes,
    count,
    start_services,
    terminate_connections,
    wait_until_above,
)
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import prepare_world


async def terminations(
    stack: Stack,
    directory: Path,
    *,
    seed: int,
    users: int,
    during_purge: int,
    during_tracking: int,
) -> None:
    rng = random.Random(seed)
    world = await prepare_world(stack, directory, users=users, per_category=2, batch_size=1)
    run, _ = coordinator_processes(stack, world)
    faults: Counter[str] = Counter()
    ledger = select(func.count()).select_from(ack_ledger)
    acks = world.expected_acks
    async with running_tracker(stack) as tracker:
        await start_services(stack)
        for _ in range(3 * during_purge):
            if faults["terminate_in_purge"] == during_purge:
                break
            batches = await count(stack, audit_entries("purge.batch"))
            run.start()
            seen = await wait_until_above(
                lambda: count(stack, audit_entries("purge.batch")),
                batches + rng.randint(0, 3),
                process=run,
            )
            if seen is not None and run.alive:
                await asyncio.sleep(rng.uniform(0, 0.02))
                if await terminate_connections(stack.coordinator_url):
                    faults["terminate_in_purge"] += 1
            # The policy whose batch lost its connection is recorded as an error: exit 1.
            assert await run.wait(timeout_s=120) in (0, 1), run.log_tail()
        assert faults["terminate_in_purge"] >= 1, "every run finished before a termination"
        await complete(run)
        async with running_relay(stack) as relay:
            alive = all_of(stack.check_alive, tracker.check, relay.check)
            while faults["terminate_in_tracking"] < during_tracking:
                before = await count(stack, ledger)
                if before >= acks - 1:
                    break  # all recorded: the tracker has no transaction left to interrupt
                recorded = await wait_until_above(
                    lambda: count(stack, ledger),
                    min(before + rng.randint(0, 5), acks - 1),
                    process=stack.processes[world.busiest_service()],
                )
                assert recorded is not None
                await asyncio.sleep(rng.uniform(0, 0.02))
                await terminate_connections(stack.coordinator_url, stack.services_url)
                faults["terminate_in_tracking"] += 1
                alive()
            await settle(stack, world, timeout_s=120, alive=alive)
    report = await check_invariants(
        stack, world, scenario="4-db-terminations", seed=seed, faults=faults
    )
    report.assert_ok()
    assert report.events == world.expected_events
    assert faults["terminate_in_tracking"] >= 1


async def test_connections_terminated(stack: Stack, tmp_path: Path) -> None:
    await terminations(stack, tmp_path, seed=4004, users=30, during_purge=2, during_tracking=2)


@pytest.mark.faults_full
async def test_connections_terminated_often(stack: Stack, tmp_path: Path) -> None:
    await terminations(stack, tmp_path, seed=40404, users=150, during_purge=6, during_tracking=6)
