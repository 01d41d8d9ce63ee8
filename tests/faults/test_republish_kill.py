"""Scenario 13: an operator re-publishes a run while a service is SIGKILLed mid-batch.

The run is done and the relay has published everything; the services are still working
through it (every effect insert sleeps `BRAKE_S`, tests/faults/throttle.py). Then
`retention republish --run RUN_ID` sends every event of the run once more, signed, so
each service holds a second copy of everything behind its backlog, and a seeded service
is SIGKILLed while one of its effect inserts executes (its batch is open) and restarted.
The services meet each event up to three times (the original, the copy, redelivery after
the kill): every effect must still be applied exactly once, nothing lost, every event
completed with signed acks, and the audit chain intact with one `events_republished`
entry per batch of the re-publish.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log, outbox_batches
from tests.e2e.harness import PRODUCT_SERVICES, Stack, running_tracker
from tests.faults.drive import (
    COORDINATOR_ENV,
    complete,
    coordinator_processes,
    effects_applied,
    start_services,
    wait_until_above,
)
from tests.faults.invariants import SERVICE_LOGS, check_invariants, settle
from tests.faults.throttle import install_throttle, set_throttle, wait_until_writing
from tests.faults.world import USERS_POLICY, World, prepare_world

BRAKE_S = 2.0
"""Each effect insert sleeps this long until the re-publish is done: the backlog outlasts
the run, the relay and the `retention republish` processes however loaded the machine is."""
THROTTLE_S = 0.2
"""Then this long until the kill, so the chosen service soon writes again."""
MARGIN = 20
"""The killed service still has at least this many effects ahead when it is chosen."""


def _expected_effects(world: World, service: str) -> int:
    users = len(world.processed(USERS_POLICY))
    return users + len(world.processed("purchase_records")) if service == "billing" else users


async def _run_ids(stack: Stack) -> list[str]:
    engine = make_engine(stack.coordinator_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(outbox_batches.c.run_id)
                .where(outbox_batches.c.run_id.is_not(None))
                .distinct()
            )
            return sorted(str(r) for r in rows.scalars())
    finally:
        await engine.dispose()


async def _audited_republishes(stack: Stack) -> int:
    engine = make_engine(stack.coordinator_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(func.sum(audit_log.c.data["count"].as_integer())).where(
                    audit_log.c.action == "events_republished"
                )
            )
            return int(rows.scalar_one() or 0)
    finally:
        await engine.dispose()


async def test_republish_during_a_service_kill(stack: Stack, tmp_path: Path) -> None:
    seed = 1813
    rng = random.Random(seed)
    world = await prepare_world(stack, tmp_path, users=150, per_category=2)
    run, relay = coordinator_processes(stack, world)
    faults: Counter[str] = Counter()
    for name in PRODUCT_SERVICES:
        group = f"{stack.kafka.topic_prefix}.{name}"
        stack.add_service(
            name, env={"RETENTION_CONSUMER_MAX_BATCH": "5", "RETENTION_CONSUMER_GROUP_ID": group}
        )
    logs = [table for table, _ in SERVICE_LOGS.values()]
    await install_throttle(stack.services_url, logs, delay_s=BRAKE_S)
    async with running_tracker(stack) as tracker:
        await start_services(stack)
        await complete(run)
        await complete(relay)
        run_ids = await _run_ids(stack)
        assert run_ids, "the run published nothing"
        for index, run_id in enumerate(run_ids):
            republish = stack.add_cli(
                f"republish-{index}",
                "republish",
                "--run",
                run_id,
                "--by",
                "faults",
                "--json",
                env=COORDINATOR_ENV,
            )
            await complete(republish)
            faults["republish"] += 1
        # Every event went out again, audited once the broker had it.
        assert await _audited_republishes(stack) == world.expected_events
        await set_throttle(stack.services_url, THROTTLE_S)

        targets = [
            s
            for s in PRODUCT_SERVICES
            if await effects_applied(stack, s) <= _expected_effects(world, s) - MARGIN
        ]
        assert targets, "every service finished before the kill: more users needed"
        service = stack.processes[rng.choice(targets)]
        before = await effects_applied(stack, service.name)
        seen = await wait_until_above(
            lambda: effects_applied(stack, service.name),
            min(before + rng.randint(0, 3), _expected_effects(world, service.name) - MARGIN // 2),
            process=service,
        )
        assert seen is not None, f"{service.name} died:\n{service.log_tail()}"
        assert await wait_until_writing(
            stack.services_url, SERVICE_LOGS[service.name][0], process=service
        )
        service.kill()
        faults["kill_service"] += 1
        service.start()
        await service.wait_ready()
        await set_throttle(stack.services_url, 0)
        await settle(stack, world, timeout_s=180, alive=tracker.check)
        stack.check_alive()
    report = await check_invariants(
        stack, world, scenario="13-republish-during-kill", seed=seed, faults=faults
    )
    report.assert_ok()
    assert report.events == world.expected_events
