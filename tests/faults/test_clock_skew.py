"""Scenario 9: the coordinator's clock hours or days ahead of (or behind) the database's.

The engine takes `now = min(injected clock, database clock)` (coordinator/purge/planner.py):
a clock running ahead cannot make anything due sooner or end a hold sooner than the
database's clock says; one running behind only delays purges. Two in-process runs on
one world: first with the clock behind by a seeded skew (rows due by less than the
skew must stay), then with the clock ahead by another (rows young by less than the
skew, the seed data's young rows a day inside retention, and rows under a hold that
expires within the skew must all stay). Everything due is processed in the end.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from coordinator.clock import FrozenClock
from coordinator.policy.model import load_policies
from coordinator.purge.holds import create_hold, entity_types
from demo.seed_data import SEED_POLICIES, session_logs
from tests.e2e.harness import Stack
from tests.faults.inprocess import deliver, row_digests, run_policies
from tests.faults.invariants import check_invariants
from tests.faults.world import (
    USERS_POLICY,
    World,
    fault_users,
    prepare_world,
    seed_services,
)

USERS_RETENTION = timedelta(days=365)
SESSIONS = "session_logs"
MARGIN = timedelta(minutes=10)
"""Between writing the rows and the runs: far more than the test takes."""


SCALES = {"hours": (2, 12), "days": (24, 96), "months": (30 * 24, 400 * 24)}
"""Skews drawn in hours from these ranges."""


def _skew(rng: random.Random, scale: str) -> timedelta:
    return timedelta(hours=rng.uniform(*SCALES[scale]))


def _inside(rng: random.Random, skew: timedelta) -> timedelta:
    """A random offset in (MARGIN, skew - MARGIN)."""
    return MARGIN + (skew - 2 * MARGIN) * rng.random()


async def _add_rows(
    stack: Stack, world: World, rng: random.Random, now: datetime, *, ahead: timedelta,
    behind: timedelta, n: int,
) -> dict[str, list[Any]]:  # fmt: skip
    """Rows young by less than `ahead` and due by less than `behind`, in two policies."""
    sessions_cutoff = now - SEED_POLICIES[SESSIONS].retention
    users_cutoff = now - USERS_RETENTION
    start = 1 + max(i for ids in world.data.ids[SESSIONS].values() for i in ids)
    young_sessions = [start + k for k in range(n)]
    late_sessions = [start + n + k for k in range(n)]
    young_users = [f"fu-skew-young-{k:04d}" for k in range(n)]
    late_users = [f"fu-skew-late-{k:04d}" for k in range(n)]
    session_rows = [
        {"id": i, "user_id": "skew", "created_at": sessions_cutoff + _inside(rng, ahead)}
        for i in young_sessions
    ] + [
        {"id": i, "user_id": "skew", "created_at": sessions_cutoff - _inside(rng, behind)}
        for i in late_sessions
    ]
    user_rows = [
        {"id": u, "email": f"{u}@example.com", "last_seen_at": users_cutoff + _inside(rng, ahead)}
        for u in young_users
    ] + [
        {"id": u, "email": f"{u}@example.com", "last_seen_at": users_cutoff - _inside(rng, behind)}
        for u in late_users
    ]  # fmt: skip
    engine = stack.engine()
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(session_logs), session_rows)
            await conn.execute(insert(fault_users), user_rows)
    finally:
        await engine.dispose()
    users = young_users + late_users
    await seed_services(stack.services_url, world, users)
    for policy, young, late in (
        (SESSIONS, young_sessions, late_sessions),
        (USERS_POLICY, young_users, late_users),
    ):
        world.data.ids[policy]["young"].extend(young)
        world.data.ids[policy]["due"].extend(late)
    return {SESSIONS: late_sessions, USERS_POLICY: late_users}


async def _short_hold(
    stack: Stack, world: World, rng: random.Random, now: datetime, expires_in: timedelta
) -> list[str]:
    """A hold over a few due rows that expires inside the skew."""
    chosen = [
        (policy, row_id)
        for policy in (SESSIONS, USERS_POLICY, "purchase_records")
        for row_id in rng.sample(world.data.ids[policy]["due"], 2)
    ]
    entities = [f"{world.policies[p].entity_type}:{i}" for p, i in chosen]
    engine = stack.engine()
    try:
        async with engine.begin() as conn:
            await create_hold(
                conn,
                types=await entity_types(conn, load_policies(world.policy_file)),
                entities=entities,
                reason="expires soon",
                created_by="legal",
                now=now,
                expires_at=now + expires_in,
            )
    finally:
        await engine.dispose()
    for policy, row_id in chosen:
        world.data.ids[policy]["due"].remove(row_id)
        world.data.ids[policy]["held"].append(row_id)
    return entities


async def _protect(stack: Stack, world: World) -> None:
    """Record every held and young row's digest again: rows were added since."""
    for name in world.policies:
        world.untouched_checksums[name] = await row_digests(
            stack, world, name, world.held(name) | world.young(name)
        )


async def skew_scenario(
    stack: Stack,
    directory: Path,
    *,
    seed: int,
    scales: tuple[str, str],
    users: int,
    per_category: int,
    extra: int,
) -> None:
    rng = random.Random(seed)
    ahead, behind = _skew(rng, scales[0]), _skew(rng, scales[1])
    print(f"\n[faults] scenario 9 (clock skew), seed {seed}: ahead {ahead}, behind {behind}")
    world = await prepare_world(stack, directory, users=users, per_category=per_category)
    now = datetime.now(UTC)
    late = await _add_rows(stack, world, rng, now, ahead=ahead, behind=behind, n=extra)
    short_hold = await _short_hold(stack, world, rng, now, ahead / 2)
    await _protect(stack, world)

    behind_run = await run_policies(stack, world, clock=FrozenClock(datetime.now(UTC) - behind))
    assert behind_run.ok, behind_run.as_dict()
    for policy, row_ids in late.items():
        kept = await row_digests(stack, world, policy, {str(i) for i in row_ids})
        assert len(kept) == len(row_ids), f"{policy}: a clock behind purged rows due only by it"

    ahead_run = await run_policies(stack, world, clock=FrozenClock(datetime.now(UTC) + ahead))
    assert ahead_run.ok, ahead_run.as_dict()
    # Cutoffs follow the database's clock, not the one running ahead.
    retention = {p.name: p.retention for p in load_policies(world.policy_file).policies}
    real_now = datetime.now(UTC)
    assert [o.policy for o in ahead_run.outcomes if o.cutoff is None] == []
    assert [
        o.policy
        for o in ahead_run.outcomes
        if o.cutoff and o.cutoff > real_now - retention[o.policy]
    ] == []
    processed = Counter({o.policy: o.processed for o in behind_run.outcomes}) + Counter(
        {o.policy: o.processed for o in ahead_run.outcomes}
    )
    assert +processed == +Counter({n: len(world.processed(n)) for n in world.policies})

    await deliver(stack, world)
    faults = Counter(skewed_runs=2)
    report = await check_invariants(stack, world, scenario="9-clock-skew", seed=seed, faults=faults)
    report.assert_ok()
    assert report.events == world.expected_events
    print(
        f"[faults] behind by {behind}: {sum(o.processed for o in behind_run.outcomes)} rows; "
        f"ahead by {ahead}: {sum(o.processed for o in ahead_run.outcomes)} rows; "
        f"{2 * extra} rows within the skews and {len(short_hold)} under a hold expiring "
        "within it: young ones untouched, held ones untouched"
    )


async def test_clock_ahead_and_behind(stack: Stack, tmp_path: Path) -> None:
    await skew_scenario(
        stack, tmp_path, seed=9009, scales=("days", "hours"), users=12, per_category=3, extra=4
    )


@pytest.mark.faults_full
@pytest.mark.parametrize(
    ("seed", "ahead", "behind"),
    [(9101, "hours", "days"), (9102, "months", "hours"), (9103, "days", "months")],
)
async def test_clock_skews_seeds(
    stack: Stack, tmp_path: Path, seed: int, ahead: str, behind: str
) -> None:
    await skew_scenario(
        stack, tmp_path, seed=seed, scales=(ahead, behind), users=30, per_category=5, extra=12
    )
