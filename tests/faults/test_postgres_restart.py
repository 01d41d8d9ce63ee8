"""Scenario 4, the restart: the PostgreSQL server crashes and comes back under a live system.

`retention serve` (scheduler, relay, tracker, gauges, HTTP API in one process) runs the
policies every two seconds on a PostgreSQL server of the test's own
(tests/faults/private_postgres.py; the shared server is never touched), and the three
example services consume from it, their own database on the same server. At a seeded
moment the server is stopped in immediate mode (every backend killed, no checkpoint)
and started again a few seconds later (crash recovery):

* `purge`: the run is inside the users' purge (a DELETE on `fault_users` is executing,
  some users gone, more to come), the relay has published some of the run's events and
  the services are inside their batches: purge, publish and ack are all in flight;
* `consume` (full): the run is over, the services are still working through their
  backlog (an effect insert executing), and the outage lasts longer.

Nothing is restarted but the database: `serve` and the services must reconnect by
themselves (a later scheduled run finishes the interrupted purge), keep their pids,
settle every event, and `serve` must still stop cleanly on SIGTERM. The work is kept in
flight by the throttle of tests/faults/throttle.py (each user DELETE and each effect
insert sleeps in its own transaction), released once the restarts are done.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import func, select

from coordinator.store.tables import runs, scheduler_fires
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    ServiceProcess,
    Stack,
    all_of,
    isolated_stack,
)
from tests.faults.drive import (
    count,
    effects_applied,
    published_events,
    serve_env,
    serve_policies,
    start_services,
    wait_until_above,
)
from tests.faults.invariants import SERVICE_LOGS, check_invariants, settle
from tests.faults.private_postgres import PrivatePostgres, free_port, private_postgres
from tests.faults.throttle import install_throttle, set_throttle, wait_until_writing
from tests.faults.world import USERS_POLICY, World, fault_users, prepare_world

Phase = Literal["purge", "consume"]
Restart = tuple[Phase, tuple[float, float]]
"""When the server crashes, and how long (seconds, a seeded draw) it stays down."""

PURGE_THROTTLE_S = 0.1
"""Each user DELETE sleeps this long: the users' purge takes seconds, not milliseconds."""
EFFECT_THROTTLE_S = 0.1
"""Each effect insert sleeps this long: the services are inside their batches."""
CONSUME_THROTTLE_S = 0.5
"""The effect brake from the `consume` phase on: a backlog builds up behind the purge."""
SCHEDULE = "* * * * * */2"
"""Every policy every two seconds: a run is always under way or about to start."""
MARGIN = 10
"""Work (users, effects) that must still be ahead when the server goes down."""
FAILED_BATCHES_PER_RESTART = 50
"""A service retries a batch during an outage after `error_backoff_s` (1 s), not at once."""


async def _unfinished_records(stack: Stack) -> dict[str, int]:
    """Runs still `running` and fires still `started` (after `serve` stopped: none)."""
    found = {
        "runs": await count(
            stack, select(func.count()).select_from(runs).where(runs.c.status == "running")
        ),
        "fires": await count(
            stack,
            select(func.count())
            .select_from(scheduler_fires)
            .where(scheduler_fires.c.status == "started"),
        ),
    }
    return {what: n for what, n in found.items() if n}


async def _users_deleted(stack: Stack, world: World) -> int:
    left = await count(
        stack,
        select(func.count())
        .select_from(fault_users)
        .where(fault_users.c.id.in_(sorted(world.processed(USERS_POLICY)))),
    )
    return len(world.processed(USERS_POLICY)) - left


async def _during_purge(
    stack: Stack, world: World, rng: random.Random, serve: ServiceProcess
) -> None:
    """Until a service applies events, and the users' purge is executing, with more to come."""
    busiest = world.busiest_service()
    assert await wait_until_writing(
        stack.services_url, SERVICE_LOGS[busiest][0], process=stack.processes[busiest]
    )
    due = len(world.processed(USERS_POLICY))
    seen = await wait_until_above(
        lambda: _users_deleted(stack, world),
        rng.randint(2, due // 3),
        process=serve,
        timeout_s=120,
        interval_s=0.05,
    )
    assert seen is not None, f"serve died:\n{serve.log_tail()}"
    assert await count(stack, published_events()) > 0, "nothing published yet"
    assert await wait_until_writing(stack.coordinator_url, fault_users, process=serve)
    assert await _users_deleted(stack, world) <= due - MARGIN, "the purge was not slowed down"


async def _during_consumption(stack: Stack, world: World, rng: random.Random) -> None:
    """After the purge, until a service with work ahead applied a few more effects."""
    # The services work their three partitions in parallel and keep pace with the purge;
    # braked harder now, they still have a backlog when it is over.
    await set_throttle(stack.services_url, CONSUME_THROTTLE_S)
    due = len(world.processed(USERS_POLICY))
    await wait_until_above(
        lambda: _users_deleted(stack, world),
        due - 1,
        process=stack.processes[world.busiest_service()],
    )
    unfinished = [
        s
        for s in PRODUCT_SERVICES
        if await effects_applied(stack, s) <= world.expected_effects(s) - MARGIN
    ]
    assert unfinished, "the services finished before the restart: throttle broken?"
    service = stack.processes[rng.choice(unfinished)]
    before = await effects_applied(stack, service.name)
    seen = await wait_until_above(
        lambda: effects_applied(stack, service.name),
        min(before + rng.randint(0, 5), world.expected_effects(service.name) - MARGIN),
        process=service,
    )
    assert seen is not None, f"{service.name} died:\n{service.log_tail()}"
    log = SERVICE_LOGS[service.name][0]
    assert await wait_until_writing(stack.services_url, log, process=service)


async def postgres_restarts(
    stack: Stack,
    server: PrivatePostgres,
    directory: Path,
    *,
    seed: int,
    users: int,
    restarts: Sequence[Restart],
) -> None:
    rng = random.Random(seed)
    world = await prepare_world(stack, directory, users=users, per_category=2, batch_size=2)
    serve_policies(world)
    for name in PRODUCT_SERVICES:
        group = f"{stack.kafka.topic_prefix}.{name}"
        stack.add_service(
            name, env={"RETENTION_CONSUMER_MAX_BATCH": "5", "RETENTION_CONSUMER_GROUP_ID": group}
        )
    await install_throttle(stack.coordinator_url, [fault_users], delay_s=PURGE_THROTTLE_S)
    logs = [table for table, _ in SERVICE_LOGS.values()]
    await install_throttle(stack.services_url, logs, delay_s=EFFECT_THROTTLE_S)
    port = free_port()
    serve = stack.add_cli(
        "serve", "serve", "--port", str(port), env=serve_env(stack, world, schedule=SCHEDULE)
    )
    faults: Counter[str] = Counter()
    serve.start()  # its tracker records the services' registrations
    await start_services(stack)
    alive = all_of(stack.check_alive, serve.check_alive)
    try:
        for phase, (shortest, longest) in restarts:
            if phase == "purge":
                await _during_purge(stack, world, rng, serve)
            else:
                await _during_consumption(stack, world, rng)
            await asyncio.to_thread(server.crash)
            try:
                await asyncio.sleep(rng.uniform(shortest, longest))
            finally:
                await asyncio.to_thread(server.start)
            faults[f"restart_postgres_during_{phase}"] += 1
            alive()
        await set_throttle(stack.coordinator_url, 0)
        await set_throttle(stack.services_url, 0)
        await settle(stack, world, timeout_s=180, alive=alive)
        alive()
        restarted = {p.name: p.starts for p in stack.processes.values() if p.starts != 1}
        assert not restarted, f"restarted by someone: {restarted}"
    finally:
        code = await serve.terminate(timeout_s=60)
    assert code == 0, f"serve did not stop cleanly ({code}):\n{serve.log_tail()}"
    for name in PRODUCT_SERVICES:
        # Retrying is right while the database is away; spinning is not (it logged
        # ~800 failed batches a second before the SDK paused between them).
        failed = stack.processes[name].log().count(b"batch_transaction_failed")
        assert failed <= FAILED_BATCHES_PER_RESTART * len(restarts), f"{name}: {failed}"
    unfinished = await _unfinished_records(stack)
    assert not unfinished, f"left unfinished by the restart: {unfinished}"
    report = await check_invariants(
        stack, world, scenario="4-postgres-restart", seed=seed, faults=faults
    )
    report.assert_ok()
    assert report.events == world.expected_events
    assert sum(faults.values()) == len(restarts)


@pytest.fixture
def private_server() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture
async def private_stack(
    private_server: PrivatePostgres,
    kafka_bootstrap: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    url = private_server.url()
    async with isolated_stack(url, kafka_bootstrap, request.node.name, tmp_path) as stack:
        yield stack


async def test_postgres_restarted_during_purge(
    private_stack: Stack, private_server: PrivatePostgres, tmp_path: Path
) -> None:
    await postgres_restarts(
        private_stack,
        private_server,
        tmp_path,
        seed=4242,
        users=40,
        restarts=[("purge", (2.0, 5.0))],
    )


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [40415])
async def test_postgres_restarted_during_purge_and_consumption(
    private_stack: Stack, private_server: PrivatePostgres, tmp_path: Path, seed: int
) -> None:
    await postgres_restarts(
        private_stack,
        private_server,
        tmp_path,
        seed=seed,
        users=150,
        restarts=[("purge", (2.0, 5.0)), ("consume", (15.0, 30.0))],
    )
