"""Scenario 7: handlers that fail intermittently, permanently, or fatally.

A test-only fourth service (tests/faults/flaky_service.py, public SDK only) handles
the run's `ticket` and `cart` events under a seeded plan: some succeed after k failed
attempts, some never do, some raise an exception declared non-retryable. Expected:
a `completed` ack on attempt k+1 and exactly one effect (failed attempts roll back);
a `failed` ack after max_attempts (or after one attempt for the fatal ones), the event
in the DLQ once with its attempts, the event `failed` in the tracker with the error as
its reason, and `retention report` counting the failures per service and policy.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select

from consumer_sdk import DlqHeader, DlqReason
from coordinator.outbox.lookup import EVENTS
from coordinator.store.db import make_engine
from schemas import AckStatus, RetentionEvent, decode
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    AckTail,
    Stack,
    TopicTail,
    acks_by_pair,
    all_of,
    has_registered,
    run_cli,
    running_tracker,
    wait_for,
)
from tests.faults import flaky_service
from tests.faults.drive import complete, coordinator_processes, start_services
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import ENTITY_SERVICES, prepare_world

MAX_ATTEMPTS = 4
ENTITY_SERVICES_WITH_FLAKY = {
    **ENTITY_SERVICES,
    **{t: frozenset({flaky_service.SERVICE}) for t in flaky_service.ENTITY_TYPES},
}


async def _flaky_events(stack: Stack) -> dict[object, tuple[str, str]]:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(EVENTS.c.event_id, EVENTS.c.entity_id, EVENTS.c.policy).where(
                    EVENTS.c.entity_type.in_(flaky_service.ENTITY_TYPES)
                )
            )
            return {row.event_id: (row.entity_id, row.policy) for row in rows}
    finally:
        await engine.dispose()


async def _effects(stack: Stack) -> Counter[object]:
    engine = make_engine(stack.services_url)
    try:
        async with engine.connect() as conn:
            table = flaky_service.effects
            rows = await conn.execute(
                select(table.c.event_id, func.count()).group_by(table.c.event_id)
            )
            return Counter(dict(rows.all()))
    finally:
        await engine.dispose()


async def failing_scenario(stack: Stack, directory: Path, *, seed: int, per_category: int) -> None:
    print(f"\n[faults] scenario 7 (failing handlers), seed {seed}")
    rng = random.Random(seed)
    world = await prepare_world(stack, directory, users=10, per_category=per_category)
    run, relay = coordinator_processes(stack, world)
    stack.add_service(
        flaky_service.SERVICE,
        module="tests.faults.flaky_service",
        env={
            "FLAKY_SEED": str(seed),
            "RETENTION_CONSUMER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "RETENTION_CONSUMER_RETRY_INITIAL_S": f"{rng.uniform(0.02, 0.08):.3f}",
            "RETENTION_CONSUMER_RETRY_MAX_S": "0.3",
            "RETENTION_CONSUMER_RETRY_JITTER_S": "0.02",
        },
    )
    consumers = (*PRODUCT_SERVICES, flaky_service.SERVICE)
    async with (
        running_tracker(stack) as tracker,
        AckTail(stack.kafka) as acks,
        TopicTail(stack.kafka, stack.kafka.topics.dlq) as dlq,
    ):
        alive = all_of(stack.check_alive, tracker.check, acks.check, dlq.check)
        await start_services(stack)
        await stack.start_services(flaky_service.SERVICE)
        await wait_for(partial(has_registered, stack, consumers), timeout_s=30, what="flaky")
        await complete(run)
        await complete(relay)
        flaky = await _flaky_events(stack)
        plans = {
            event_id: flaky_service.plan(seed, entity_id, MAX_ATTEMPTS)
            for event_id, (entity_id, _) in flaky.items()
        }
        kinds = Counter(kind for kind, _ in plans.values())
        assert kinds["flaky"], kinds
        assert kinds["permanent"] + kinds["fatal"], kinds
        await wait_for(
            lambda: {(e, flaky_service.SERVICE) for e in flaky} <= acks.pairs(),
            timeout_s=120,
            what="the flaky service's acks",
            alive=alive,
        )
        await settle(stack, world, timeout_s=120, alive=alive)
        failing = kinds["permanent"] + kinds["fatal"]
        await wait_for(lambda: len(dlq.records) >= failing, timeout_s=30, what="dead letters")
        await stack.stop_services()
        await acks.caught_up()
        await dlq.caught_up()

    pairs = acks_by_pair(acks.records)
    problems = []
    for event_id, (kind, fails) in plans.items():
        [copy] = pairs[(event_id, flaky_service.SERVICE)]
        ack = copy.ack
        want = (
            (AckStatus.COMPLETED, fails + 1)
            if kind == "flaky"
            else (AckStatus.FAILED, 1 if kind == "fatal" else MAX_ATTEMPTS)
        )
        if (ack.status, ack.attempt) != want:
            problems.append(
                f"{kind} {event_id}: {ack.status} on attempt {ack.attempt}, want {want}"
            )
        if kind != "flaky" and not ack.detail.startswith(("TimeoutError", "PermissionError")):
            problems.append(f"{kind} {event_id}: failure detail {ack.detail!r}")
    assert problems == []
    effects = await _effects(stack)
    assert effects == Counter({e: 1 for e, (kind, _) in plans.items() if kind == "flaky"})

    letters = {}
    for record in dlq.records:
        # The event's own headers come along, `retention-batch` binary among them.
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
        assert headers[DlqHeader.REASON] == DlqReason.FAILED.value
        assert headers[DlqHeader.SERVICE] == flaky_service.SERVICE
        letters[decode(RetentionEvent, record.value).event_id] = int(headers[DlqHeader.ATTEMPTS])
    assert letters == {e: fails for e, (kind, fails) in plans.items() if kind != "flaky"}

    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    result = await run_cli(stack, "report", "--since", since, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    services = {s["service"]: s for s in document["services"]}
    assert services[flaky_service.SERVICE]["failed"] == failing
    per_policy = Counter(flaky[e][1] for e, (kind, _) in plans.items() if kind != "flaky")
    policies = {p["policy"]: p["failed"] for p in document["policies"]}
    assert {p: policies[p] for p in per_policy} == per_policy

    report = await check_invariants(
        stack,
        world,
        scenario="7-failing-handlers",
        seed=seed,
        faults=Counter({f"handler_{k}": v for k, v in kinds.items()}),
        allow_unfinished=True,
        entity_services=ENTITY_SERVICES_WITH_FLAKY,
    )
    report.assert_ok()
    print(
        f"[faults] flaky service: {dict(kinds)} of {len(plans)} events; "
        f"{sum(f for k, f in plans.values() if k == 'flaky')} retried attempts succeeded later, "
        f"{failing} failed acks, dead letters and report rows"
    )


async def test_intermittent_and_permanent_handler_failures(stack: Stack, tmp_path: Path) -> None:
    await failing_scenario(stack, tmp_path, seed=7007, per_category=3)


@pytest.mark.faults_full
async def test_handler_failures_at_scale(stack: Stack, tmp_path: Path) -> None:
    await failing_scenario(stack, tmp_path, seed=7777, per_category=12)
