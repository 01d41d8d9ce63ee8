"""Scenario 14: a legal hold arrives mid-fan-out, after publication, before a service acted.

The run purges locally and `retention relay --drain` publishes every event while one
seeded example service is down (it lags). Then `retention holds create` holds a seeded
choice of published users, and the tracker puts the hold sets on the holds topic. The
lagging service starts: it must ack every event of a held user `held` and apply none of
them (no `erasure_log` entry, its data kept), while the other services and the other
users go on. Those events are `held` at the tracker: not overdue, not completed. Then
`retention holds release`: the tracker publishes the tombstones, re-publishes the held
events for that service, it acts on them, everything settles, and the invariants hold
(exactly one effect per event and service, nothing lost).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from coordinator.evidence.audit import lock_head
from coordinator.outbox.lookup import EVENTS, joined_on
from coordinator.store.db import make_engine
from coordinator.store.tables import event_status, expected_acks, hold_topic_queue
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    Stack,
    all_of,
    lock_waits,
    run_cli,
    running_tracker,
    wait_for,
)
from tests.faults.drive import complete, coordinator_processes, count
from tests.faults.inprocess import run_policies
from tests.faults.invariants import SERVICE_LOGS, check_invariants, settle
from tests.faults.world import USERS_POLICY, prepare_world

HOLD_ID = "fanout-hold"
ONE_POLICY = """\
policies:
  - name: users
    table: hf_users
    entity_type: user
    timestamp_column: seen_at
    retention: 30d
    action: delete
    legal_basis: "Storage limitation"
"""


async def _hold_cli(stack: Stack, *args: str) -> None:
    done = await run_cli(stack, "holds", *args)
    assert done.returncode == 0, done.stdout + done.stderr


async def _effects(stack: Stack, service: str, users: set[str]) -> int:
    """Effects the service applied for these users (its erasure log)."""
    log, erased = SERVICE_LOGS[service]
    engine = make_engine(stack.services_url)
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(
                select(func.count()).select_from(log).where(erased.in_(sorted(users)))
            )
            return int(found or 0)
    finally:
        await engine.dispose()


def _acks_of(service: str, users: set[str], status: str) -> object:
    return (
        select(func.count())
        .select_from(expected_acks.join(EVENTS, joined_on(expected_acks.c.event_id)))
        .where(
            expected_acks.c.service == service,
            expected_acks.c.status == status,
            EVENTS.c.entity_type == "user",
            EVENTS.c.entity_id.in_(sorted(users)),
        )
    )


async def hold_fanout_scenario(
    stack: Stack, directory: Path, *, seed: int, users: int, per_category: int
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 14 (hold arrives mid-fan-out), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=per_category)
    report = await run_policies(stack, world)
    assert report.ok, report.as_dict()
    lagging = rng.choice(PRODUCT_SERVICES)
    others = [s for s in PRODUCT_SERVICES if s != lagging]
    due_users = sorted(world.processed(USERS_POLICY))
    chosen = set(rng.sample(due_users, rng.randint(2, max(2, len(due_users) // 3))))
    _, relay = coordinator_processes(stack, world, suffix="-fanout")
    async with running_tracker(stack) as tracker:
        alive = all_of(stack.check_alive, tracker.check)
        await stack.start_services(*others)
        await complete(relay)
        # Published; `lagging` has consumed nothing. The hold arrives now.
        entities = [f"user:{u}" for u in sorted(chosen)]
        await _hold_cli(stack, "create", "--reason", "subpoena", "--by", "counsel", "--id", HOLD_ID,
                  "--policies", str(world.policy_file), *entities)  # fmt: skip

        async def on_topic() -> bool:
            alive()
            return await count(stack, select(func.count()).select_from(hold_topic_queue)) == 0

        await wait_for(on_topic, timeout_s=60, what="the hold on the holds topic")
        await stack.start_services(lagging)

        async def all_held() -> bool:
            alive()
            return await count(stack, _acks_of(lagging, chosen, "held")) == len(chosen)

        await wait_for(all_held, timeout_s=120, what=f"{lagging}'s held acks")
        assert await _effects(stack, lagging, chosen) == 0, f"{lagging} acted on held users"
        held_events = await count(
            stack,
            select(func.count()).select_from(event_status).where(event_status.c.state == "held"),
        )
        assert held_events == len(chosen)

        await _hold_cli(stack, "release", HOLD_ID, "--by", "counsel")
        await settle(stack, world, timeout_s=180, alive=alive)
        assert await _effects(stack, lagging, chosen) == len(chosen)
    await stack.stop_services()
    faults = Counter(
        holds_mid_fan_out=1, entities_held_mid_fan_out=len(chosen), held_acks=len(chosen)
    )
    result = await check_invariants(
        stack, world, scenario="14-hold-mid-fan-out", seed=seed, faults=faults
    )
    result.assert_ok()
    assert result.events == world.expected_events
    print(f"[faults] {lagging} lagged; {len(chosen)} users held mid-fan-out, then released")


async def test_hold_arrives_mid_fan_out(stack: Stack, tmp_path: Path) -> None:
    await hold_fanout_scenario(stack, tmp_path, seed=1111, users=12, per_category=3)


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [1121, 1122, 1123])
async def test_hold_arrives_mid_fan_out_seeds(stack: Stack, tmp_path: Path, seed: int) -> None:
    await hold_fanout_scenario(stack, tmp_path, seed=seed, users=40, per_category=6)


async def test_a_command_waits_for_a_lock_held_by_the_tests_own_loop(
    stack: Stack, tmp_path: Path
) -> None:
    """The tracker runs in the test's event loop, and its ack batch holds the audit chain's
    lock across awaits. `holds create` waits for that lock: it ends only if the loop goes
    on while the command runs (a blocking `run_cli` waited here until its timeout)."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(ONE_POLICY, encoding="utf-8")
    create = ("create", "--reason", "subpoena", "--by", "counsel", "--id", HOLD_ID,
              "--policies", str(policies), "user:u1")  # fmt: skip
    locked, release = asyncio.Event(), asyncio.Event()
    engine = stack.engine()

    async def ack_batch() -> None:
        async with engine.begin() as conn:
            await lock_head(conn)
            locked.set()
            await release.wait()

    async def release_once_waited_for() -> None:
        while "advisory chain lock" not in await lock_waits(stack):
            await asyncio.sleep(0.1)
        release.set()

    batch = asyncio.create_task(ack_batch())
    await locked.wait()
    releasing = asyncio.create_task(release_once_waited_for())
    try:
        await _hold_cli(stack, *create)
        assert release.is_set()  # the command had waited for the lock
    finally:
        releasing.cancel()
        release.set()
        await batch
        await engine.dispose()
