"""Scenario 3: the Kafka broker restarted (SIGTERM and SIGKILL) under publish and consumption.

The run is done; the relay (in-process, small batches) publishes the outbox while the
services consume, ack and the tracker records. A seeded schedule stops the broker,
cleanly or with SIGKILL, after a random number of published events (the relay
is between batches or waiting for acks) and after a random few effects of a service
still working through its backlog (handlers, offset commits and acks in flight), keeps
it down past the clients' request timeout and starts it again. Nothing is restarted but
the broker: the services must stay up and their SDK reconnect by itself, and the relay
and the tracker must resume too. Then the six invariants.

The broker is the scenario's own (tests/faults/private_kafka.py: its own ports, data and
process), so the scenario passes whatever listens on the default port, and the shared
broker every other test uses is never touched. The stack (databases, topics, services,
relay, tracker) runs on it. Both tests are `slow` (`make test`) or `faults_full`
(`make test-faults`).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import pytest

from coordinator.settings import RelaySettings
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    Stack,
    all_of,
    isolated_stack,
    running_relay,
    running_tracker,
)
from tests.faults.drive import (
    complete,
    coordinator_processes,
    count,
    effects_applied,
    published_events,
    start_services,
    wait_until_above,
)
from tests.faults.invariants import check_invariants, settle
from tests.faults.private_kafka import PrivateKafka, private_kafka, restart
from tests.faults.world import USERS_POLICY, World, prepare_world

Phase = Literal["publish", "consume"]
Restart = tuple[Phase, bool]
"""When the broker goes down, and whether it is SIGKILLed (else a clean SIGTERM stop)."""

RELAY = RelaySettings(
    # One row per batch, so the publish phase lasts long enough to be interrupted.
    batch_size=1,
    idle_sleep_s=0.05,
    publish_timeout_s=5,
    stall_timeout_s=20,
    producer_stop_timeout_s=2,
    backoff_max_s=2,
)
BROKER_START_TIMEOUT_S = 300.0
SERVICE_ENV = {"RETENTION_CONSUMER_MAX_BATCH": "5"}
"""Small batches keep the services busy past the first restarts."""


def _expected_effects(world: World, service: str) -> int:
    users = len(world.processed(USERS_POLICY))
    return users + len(world.processed("purchase_records")) if service == "billing" else users


@pytest.fixture
def broker() -> Iterator[PrivateKafka]:
    with private_kafka() as broker:
        yield broker


@pytest.fixture
async def stack(
    postgres_url: str, broker: PrivateKafka, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The fault suite's stack, on this scenario's own broker."""
    async with isolated_stack(postgres_url, broker.bootstrap, request.node.name, tmp_path) as s:
        yield s


async def _restart_broker(
    broker: PrivateKafka, rng: random.Random, faults: Counter[str], phase: Phase, *, kill: bool
) -> None:
    # Longer than the clients' 30 s request timeout, so sends and commits in flight fail
    # while the broker is still away (shorter outages are hidden by retries).
    await restart(broker, kill=kill, down_s=rng.uniform(71, 74))
    faults[f"{'kill' if kill else 'restart'}_broker_during_{phase}"] += 1


async def _during_publish(
    stack: Stack, world: World, rng: random.Random, alive: Callable[[], None]
) -> int:
    """Wait until a random number of events is out; how many were out before the stop."""
    floor = rng.randint(0, world.expected_events // 4)
    while (published := await count(stack, published_events())) <= floor:
        alive()
        await asyncio.sleep(0.01)
    assert published < world.expected_events, "the relay finished first: more users needed"
    return published


async def _during_consumption(stack: Stack, world: World, rng: random.Random) -> str:
    """Wait until a service still busy applied a random few more effects; its name."""
    unfinished = [
        s
        for s in PRODUCT_SERVICES
        if await effects_applied(stack, s) < _expected_effects(world, s) - 2
    ]
    assert unfinished, "the services finished before the restart: more users needed"
    service = stack.processes[rng.choice(unfinished)]
    before = await effects_applied(stack, service.name)
    seen = await wait_until_above(
        lambda: effects_applied(stack, service.name),
        min(before + rng.randint(0, 4), _expected_effects(world, service.name) - 2),
        process=service,
        timeout_s=BROKER_START_TIMEOUT_S,
    )
    assert seen is not None, f"{service.name} died:\n{service.log_tail()}"
    await asyncio.sleep(rng.uniform(0, 0.02))
    return service.name


async def broker_restarts(
    stack: Stack,
    broker: PrivateKafka,
    directory: Path,
    *,
    seed: int,
    users: int,
    restarts: Sequence[Restart],
) -> None:
    rng = random.Random(seed)
    world = await prepare_world(stack, directory, users=users, per_category=2)
    run, _ = coordinator_processes(stack, world)
    for service in PRODUCT_SERVICES:
        stack.add_service(service, env=SERVICE_ENV)
    faults: Counter[str] = Counter()
    async with running_tracker(stack) as tracker:
        await start_services(stack)
        await complete(run)
        async with running_relay(stack, settings=RELAY) as relay:
            alive = all_of(stack.check_alive, tracker.check, relay.check)
            for phase, kill in restarts:
                if phase == "publish":
                    await _during_publish(stack, world, rng, alive)
                else:
                    await _during_consumption(stack, world, rng)
                await _restart_broker(broker, rng, faults, phase, kill=kill)
                alive()
            await settle(stack, world, timeout_s=300, alive=alive)
            alive()
    report = await check_invariants(
        stack, world, scenario="3-broker-restarts", seed=seed, faults=faults
    )
    report.assert_ok()
    assert report.events == world.expected_events
    assert sum(faults.values()) == len(restarts)


@pytest.mark.slow
async def test_broker_killed_during_consumption(
    stack: Stack, broker: PrivateKafka, tmp_path: Path
) -> None:
    await broker_restarts(
        stack, broker, tmp_path, seed=3003, users=30, restarts=[("consume", True)]
    )


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [3141])
async def test_broker_restarted_during_publish_and_consumption(
    stack: Stack, broker: PrivateKafka, tmp_path: Path, seed: int
) -> None:
    await broker_restarts(
        stack,
        broker,
        tmp_path,
        seed=seed,
        users=360,
        restarts=[("publish", True), ("consume", False), ("consume", True)],
    )
