"""Scenario 11: forged acks mixed in with the real ones, while the services work.

Four kinds, built from the run's real events by a seeded schedule: acks from services
that never registered, from registered services for an entity type they do not handle,
for a real event but another entity (id or type), and for events that do not exist.
Each must be rejected with its reason in the ack ledger, counted in
`retention_acks_rejected{reason}` and `retention report`, and leave every event's state
and every service's recorded ack as the real acks made them.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from coordinator.metrics import Metrics
from coordinator.tables import ack_ledger, expected_acks, outbox
from schemas import AckStatus, RetentionAck, encode
from tests.e2e.harness import Stack, all_of, run_cli, running_tracker, wait_for
from tests.faults import garbage
from tests.faults.drive import complete, coordinator_processes, start_services
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import ENTITY_SERVICES, prepare_world

STRANGERS = ("mallory", "eve", "Billing", "billing-shadow", "notifications ", "x" * 255)
KINDS = {
    "unregistered_service": "unexpected_service",
    "service_not_for_this_type": "unexpected_service",
    "wrong_entity": "entity_mismatch",
    "unknown_event": "unknown_event",
}


def _forge(rng: random.Random, events: list[tuple[uuid.UUID, str, str]], kind: str) -> RetentionAck:
    everyone = set().union(*ENTITY_SERVICES.values())
    if kind == "service_not_for_this_type":
        # Only types some registered service does not handle (orders: billing alone).
        events = [e for e in events if ENTITY_SERVICES[e[1]] != everyone]
    event_id, entity_type, entity_id = rng.choice(events)
    handlers = sorted(ENTITY_SERVICES[entity_type])
    service = rng.choice(handlers)
    if kind == "unregistered_service":
        service = rng.choice(STRANGERS)
    elif kind == "service_not_for_this_type":
        service = rng.choice(sorted(everyone - set(handlers)))
    elif kind == "wrong_entity":
        other = rng.choice([e for e in events if e[2] != entity_id])
        if rng.random() < 0.5:
            entity_id = other[2]
        else:
            entity_type = rng.choice(sorted(set(ENTITY_SERVICES) - {entity_type}))
    else:
        event_id = uuid.UUID(int=rng.getrandbits(128))
    status = rng.choice(list(AckStatus))
    return RetentionAck(
        event_id=event_id,
        service=service,
        entity_type=entity_type,
        entity_id=entity_id,
        status=status,
        records_affected=rng.randint(0, 9),
        detail="forged" if status is AckStatus.FAILED else "",
        attempt=rng.randint(1, 5),
        acknowledged_at=datetime.now(UTC) - timedelta(seconds=rng.randint(0, 3600)),
    )


async def _rejected(stack: Stack) -> Counter[str]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(ack_ledger.c.reject_reason, func.count())
                .where(~ack_ledger.c.accepted)
                .group_by(ack_ledger.c.reject_reason)
            )
            return Counter(dict(rows.all()))
    finally:
        await engine.dispose()


async def _published(stack: Stack) -> list[tuple[uuid.UUID, str, str]]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.event_id, outbox.c.entity_type, outbox.c.entity_id)
                .where(outbox.c.published_at.is_not(None))
                .order_by(outbox.c.event_id)
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]
    finally:
        await engine.dispose()


async def _services_recorded(stack: Stack) -> set[str]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            return set((await conn.scalars(select(expected_acks.c.service).distinct())).all())
    finally:
        await engine.dispose()


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
        await complete(run)
        await complete(relay)
        events = [e for e in await _published(stack) if e[1] in ENTITY_SERVICES]
        assert len(events) > 10
        kinds = [rng.choice(sorted(KINDS)) for _ in range(forged)]
        fakes = [_forge(rng, events, kind) for kind in kinds]
        # In bursts between the services' own acks, which are still arriving.
        chunks = rng.randint(3, 6)
        for part in range(chunks):
            records = [(a.key.encode(), encode(a)) for a in fakes[part::chunks]]
            await garbage.produce_raw(stack.kafka, stack.kafka.topics.acks, records)
            await asyncio.sleep(rng.uniform(0, 0.3))
        want = Counter(KINDS[k] for k in kinds)
        await settle(stack, world, timeout_s=120, alive=alive)
        await wait_for(
            lambda: _rejected_is(stack, want),
            timeout_s=60,
            what=f"rejections {dict(want)}",
            alive=alive,
        )
        rejected = await _rejected(stack)
    metric = Counter(
        {
            reason: int(
                registry.get_sample_value("retention_acks_rejected_total", {"reason": reason}) or 0
            )
            for reason in set(KINDS.values())
        }
    )
    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    result = run_cli(stack, "report", "--since", since, "--json")
    assert result.returncode == 0, result.stderr
    report_rows = json.loads(result.stdout)["rejected_acks"]
    by_reason: Counter[str] = Counter()
    for row in report_rows:
        by_reason[row["reason"]] += row["count"]

    assert rejected == want
    assert +metric == want
    assert by_reason == want
    assert await _services_recorded(stack) == set().union(*ENTITY_SERVICES.values())
    report = await check_invariants(
        stack, world, scenario="11-forged-acks", seed=seed, faults=Counter(forged_acks=forged)
    )
    report.assert_ok()
    assert report.events == world.expected_events
    print(f"[faults] {forged} forged acks {dict(Counter(kinds))}: rejected {dict(rejected)}")


async def _rejected_is(stack: Stack, want: Counter[str]) -> bool:
    return await _rejected(stack) == want


async def test_forged_acks_rejected_and_counted(stack: Stack, tmp_path: Path) -> None:
    await forged_scenario(stack, tmp_path, seed=1111, users=20, forged=60)


@pytest.mark.slow
async def test_forged_acks_at_scale(stack: Stack, tmp_path: Path) -> None:
    await forged_scenario(stack, tmp_path, seed=1112, users=150, forged=600)
