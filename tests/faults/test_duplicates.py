"""Scenario 6: every event delivered again — a replay from offset 0, and re-produced copies.

After a clean run has settled, the three services are stopped, each one's consumer
group is rewound to offset 0 on the events topic (a true replay: the group re-reads
what it already committed), and every event record is produced once more as a new
record (a duplicating producer), in a seeded order. The services come back and must
apply no effect twice (erasure_log rows stay one per event), re-ack each copy from
their idempotency store ("redelivered", same status and counts as the original), and
the tracker must leave every event's state and every service's recorded ack unchanged.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from coordinator.metrics import Metrics
from coordinator.store.tables import event_status, expected_acks
from schemas import AckStatus, RetentionAck, decode
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    AckCopy,
    AckTail,
    Pair,
    Stack,
    TopicTail,
    ack_problems,
    acks_by_pair,
    all_of,
    erasure_counts,
    running_tracker,
    wait_for,
)
from tests.faults import garbage
from tests.faults.drive import complete, coordinator_processes, start_services
from tests.faults.forgery import forgery_problems, inject_forgeries, wait_for_rejections
from tests.faults.invariants import check_invariants, settle
from tests.faults.replay import add_services_in_own_groups, rewind_group, tracker_caught_up
from tests.faults.world import ENTITY_SERVICES, World, prepare_world
from tests.sdk.kafka_io import COORDINATOR

DONE = frozenset({AckStatus.COMPLETED, AckStatus.NOT_FOUND})


async def tracker_state(stack: Stack) -> dict[str, Any]:
    """Every event's state and every service's recorded ack, as the tracker holds them."""
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            events = (await conn.execute(select(event_status).order_by("event_id"))).all()
            acks = (await conn.execute(select(expected_acks).order_by("event_id", "service"))).all()
    finally:
        await engine.dispose()
    return {
        "events": [tuple(row) for row in events],
        "acks": [tuple(row) for row in acks],
    }


async def expected_pairs(stack: Stack) -> dict[Pair, frozenset[AckStatus]]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(event_status.c.event_id, event_status.c.entity_type))
            ).all()
    finally:
        await engine.dispose()
    return {
        (event_id, service): DONE
        for event_id, entity_type in rows
        for service in ENTITY_SERVICES.get(entity_type, ())
    }


def _real_acks(acks: AckTail, fakes: set[RetentionAck]) -> dict[Pair, list[AckCopy]]:
    """The services' acks so far, without the forgeries of scenario 11."""
    return acks_by_pair(r for r in acks.records if decode(RetentionAck, r.value) not in fakes)


def _all_acked(
    acks: AckTail, expected: Iterable[Pair], fakes: set[RetentionAck], copies: int
) -> bool:
    real = _real_acks(acks, fakes)
    return all(len(real.get(pair, ())) >= copies for pair in expected)


async def deliver_everything_again(
    stack: Stack,
    world: World,
    rng: random.Random,
    groups: dict[str, str],
    acks: AckTail,
    expected: Iterable[Pair],
    fakes: set[RetentionAck],
    *,
    replays: int,
    faults: Counter[str],
) -> int:
    """Stop the services, rewind their groups `replays` times over, re-produce every event.

    Returns how many copies of each event the services will have seen in all.
    """
    topics = stack.kafka.topics
    codes = await stack.stop_services()
    assert codes == dict.fromkeys(PRODUCT_SERVICES, 0)
    async with TopicTail(stack.kafka, topics.events) as events:
        await events.caught_up()
        originals = [(r.key, r.value) for r in events.records]
    assert len(originals) == world.expected_events
    copies = 1
    for replay in range(replays):
        for group in groups.values():
            replayed = await rewind_group(stack.kafka, group, topics.events)
            faults["replayed_records"] += replayed
        await stack.start_services(*PRODUCT_SERVICES)
        copies += 1
        if replay < replays - 1:
            # The next rewind needs the group empty, after this replay went all the way.
            await wait_for(
                lambda n=copies: _all_acked(acks, expected, fakes, n),
                timeout_s=120,
                what=f"replay {replay + 1}'s re-acks",
                interval_s=0.2,
            )
            await stack.stop_services()
    shuffled = rng.sample(originals, len(originals))
    # Re-sent by the coordinator's key: the same bytes, the same valid signature.
    await garbage.produce_raw(stack.kafka, topics.events, shuffled, signer=COORDINATOR)
    faults["duplicated_records"] += len(shuffled)
    return copies + 1


async def duplicates_scenario(
    stack: Stack, directory: Path, *, seed: int, users: int, replays: int, forged: int = 0
) -> None:
    """Scenario 6; with `forged`, scenario 11's forgeries join the first delivery."""
    rng = random.Random(seed)
    print(f"\n[faults] scenario 6 (duplicate deliveries), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=2)
    run, relay = coordinator_processes(stack, world)
    faults: Counter[str] = Counter()
    registry = CollectorRegistry()
    async with (
        running_tracker(stack, metrics=Metrics(registry)) as tracker,
        AckTail(stack.kafka) as acks,
    ):
        alive = all_of(stack.check_alive, tracker.check, acks.check)
        groups = add_services_in_own_groups(stack, PRODUCT_SERVICES)
        await start_services(stack)
        await complete(run)
        await complete(relay)
        want, fakes = await inject_forgeries(stack, rng, forged) if forged else (Counter(), set())
        faults["forged_acks"] = forged
        await settle(stack, world, timeout_s=120, alive=alive)
        await wait_for_rejections(stack, want, alive)
        expected = await expected_pairs(stack)
        await wait_for(
            lambda: expected.keys() <= acks.pairs(), timeout_s=60, what="every ack", alive=alive
        )
        before = await tracker_state(stack)
        effects_before = await erasure_counts(stack.services_url)

        copies = await deliver_everything_again(
            stack, world, rng, groups, acks, expected, fakes, replays=replays, faults=faults
        )
        await wait_for(
            lambda: _all_acked(acks, expected, fakes, copies),
            timeout_s=120,
            what=f"{copies} acks of every (event, service)",
            alive=alive,
            interval_s=0.2,
        )
        await wait_for(
            lambda: tracker_caught_up(stack), timeout_s=60, what="the tracker", alive=alive
        )
        after = await tracker_state(stack)
        await stack.stop_services()
        await acks.caught_up()

    pairs = _real_acks(acks, fakes)
    assert await forgery_problems(stack, registry, want) == []
    assert ack_problems(pairs, expected, redelivery_from=PRODUCT_SERVICES) == []
    assert {len(c) for c in pairs.values()} == {copies}
    assert await erasure_counts(stack.services_url) == effects_before
    assert after == before
    report = await check_invariants(
        stack,
        world,
        scenario="6+11-duplicates+forged" if forged else "6-duplicates",
        seed=seed,
        faults=faults,
    )
    report.assert_ok()
    assert report.events == world.expected_events
    print(
        f"[faults] {world.expected_events} events delivered {copies} times each to "
        f"{len(PRODUCT_SERVICES)} services ({len(expected)} pairs, "
        f"{sum(len(c) for c in pairs.values())} acks): every effect once, tracker unchanged"
    )


async def test_replayed_and_duplicated_events_apply_once_forgeries_rejected(
    stack: Stack, tmp_path: Path
) -> None:
    # The reduced variants of scenarios 6 and 11 share one world to save a stack's start.
    await duplicates_scenario(stack, tmp_path, seed=6006, users=20, replays=1, forged=60)


@pytest.mark.faults_full
async def test_replayed_twice_and_duplicated_at_scale(stack: Stack, tmp_path: Path) -> None:
    await duplicates_scenario(stack, tmp_path, seed=6666, users=150, replays=2)
