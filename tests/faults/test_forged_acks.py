"""Scenario 11: forged acks mixed in with the real ones, while the services work.

Forgeries of four kinds (tests/faults/forgery.py) are produced in bursts while the
services' real acks arrive. Each must be rejected with its reason in the ack ledger,
counted in `retention_acks_rejected{reason}` and `retention report`, and leave every
event's state and every service's recorded ack as the real acks made them. The reduced
variant runs inside scenario 6's reduced test (tests/faults/test_duplicates.py).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from coordinator.metrics import Metrics
from tests.e2e.harness import Stack, all_of, running_tracker
from tests.faults.drive import complete, coordinator_processes, start_services
from tests.faults.forgery import forgery_problems, inject_forgeries, wait_for_rejections
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import prepare_world


async def forged_scenario(
    stack: Stack, directory: Path, *, seed: int, users: int, forged: int
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 11 (forged acks), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=2)
    run, relay = coordinator_processes(stack, world)
    registry = CollectorRegistry()
    async with running_tracker(stack, metrics=Metrics(registry)) as tracker:
        alive = all_of(stack.check_alive, tracker.check)
        await start_services(stack)
        await complete(run)
        await complete(relay)
        # In bursts between the services' own acks, which are still arriving.
        want, _ = await inject_forgeries(stack, rng, forged)
        await settle(stack, world, timeout_s=120, alive=alive)
        await wait_for_rejections(stack, want, alive)
    assert await forgery_problems(stack, registry, want) == []
    report = await check_invariants(
        stack, world, scenario="11-forged-acks", seed=seed, faults=Counter(forged_acks=forged)
    )
    report.assert_ok()
    assert report.events == world.expected_events
    print(f"[faults] {forged} forged acks rejected: {dict(want)}")


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [1112, 1113])
async def test_forged_acks_at_scale(stack: Stack, tmp_path: Path, seed: int) -> None:
    await forged_scenario(stack, tmp_path, seed=seed, users=150, forged=600)
