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
(`make test-faults`). In containers mode (`make test-containers`) one more test kills the
session's own Kafka container instead.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
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
    infra,
    published_events,
    start_services,
    wait_until_above,
)
from tests.faults.invariants import check_invariants, settle
from tests.faults.private_kafka import PrivateKafka, private_kafka, restart, wait_until_answering
from tests.faults.world import World, prepare_world
from tests.infra import active_containers

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


@pytest.fixture
def broker() -> Iterator[PrivateKafka]:
    with private_kafka() as broker:
        yield broker


@pytest.fixture
async def private_stack(
    postgres_url: str, broker: PrivateKafka, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The fault suite's stack, on this scenario's own broker."""
    async with isolated_stack(postgres_url, broker.bootstrap, request.node.name, tmp_path) as s:
        yield s


FULL_OUTAGE_S = (71.0, 74.0)
"""Longer than the clients' 30 s request timeout, so sends and commits in flight fail while
the broker is still away (shorter outages are hidden by retries)."""

Restarter = Callable[[bool, float], Awaitable[None]]
"""Takes the broker down (SIGKILL if true, else a clean stop) for that many seconds, then
brings it back and returns once a client gets metadata again."""


def private_restarter(broker: PrivateKafka) -> Restarter:
    async def go(kill: bool, down_s: float) -> None:
        await restart(broker, kill=kill, down_s=down_s)

    return go


def container_restarter(stack: Stack) -> Restarter:
    """The session's Kafka container (`docker kill`/`stop`, then `start`)."""

    async def go(kill: bool, down_s: float) -> None:
        await infra("kafka-stop", *(["--kill"] if kill else []))
        try:
            await asyncio.sleep(down_s)
        finally:
            await infra("kafka-start")
        await asyncio.to_thread(
            wait_until_answering, stack.kafka.bootstrap_servers, timeout_s=BROKER_START_TIMEOUT_S
        )

    return go


async def _restart_broker(
    restarter: Restarter,
    rng: random.Random,
    faults: Counter[str],
    phase: Phase,
    *,
    kill: bool,
    outage_s: tuple[float, float],
) -> None:
    await restarter(kill, rng.uniform(*outage_s))
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
        if await effects_applied(stack, s) < world.expected_effects(s) - 2
    ]
    assert unfinished, "the services finished before the restart: more users needed"
    service = stack.processes[rng.choice(unfinished)]
    before = await effects_applied(stack, service.name)
    seen = await wait_until_above(
        lambda: effects_applied(stack, service.name),
        min(before + rng.randint(0, 4), world.expected_effects(service.name) - 2),
        process=service,
        timeout_s=BROKER_START_TIMEOUT_S,
    )
    assert seen is not None, f"{service.name} died:\n{service.log_tail()}"
    await asyncio.sleep(rng.uniform(0, 0.02))
    return service.name


async def broker_restarts(
    stack: Stack,
    restarter: Restarter,
    directory: Path,
    *,
    seed: int,
    users: int,
    restarts: Sequence[Restart],
    outage_s: tuple[float, float] = FULL_OUTAGE_S,
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
                await _restart_broker(restarter, rng, faults, phase, kill=kill, outage_s=outage_s)
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
    private_stack: Stack, broker: PrivateKafka, tmp_path: Path
) -> None:
    await broker_restarts(
        private_stack,
        private_restarter(broker),
        tmp_path,
        seed=3003,
        users=30,
        restarts=[("consume", True)],
    )


@pytest.mark.containers
async def test_broker_container_killed_during_consumption(stack: Stack, tmp_path: Path) -> None:
    """`docker kill` of the session's Kafka container mid-consumption, `docker start` of the
    same container (same data, same port), then the invariants. The outage is shorter than
    the full scenario's (retries may hide some in-flight failures); the container path is
    what this adds, the full-length outage runs on a private broker in `make test`."""
    containers = active_containers()
    if containers is None:
        pytest.fail("needs RETENTION_TEST_INFRA=containers (`make test-containers`)")
    kafka_id, starts = containers.kafka.short_id, containers.kafka.ready_lines()
    await broker_restarts(
        stack,
        container_restarter(stack),
        tmp_path,
        seed=3003,
        users=30,
        restarts=[("consume", True)],
        outage_s=(8, 10),
    )
    assert containers.kills == 1
    assert containers.kafka.short_id == kafka_id  # restarted, not replaced
    assert containers.kafka.ready_lines() == starts + 1


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [3141])
async def test_broker_restarted_during_publish_and_consumption(
    private_stack: Stack, broker: PrivateKafka, tmp_path: Path, seed: int
) -> None:
    await broker_restarts(
        private_stack,
        private_restarter(broker),
        tmp_path,
        seed=seed,
        users=360,
        restarts=[("publish", True), ("consume", False), ("consume", True)],
    )
