"""Scenario 15: erasure requests filed while the coordinator is SIGKILLed.

`retention requests create user:<id> --reference R` runs as a subprocess for a seeded
choice of due fault users, with the tracker and the three services running. Each one is
SIGKILLed at a seeded point: a moment after it started (before or while it files), as soon
as its request row is committed, or after its first purge batch (execution under way).
Filing the same reference again resumes the request (docs/erasure.md). Then `retention
run` and `retention relay --drain` do the rest, everything settles, and:

* every request ends `completed`, its parts executed exactly once in effect: one event
  per erased entity and one subject event per request, nothing twice;
* the six invariants hold (the requests only touch due fault users, whose rows the run
  would erase anyway; held and young rows stay).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from coordinator.erasure.status import complete_acknowledged
from coordinator.store.tables import audit_log, erasure_requests, outbox_batches
from tests.e2e.harness import ServiceProcess, Stack, all_of, running_tracker
from tests.faults.drive import (
    COORDINATOR_ENV,
    complete,
    coordinator_processes,
    count,
    start_services,
    wait_until_above,
)
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import USERS_POLICY, World, prepare_world

POINTS = ("started", "filed", "executing")


def _requests(reference: str) -> object:
    return (
        select(func.count())
        .select_from(erasure_requests)
        .where(erasure_requests.c.reference == reference)
    )


def _request_batches() -> object:
    # The request's purge batches are audited like a run's (`purge.batch`).
    return select(func.count()).select_from(audit_log).where(audit_log.c.action == "purge.batch")


async def _file_and_kill(
    rng: random.Random, stack: Stack, world: World, n: int, user: str
) -> str | None:
    """Start `requests create`, SIGKILL it at a seeded point; the point, or None if it
    finished first. Then file the same reference again, to the end."""
    reference = f"fault-{user}"
    args = (
        "requests", "create", f"user:{user}", "--regulation", rng.choice(("gdpr", "ccpa")),
        "--by", "dpo", "--reference", reference, "--policies", str(world.policy_file), "--json",
    )  # fmt: skip
    point = rng.choice(POINTS)
    first: ServiceProcess = stack.add_cli(f"request-{n}", *args, env=COORDINATOR_ENV)
    batches = await count(stack, _request_batches())
    first.start()
    if point == "started":
        await asyncio.sleep(rng.uniform(0.2, 3.0))
    elif point == "filed":
        seen = await wait_until_above(
            lambda: count(stack, _requests(reference)), 0, process=first, interval_s=0.005
        )
        point = point if seen is not None else ""
    else:
        seen = await wait_until_above(
            lambda: count(stack, _request_batches()), batches, process=first, interval_s=0.005
        )
        point = point if seen is not None else ""
    killed = first.alive and bool(point)
    if killed:
        first.kill()
    await first.wait(timeout_s=60)
    await complete(stack.add_cli(f"request-{n}-again", *args, env=COORDINATOR_ENV))
    return point if killed else None


async def request_kill_scenario(
    stack: Stack, directory: Path, *, seed: int, users: int, per_category: int, requests: int
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 15 (requests during coordinator SIGKILLs), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=per_category)
    subjects = rng.sample(sorted(world.processed(USERS_POLICY)), requests)
    world.subject_events = len(subjects)
    kills: Counter[str] = Counter()
    run, relay = coordinator_processes(stack, world, suffix="-after")
    async with running_tracker(stack) as tracker:
        alive = all_of(stack.check_alive, tracker.check)
        await start_services(stack)
        for n, user in enumerate(subjects):
            point = await _file_and_kill(rng, stack, world, n, user)
            if point is not None:
                kills[f"kill_request_{point}"] += 1
            alive()
        await complete(run)
        await complete(relay)
        await settle(stack, world, timeout_s=180, alive=alive)
    await stack.stop_services()

    engine = stack.engine()
    try:
        async with engine.begin() as conn:
            await complete_acknowledged(conn, now=datetime.now(UTC))
        async with engine.connect() as conn:
            statuses = Counter(
                dict((await conn.execute(
                    select(erasure_requests.c.status, func.count()).group_by(
                        erasure_requests.c.status
                    )
                )).all())
            )  # fmt: skip
            subject_events = await conn.scalar(
                select(func.coalesce(func.sum(outbox_batches.c.events), 0)).where(
                    outbox_batches.c.policy == "erasure_request"
                )
            )
    finally:
        await engine.dispose()
    assert statuses == Counter(completed=len(subjects)), statuses
    assert subject_events == len(subjects)
    result = await check_invariants(
        stack, world, scenario="15-request-during-sigkill", seed=seed, faults=kills
    )
    result.assert_ok()
    assert result.events == world.expected_events
    print(f"[faults] {len(subjects)} requests, kills at {dict(kills)}")


async def test_requests_during_coordinator_kills(stack: Stack, tmp_path: Path) -> None:
    await request_kill_scenario(stack, tmp_path, seed=1212, users=12, per_category=3, requests=4)


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [1221, 1222, 1223])
async def test_requests_during_coordinator_kills_seeds(
    stack: Stack, tmp_path: Path, seed: int
) -> None:
    await request_kill_scenario(stack, tmp_path, seed=seed, users=40, per_category=6, requests=8)
