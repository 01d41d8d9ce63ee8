"""Forged acks (scenario 11) and the checks that each was rejected and counted.

Four kinds, built from a run's real events by a seeded schedule: acks from services
that never registered, from registered services for an entity type they do not handle,
for a real event but another entity (id or type), and for events that do not exist.
`forgery_problems` checks the ack ledger's reasons, `retention_acks_rejected{reason}`,
`retention report` and that no forged service became an expected acknowledger.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from coordinator.tables import ack_ledger, expected_acks, outbox
from schemas import AckStatus, RetentionAck, encode
from tests.e2e.harness import Stack, run_cli, wait_for
from tests.faults import garbage
from tests.faults.world import ENTITY_SERVICES

__all__ = ["KINDS", "forgery_problems", "inject_forgeries", "wait_for_rejections"]

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


async def inject_forgeries(
    stack: Stack, rng: random.Random, n: int
) -> tuple[Counter[str], set[RetentionAck]]:
    """Produce `n` forged acks in seeded bursts; the reasons they must get, and them."""
    events = [e for e in await _published(stack) if e[1] in ENTITY_SERVICES]
    assert len(events) > 10
    kinds = [rng.choice(sorted(KINDS)) for _ in range(n)]
    fakes = [_forge(rng, events, kind) for kind in kinds]
    chunks = rng.randint(3, 6)
    for part in range(chunks):
        records = [(a.key.encode(), encode(a)) for a in fakes[part::chunks]]
        await garbage.produce_raw(stack.kafka, stack.kafka.topics.acks, records)
        await asyncio.sleep(rng.uniform(0, 0.3))
    return Counter(KINDS[k] for k in kinds), set(fakes)


async def wait_for_rejections(stack: Stack, want: Counter[str], alive: Callable[[], None]) -> None:
    async def done() -> bool:
        return await _rejected(stack) == want

    await wait_for(done, timeout_s=60, what=f"rejections {dict(want)}", alive=alive)


async def forgery_problems(
    stack: Stack, registry: CollectorRegistry, want: Counter[str]
) -> list[str]:
    """Where the rejections are not as `want` says: ledger, metric, report, registry."""
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
    if result.returncode != 0:
        return [f"retention report exited {result.returncode}: {result.stderr}"]
    by_reason: Counter[str] = Counter()
    for row in json.loads(result.stdout)["rejected_acks"]:
        by_reason[row["reason"]] += row["count"]
    problems = []
    for name, found in (
        ("ledger", await _rejected(stack)),
        ("metric", +metric),
        ("report", by_reason),
    ):
        if found != want:
            problems.append(f"{name}: rejections {dict(found)}, want {dict(want)}")
    recorded = await _services_recorded(stack)
    if recorded != set().union(*ENTITY_SERVICES.values()):
        problems.append(f"services with recorded acks: {sorted(recorded)}")
    return problems
