"""Issue 5's integration proof with real processes: the tracker follows the three
service processes to `completed`; a fourth service that registers for `user` and never
acks drives new events through reminders to `overdue` (moved clock); a forged ack is
rejected and shows in `retention report`; `retention status` and `retention
certificate` show every service's ack for a real entity."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import func, select

from coordinator.clock import FrozenClock
from coordinator.store.tables import ack_ledger, event_status, expected_acks
from schemas import AckStatus
from services import EXAMPLES
from tests import keys
from tests.e2e import workload
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    AckTail,
    Stack,
    ack_problems,
    acks_by_pair,
    all_of,
    effect_problems,
    erasure_counts,
    event_states,
    has_registered,
    run_cli,
    running_relay,
    running_tracker,
    states_are,
    tracker_settings,
    wait_for,
)
from tests.integration.tracking_support import ack, produce, registration
from tests.outbox import insert_rows, outbox_rows

SILENT = "analytics"  # registers for `user`, never acknowledges
LATE_USERS = [f"late-u{i}" for i in range(4)]
REMINDER_INTERVAL = timedelta(hours=1)
MAX_REMINDERS = 2


async def test_tracker_completion_reminders_overdue_forgery_and_cli(stack: Stack) -> None:
    work = await workload.prepare(stack, users=40, customers=5, label="trk")
    await stack.start_services(*PRODUCT_SERVICES)
    # Frozen after the services registered: the registry must predate the publications.
    clock = FrozenClock(datetime.now(UTC))
    settings = tracker_settings(
        stack,
        reminder_interval_s=REMINDER_INTERVAL.total_seconds(),
        reminder_backoff=2.0,
        max_reminders=MAX_REMINDERS,
    )
    async with running_tracker(stack, clock=clock, settings=settings) as tracker:
        await wait_for(
            partial(has_registered, stack, PRODUCT_SERVICES), timeout_s=30, what="registrations"
        )
        async with running_relay(stack, clock=clock) as relay:
            # 1. Every event of the three real services ends `completed`.
            await wait_for(
                partial(states_are, stack, completed=work.events),
                timeout_s=60,
                what="all events completed",
                alive=all_of(stack.check_alive, tracker.check, relay.check),
            )
    # 2. The policy file gains a fourth service for `user` that never acknowledges (the
    # tracker restarts with it): new events wait for it, get reminded, then go overdue.
    silent = keys.declared(SILENT, {"user": ["delete", "anonymize"]})
    async with (
        running_tracker(
            stack, clock=clock, settings=settings, services=[*PRODUCT_SERVICES, silent]
        ) as tracker,
        AckTail(stack.kafka) as acks,
    ):
        alive = all_of(stack.check_alive, tracker.check, acks.check)
        async with running_relay(stack, clock=clock) as relay:
            alive = all_of(alive, relay.check)
            clock.advance(timedelta(hours=1))
            await produce(
                stack.kafka, stack.kafka.topics.services, [registration(SILENT, clock.now())]
            )
            await wait_for(
                partial(has_registered, stack, (*PRODUCT_SERVICES, SILENT)),
                timeout_s=30,
                what=f"{SILENT}'s registration",
            )
            clock.advance(timedelta(hours=1))
            late = await _publish_late_users(stack)
            await wait_for(
                partial(_answered, stack, late, completed=3 * len(late), pending=len(late)),
                timeout_s=60,
                what="the three services' acks for the late events",
                alive=alive,
            )
            for reminder, wait in enumerate((REMINDER_INTERVAL, 2 * REMINDER_INTERVAL), 1):
                clock.advance(wait)
                await wait_for(
                    partial(_reminded, stack, late, reminder),
                    timeout_s=30,
                    what=f"reminder {reminder}",
                    alive=alive,
                )
            assert await states_are(stack, completed=work.events, pending=len(late))
            # Each reminder reached the real services, which re-acked it.
            await wait_for(
                lambda: all(
                    acks.copies((e, s)) == 1 + MAX_REMINDERS
                    for e in late.values()
                    for s in PRODUCT_SERVICES
                ),
                timeout_s=30,
                what="the services' re-acks of both reminders",
                alive=alive,
            )
            clock.advance(timedelta(days=31))
            await wait_for(
                partial(states_are, stack, completed=work.events, overdue=len(late)),
                timeout_s=30,
                what="the late events overdue",
                alive=alive,
            )
            # Reminders did not stop after MAX_REMINDERS: one slow (daily) reminder is due
            # after the jump, however long it was, and the services re-ack it too.
            await wait_for(
                partial(_reminded, stack, late, MAX_REMINDERS + 1),
                timeout_s=30,
                what="the slow reminder",
                alive=alive,
            )
            await wait_for(
                lambda: all(
                    acks.copies((e, s)) == 2 + MAX_REMINDERS
                    for e in late.values()
                    for s in PRODUCT_SERVICES
                ),
                timeout_s=30,
                what="the services' re-acks of the slow reminder",
                alive=alive,
            )

            # 3. A forged ack from a service nobody declared is rejected.
            victim_user = work.users[1]
            victim_event = work.event_ids("user")[victim_user]
            forged = ack(victim_event, "mallory", victim_user, clock.now())
            await produce(stack.kafka, stack.kafka.topics.acks, [forged])
            await wait_for(
                lambda: _rejected(stack), timeout_s=30, what="the forged ack", alive=alive
            )
        codes = await stack.stop_services()
        await acks.caught_up()

    assert codes == dict.fromkeys(PRODUCT_SERVICES, 0)
    # The reminders re-published the late events: the services re-acked from their
    # idempotency store ("redelivered") and applied nothing twice.
    pairs = acks_by_pair(acks.records)
    expected = {
        **work.expected_acks(),
        **{(e, s): AckStatus.COMPLETED for e in late.values() for s in PRODUCT_SERVICES},
        (victim_event, "mallory"): AckStatus.COMPLETED,
    }
    assert ack_problems(pairs, expected, redelivery_from=PRODUCT_SERVICES) == []
    assert effect_problems(await erasure_counts(stack.services_url), pairs) == []
    assert all(
        len(pairs[(event_id, s)]) == 2 + MAX_REMINDERS
        for event_id in late.values()
        for s in PRODUCT_SERVICES
    )
    assert await event_states(stack) == Counter(completed=work.events, overdue=len(late))

    since = (clock.now() - timedelta(days=60)).date().isoformat()
    report = await _json(stack, "report", "--since", since, "--json")
    assert report["rejected_acks"] == [
        {"service": "mallory", "reason": "unknown_service", "count": 1}
    ]
    policies = {p["policy"]: p for p in report["policies"]}
    assert (policies["inactive_users"]["events"], policies["inactive_users"]["overdue"]) == (
        len(work.users) + len(late),
        len(late),
    )
    assert policies["order_records"]["completed"] == len(work.orders)
    services = {s["service"]: s for s in report["services"]}
    assert (services[SILENT]["events"], services[SILENT]["overdue"]) == (len(late), len(late))

    status = await _json(stack, "status", f"user:{victim_user}", "--json")
    [event] = status["events"]
    assert (event["event_id"], event["state"], event["rejected_acks"]) == (
        str(victim_event),
        "completed",
        1,
    )
    assert {s["service"]: (s["status"], s["records_affected"]) for s in event["services"]} == {
        service: ("completed", workload.rows_per_user(service)) for service in PRODUCT_SERVICES
    }
    assert all(s["acknowledged_at"] for s in event["services"])

    certificate = await run_cli(stack, "certificate", f"user:{victim_user}")
    assert certificate.returncode == 0, certificate.stderr
    document = json.loads(certificate.stdout)
    assert document["complete"] is True
    [proof] = document["events"]
    assert sorted(proof["expected_services"]) == sorted(PRODUCT_SERVICES)
    assert sorted(a["service"] for a in proof["acknowledgements"]) == sorted(PRODUCT_SERVICES)
    assert all(a["audit"]["hash"] for a in proof["acknowledgements"])
    assert proof["evidence"]["completed"] is not None

    overdue = await _json(stack, "status", f"user:{LATE_USERS[0]}", "--json")
    [late_event] = overdue["events"]
    assert (late_event["state"], late_event["reminders_sent"]) == ("overdue", MAX_REMINDERS + 1)
    assert {s["service"]: s["status"] for s in late_event["services"]}[SILENT] == "pending"
    unfinished = await run_cli(stack, "certificate", f"user:{LATE_USERS[0]}")
    assert unfinished.returncode == 1  # not complete: the document says so and the exit too
    assert json.loads(unfinished.stdout)["complete"] is False
    verify = await run_cli(stack, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def _publish_late_users(stack: Stack) -> dict[str, uuid.UUID]:
    """Seed and enqueue users the silent service is now expected for."""
    url = stack.services_url
    for example in EXAMPLES:
        if not example.faust:
            await example.seed(url, LATE_USERS)
    rows = outbox_rows(len(LATE_USERS), policy="inactive_users", entity_ids=LATE_USERS)
    engine = stack.engine()
    try:
        await insert_rows(engine, rows)
    finally:
        await engine.dispose()
    return {r["entity_id"]: r["event_id"] for r in rows}


async def _json(stack: Stack, *args: str) -> Any:
    result = await run_cli(stack, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


async def _answered(stack: Stack, events: dict[str, uuid.UUID], **statuses: int) -> bool:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(expected_acks.c.status, func.count())
                .where(expected_acks.c.event_id.in_(events.values()))
                .group_by(expected_acks.c.status)
            )
            return {row[0]: row[1] for row in rows} == statuses
    finally:
        await engine.dispose()


async def _reminded(stack: Stack, events: dict[str, uuid.UUID], times: int) -> bool:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            counts = await conn.scalars(
                select(event_status.c.reminders_sent).where(
                    event_status.c.event_id.in_(events.values())
                )
            )
            return sorted(counts) == [times] * len(events)
    finally:
        await engine.dispose()


async def _rejected(stack: Stack) -> bool:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(ack_ledger).where(~ack_ledger.c.accepted)
            )
            return count == 1
    finally:
        await engine.dispose()
