"""Scenario 8: legal holds created in the middle of a run, over what it is about to purge.

`retention run`'s engine runs in-process with small batches; a progress callback, called
after each batch committed, pauses the run at two seeded batches. At the first pause a
hold is created with the `retention holds create` command, at the second with
`coordinator.purge.holds.create_hold` from another thread, each over a seeded choice of rows
that are due and not yet reached (later in the current policy, or in policies still to
come). Those rows must never be purged or published: no row change, no outbox row, no
service data touched, and the run's report counts them as held. In the audit chain no
purge batch after a hold's creation names a row the hold covers
(`_assert_no_purge_after_hold`, as tests/policy/test_hold_race.py checks it).

A delete run keeps the next batch in flight while it records one (`Runner._pipelined`),
and that batch holds the shared hold lock: a hold created at the pause waits for it, and
the rows it deletes were deleted before the hold existed (docs/legal-holds.md). So the
rows chosen lie past that batch's window, and the pause lasts until the hold's creation
is queued on the lock (every later batch then waits for it) or done, as
tests/policy/test_hold_race.py lets its batch go on.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from coordinator.outbox.lookup import EVENTS
from coordinator.policy.model import load_policies
from coordinator.purge.holds import HOLD_LOCK, create_hold, entity_types
from coordinator.store.db import make_engine
from tests.e2e.harness import Stack, run_cli
from tests.faults.drive import count
from tests.faults.inprocess import deliver, row_digests, run_policies
from tests.faults.invariants import check_invariants
from tests.faults.world import World, prepare_world
from tests.policy.test_hold_race import _assert_no_purge_after_hold

DUE = ("due", "boundary", "at_cutoff")
BATCH_SIZE = 2


def _entity(world: World, policy: str, row_id: Any) -> str:
    return f"{world.policies[policy].entity_type}:{row_id}"


class MidRunHolds:
    """The progress callback: at two seeded batches, hold rows the run has not reached."""

    def __init__(self, stack: Stack, world: World, rng: random.Random) -> None:
        self.stack, self.world, self.rng = stack, world, rng
        first = rng.randint(1, 6)
        self.pauses = {first: self._with_cli, first + rng.randint(2, 8): self._in_process}
        self.batches = 0
        self.held: dict[str, list[Any]] = {}
        self.order = list(world.policies)
        self.creations: list[threading.Thread] = []
        self.cli: list[subprocess.CompletedProcess[str]] = []

    def __call__(self, policy: str, processed: int, due: int) -> None:
        self.batches += 1
        create = self.pauses.get(self.batches)
        if create is None:
            return
        ahead = self._not_yet_processed(policy, processed)
        chosen = self.rng.sample(ahead, min(len(ahead), self.rng.randint(2, 5)))
        assert chosen, f"nothing left to hold after batch {self.batches}"
        create([_entity(self.world, p, i) for p, i in chosen], f"midrun-{self.batches}")
        for p, row_id in chosen:
            for category in DUE:
                ids = self.world.data.ids[p].get(category, [])
                if row_id in ids:
                    ids.remove(row_id)
            self.world.data.ids[p].setdefault("held", []).append(row_id)
            self.held.setdefault(p, []).append(row_id)

    def _not_yet_processed(self, policy: str, processed: int) -> list[tuple[str, Any]]:
        # Batches walk the id column in order; held rows are stepped over, not counted.
        # The next batch may be in flight: its window (batch_size due rows) is skipped.
        ids = self.world.data.ids
        current = sorted(i for c in DUE for i in ids[policy].get(c, []))[processed + BATCH_SIZE :]
        later = self.order[self.order.index(policy) + 1 :]
        return [(policy, i) for i in current] + [
            (p, i) for p in later for c in DUE for i in ids[p].get(c, [])
        ]

    def _with_cli(self, entities: list[str], hold_id: str) -> None:
        async def create() -> None:
            self.cli.append(await run_cli(
                self.stack, "holds", "create", "--reason", "subpoena", "--by", "counsel",
                "--id", hold_id, "--policies", str(self.world.policy_file), *entities,
            ))  # fmt: skip

        # The run's event loop is paused inside this callback: the command gets its own.
        self._until_queued(threading.Thread(target=asyncio.run, args=(create(),)))

    def _in_process(self, entities: list[str], hold_id: str) -> None:
        async def create() -> None:
            engine = make_engine(self.stack.coordinator_url, pool_size=1)
            try:
                async with engine.begin() as conn:
                    await create_hold(
                        conn,
                        types=await entity_types(conn, load_policies(self.world.policy_file)),
                        entities=entities,
                        reason="regulator request",
                        created_by="counsel",
                        now=datetime.now(UTC),
                        hold_id=hold_id,
                    )
            finally:
                await engine.dispose()

        # The run's event loop is paused inside this callback: the hold gets its own.
        self._until_queued(threading.Thread(target=asyncio.run, args=(create(),)))

    def _until_queued(self, creation: threading.Thread) -> None:
        """Start the hold's creation and return once it waits for the hold lock or is
        done (the run's event loop is paused meanwhile)."""
        self.creations.append(creation)
        creation.start()
        deadline = time.monotonic() + 60
        while creation.is_alive() and not self._creation_queued():
            assert time.monotonic() < deadline, "the hold's creation neither queued nor done"
            time.sleep(0.01)

    def _creation_queued(self) -> bool:
        waiting: list[int] = []

        async def look() -> None:
            engine = make_engine(self.stack.coordinator_url, pool_size=1)
            try:
                async with engine.connect() as conn:
                    waiting.append(
                        await conn.scalar(
                            text(
                                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                " AND mode = 'ExclusiveLock' AND NOT granted AND objid = :key"
                                # Advisory locks are per database; pg_locks is the cluster's.
                                " AND database = (SELECT oid FROM pg_database"
                                " WHERE datname = current_database())"
                            ),
                            {"key": HOLD_LOCK},
                        )
                    )
            finally:
                await engine.dispose()

        thread = threading.Thread(target=asyncio.run, args=(look(),))
        thread.start()
        thread.join(timeout=30)
        return bool(waiting and waiting[0])

    def finish(self) -> None:
        """Wait for the holds' creations; each must have succeeded."""
        for creation in self.creations:
            creation.join(timeout=60)
            assert not creation.is_alive()
        for done in self.cli:
            assert done.returncode == 0, done.stdout + done.stderr


async def hold_midrun_scenario(
    stack: Stack, directory: Path, *, seed: int, users: int, per_category: int
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 8 (holds created mid-run), seed {seed}")
    world = await prepare_world(
        stack, directory, users=users, per_category=per_category, batch_size=BATCH_SIZE
    )
    digests = {
        name: await row_digests(stack, world, name, world.processed(name))
        for name in world.policies
    }
    holds = MidRunHolds(stack, world, rng)
    report = await run_policies(stack, world, progress=holds)
    holds.finish()
    engine = stack.engine()
    try:
        await _assert_no_purge_after_hold(engine)
    finally:
        await engine.dispose()
    assert len(holds.cli) == 1
    assert report.ok, report.as_dict()
    assert holds.batches >= max(holds.pauses), f"only {holds.batches} batches"
    for name, row_ids in holds.held.items():
        for row_id in row_ids:
            world.untouched_checksums[name][str(row_id)] = digests[name][str(row_id)]
    outcomes = {o.policy: o for o in report.outcomes}
    assert {n: o.held for n, o in outcomes.items()} == {
        n: len(world.held(n)) for n in world.policies
    }
    assert {n: o.processed for n, o in outcomes.items()} == {
        n: len(world.processed(n)) for n in world.policies
    }
    late_held = {_entity(world, p, i) for p, ids in holds.held.items() for i in ids}
    published = await count(
        stack,
        select(func.count())
        .select_from(EVENTS)
        .where(func.concat(EVENTS.c.entity_type, ":", EVENTS.c.entity_id).in_(late_held)),
    )
    assert published == 0
    await deliver(stack, world)
    faults = Counter(holds_mid_run=len(holds.pauses), rows_held_mid_run=len(late_held))
    result = await check_invariants(
        stack, world, scenario="8-hold-mid-run", seed=seed, faults=faults
    )
    result.assert_ok()
    assert result.events == world.expected_events
    print(
        f"[faults] {len(late_held)} rows held at batches {sorted(holds.pauses)}: "
        f"{sorted(late_held)}"
    )


async def test_hold_created_mid_run(stack: Stack, tmp_path: Path) -> None:
    await hold_midrun_scenario(stack, tmp_path, seed=8008, users=12, per_category=3)


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [8101, 8102, 8103])
async def test_holds_created_mid_run_seeds(stack: Stack, tmp_path: Path, seed: int) -> None:
    await hold_midrun_scenario(stack, tmp_path, seed=seed, users=40, per_category=6)
