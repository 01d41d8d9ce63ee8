"""Scenario 11: forgeries of every kind mixed in with the real traffic.

While the services work (tests/faults/forgery.py):
- forged acks of seven kinds, in bursts between the real ones: each must be rejected
  with its reason in the ack ledger, counted in `retention_acks_rejected{reason}` and
  `retention report`, and leave every event's state and every recorded ack as the real
  acks made them;
- verbatim replays of genuine acks: duplicates, nothing changes;
- delete events for held users written straight to the events topic without the
  coordinator's key: every service dead-letters them as `bad_signature`, touches
  nothing, acks nothing;
- tombstones and registrations in the declared services' names without their keys:
  refused and counted; the expected acknowledgers never change.
Invariants add: no service effect without a coordinator signature (`once`: no effect of
an unknown event), no service counted done without an accepted ack (`signed`). The
reduced variant runs inside scenario 6's reduced test (tests/faults/test_duplicates.py).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from coordinator.metrics import Metrics
from tests.e2e.harness import PRODUCT_SERVICES, Stack, all_of, running_tracker
from tests.faults.drive import complete, coordinator_processes, start_services
from tests.faults.forgery import (
    forge_events,
    forge_registrations,
    forged_event_problems,
    forgery_problems,
    inject_forgeries,
    registration_problems,
    replay_genuine_acks,
    wait_for_rejections,
)
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import USERS_POLICY, prepare_world


async def forged_scenario(
    stack: Stack, directory: Path, *, seed: int, users: int, forged: int
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 11 (forged acks), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=2)
    run, relay = coordinator_processes(stack, world)
    registry = CollectorRegistry()
    async with running_tracker(stack, metrics=Metrics(registry)) as tracker:
        alive = all_of(stack.check_alive, tracker.check)
        await start_services(stack)
        refused_registrations = await forge_registrations(stack, PRODUCT_SERVICES)
        await complete(run)
        await complete(relay)
        held = sorted(world.held(USERS_POLICY))
        events = await forge_events(stack, rng, held)
        # In bursts between the services' own acks, which are still arriving.
        want, fakes = await inject_forgeries(stack, rng, forged)
        await settle(stack, world, timeout_s=120, alive=alive)
        await wait_for_rejections(stack, want, alive)
        replayed = await replay_genuine_acks(stack, rng, forged // 10, fakes)
        await settle(stack, world, timeout_s=60, alive=alive)
    assert await forgery_problems(stack, registry, want) == []
    assert await forged_event_problems(stack, events, PRODUCT_SERVICES) == []
    assert (
        await registration_problems(stack, registry, refused_registrations, PRODUCT_SERVICES) == []
    )
    faults = Counter(
        forged_acks=forged,
        forged_events=events.records,
        forged_registrations=refused_registrations,
        replayed_acks=replayed,
    )
    report = await check_invariants(stack, world, scenario="11-forgeries", seed=seed, faults=faults)
    report.assert_ok()
    assert report.events == world.expected_events
    print(f"[faults] {forged} forged acks rejected: {dict(want)}; {dict(faults)}")


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [1112, 1113])
async def test_forged_acks_at_scale(stack: Stack, tmp_path: Path, seed: int) -> None:
    await forged_scenario(stack, tmp_path, seed=seed, users=150, forged=600)
