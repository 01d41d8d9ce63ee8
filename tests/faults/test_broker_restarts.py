"""Scenario 3: the Kafka broker restarted (SIGTERM and SIGKILL) under publish and consumption.

The run is done; the relay (in-process, small batches) publishes the outbox while the
services consume, ack and the tracker records. A seeded schedule stops the shared
broker, cleanly or with SIGKILL, after a random number of published events (the relay
is between batches or waiting for acks) and after a random few effects of a service
still working through its backlog (handlers, offset commits and acks in flight), keeps
it down past the clients' request timeout and starts it again. Nothing is restarted but
the broker: the services must stay up and their SDK reconnect by itself, and the relay
and the tracker must resume too. Then the six invariants.

Both tests restart the broker every other test uses, so they are `slow` (`make test`)
or `faults_full` (`make test-faults`). The script that owns the broker is
`RETENTION_INFRA_SCRIPT`, by default this checkout's infra/infra.sh.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Literal

import pytest

from coordinator.settings import RelaySettings
from schemas import KafkaSettings
from tests.e2e.harness import PRODUCT_SERVICES, Stack, all_of, running_relay, running_tracker
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
from tests.faults.world import USERS_POLICY, World, prepare_world
from tests.infra import ROOT, active_containers

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


async def _broker_answers(kafka: KafkaSettings, *, timeout_s: float) -> None:
    # Asked from a child process: an admin client given up on mid-connect leaves its
    # sockets behind, and this process must end without unclosed resources.
    probe = (
        "import asyncio, sys; from schemas import KafkaSettings; "
        "from tests.infra import check_kafka; "
        "asyncio.run(check_kafka(KafkaSettings(bootstrap_servers=sys.argv[1])))"
    )
    deadline = time.monotonic() + timeout_s
    while True:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", probe, kafka.bootstrap_servers],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the broker does not answer:\n{done.stderr.decode()[-2000:]}")
        await asyncio.sleep(2)


FULL_OUTAGE_S = (71.0, 74.0)
"""Longer than the clients' 30 s request timeout, so sends and commits in flight fail while
the broker is still away (shorter outages are hidden by retries)."""


async def _restart_broker(
    stack: Stack,
    rng: random.Random,
    faults: Counter[str],
    phase: Phase,
    *,
    kill: bool,
    outage_s: tuple[float, float],
) -> None:
    await infra("kafka-stop", *(["--kill"] if kill else []))
    try:
        await asyncio.sleep(rng.uniform(*outage_s))
    finally:
        # Whatever happened, the shared broker comes back. Loading its ~15,000 test
        # partitions can outlast the start script's own deadline on a busy machine.
        with suppress(subprocess.CalledProcessError):
            await infra("kafka-start")
        await _broker_answers(stack.kafka, timeout_s=BROKER_START_TIMEOUT_S)
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
                await _restart_broker(stack, rng, faults, phase, kill=kill, outage_s=outage_s)
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
async def test_broker_killed_during_consumption(stack: Stack, tmp_path: Path) -> None:
    await broker_restarts(stack, tmp_path, seed=3003, users=30, restarts=[("consume", True)])


@pytest.mark.containers
async def test_broker_container_killed_during_consumption(stack: Stack, tmp_path: Path) -> None:
    """`docker kill` of the session's Kafka container mid-consumption, `docker start` of the
    same container (same data, same port), then the invariants. The outage is shorter than
    the full scenario's (retries may hide some in-flight failures); the container path is
    what this adds, the full-length outage runs on the local broker in `make test`."""
    containers = active_containers()
    if containers is None:
        pytest.fail("needs RETENTION_TEST_INFRA=containers (`make test-containers`)")
    kafka_id, starts = containers.kafka.short_id, containers.kafka.ready_lines()
    await broker_restarts(
        stack, tmp_path, seed=3003, users=30, restarts=[("consume", True)], outage_s=(8, 10)
    )
    assert containers.kills == 1
    assert containers.kafka.short_id == kafka_id  # restarted, not replaced
    assert containers.kafka.ready_lines() == starts + 1


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [3141])
async def test_broker_restarted_during_publish_and_consumption(
    stack: Stack, tmp_path: Path, seed: int
) -> None:
    await broker_restarts(
        stack,
        tmp_path,
        seed=seed,
        users=360,
        restarts=[("publish", True), ("consume", False), ("consume", True)],
    )
