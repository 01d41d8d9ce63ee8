"""Scenario 2: SIGKILL a service mid-batch and restart it; a zombie replica comes back.

The run is done and the relay publishes everything; then a seeded schedule picks a
service that still has work ahead and SIGKILLs it after it applied a random few more
effects, at a moment its current batch is open: one of its effect inserts is executing
(`pg_stat_activity`), so handlers and acks of that batch are in flight and roll back.
It is restarted each time. The kills do not race the services' speed: while kills
remain, every effect insert sleeps `THROTTLE_S` in the service's own transaction
(a trigger in the stack's service database, tests/faults/throttle.py), and a service is
only a target while `MARGIN` effects are still ahead of it; after the last kill (and
the zombie) the brake is released. In the slow variant, billing runs two replicas and
one is frozen (SIGSTOP) mid-batch past the consumer session timeout: the group gives
its partitions to the other replica, which processes the same events; then the zombie
gets SIGCONT and must neither apply an effect twice nor die.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import PRODUCT_SERVICES, Stack, running_tracker
from tests.faults.drive import (
    complete,
    coordinator_processes,
    effects_applied,
    start_services,
    wait_until_above,
)
from tests.faults.invariants import SERVICE_LOGS, check_invariants, settle
from tests.faults.throttle import install_throttle, set_throttle, wait_until_writing
from tests.faults.world import World, prepare_world

SESSION_TIMEOUT_S = 10.0
"""aiokafka's default `session_timeout_ms`: a frozen member is evicted after this."""
THROTTLE_S = 0.2
"""How long each effect insert sleeps while kills remain: a batch of 5 stays open ~1 s."""
MARGIN = 40
"""A kill waits at most until MARGIN effects are left; it may see up to three batches
(one per partition, 5 each) commit late, so the killed service keeps more than
MARGIN // 2 ahead, which makes it a target for the next kill."""


async def _zombie(stack: Stack, world: World, rng: random.Random, faults: Counter[str]) -> None:
    """Freeze the busiest service mid-batch while a second replica takes over; then thaw it."""
    name = world.busiest_service()
    zombie = stack.processes[name]
    other = stack.add_service(f"{name}-2", module=f"services.{name}", env=zombie.env)
    await stack.start_services(other.name)
    before = await effects_applied(stack, name)
    assert before <= world.expected_effects(name) - MARGIN, f"{name} finished first"
    await wait_until_above(
        lambda: effects_applied(stack, name),
        min(before + rng.randint(0, 3), world.expected_effects(name) - MARGIN),
        process=zombie,
    )
    zombie.pause()
    faults["zombie_service"] += 1
    try:
        await asyncio.sleep(SESSION_TIMEOUT_S + rng.uniform(3, 8))
        other.check_alive()
    finally:
        zombie.resume()
    # One replica again, so that a kill below hits the replica whose insert was seen;
    # stopped on purpose, it leaves the stack's liveness checks.
    assert await other.terminate() == 0, other.log_tail()
    del stack.processes[other.name]


async def _targets(stack: Stack, world: World) -> list[str]:
    return [
        s
        for s in PRODUCT_SERVICES
        if await effects_applied(stack, s) <= world.expected_effects(s) - MARGIN // 2
    ]


async def service_kills(
    stack: Stack, directory: Path, *, seed: int, kills: int, users: int, zombie: bool
) -> None:
    rng = random.Random(seed)
    world = await prepare_world(stack, directory, users=users, per_category=2)
    run, relay = coordinator_processes(stack, world)
    faults: Counter[str] = Counter()
    for name in PRODUCT_SERVICES:
        # Small batches, and groups of the stack's own: a restart rebalances only itself.
        group = f"{stack.kafka.topic_prefix}.{name}"
        stack.add_service(
            name, env={"RETENTION_CONSUMER_MAX_BATCH": "5", "RETENTION_CONSUMER_GROUP_ID": group}
        )
    logs = [table for table, _ in SERVICE_LOGS.values()]
    await install_throttle(stack.services_url, logs, delay_s=THROTTLE_S)
    async with running_tracker(stack) as tracker:
        await start_services(stack)
        await complete(run)
        relay.start()
        if zombie:
            # First, while billing has its whole backlog ahead.
            await _zombie(stack, world, rng, faults)
        targets = await _targets(stack, world)
        while faults["kill_service"] < kills:
            assert targets, f"the services finished after {dict(faults)}: throttle broken?"
            service = stack.processes[rng.choice(targets)]
            before = await effects_applied(stack, service.name)
            seen = await wait_until_above(
                lambda: effects_applied(stack, service.name),  # noqa: B023
                min(before + rng.randint(0, 4), world.expected_effects(service.name) - MARGIN),
                process=service,
            )
            log = SERVICE_LOGS[service.name][0]
            assert seen is not None, f"{service.name} died:\n{service.log_tail()}"
            assert await wait_until_writing(stack.services_url, log, process=service)
            service.kill()  # an effect insert is executing: its batch is open
            faults["kill_service"] += 1
            # Chosen while the killed one is down: its count cannot move, and it stopped
            # with more than MARGIN // 2 effects ahead, so there always is a next target.
            # Not waiting for the restart to be assigned its partitions (10 s and more)
            # keeps a running target from finishing meanwhile.
            targets = await _targets(stack, world)
            service.start()
        await asyncio.gather(*(stack.processes[s].wait_ready() for s in PRODUCT_SERVICES))
        await set_throttle(stack.services_url, 0)
        assert await relay.wait(timeout_s=60) == 0, relay.log_tail()
        await settle(stack, world, timeout_s=120, alive=tracker.check)
        stack.check_alive()
    report = await check_invariants(
        stack, world, scenario="2-service-kills", seed=seed, faults=faults
    )
    report.assert_ok()
    assert report.events == world.expected_events


async def test_services_killed_mid_batch(stack: Stack, tmp_path: Path) -> None:
    await service_kills(stack, tmp_path, seed=2002, kills=2, users=100, zombie=False)


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [2718])
async def test_services_killed_and_a_zombie_returns(
    stack: Stack, tmp_path: Path, seed: int
) -> None:
    await service_kills(stack, tmp_path, seed=seed, kills=6, users=200, zombie=True)
