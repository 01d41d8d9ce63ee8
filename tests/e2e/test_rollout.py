"""Rolling a fleet over to signatures without a flag day (SPEC §9, docs/upgrading.md).

A mixed fleet on the real broker and database: notifications signs its acks,
preferences is an old-style deployment with no key. With `RETENTION_SIGNATURES=
permissive` on the coordinator, both count and the unsigned acks are counted. Switched
to `required`, the unsigned service's acks are rejected as `bad_signature`: its events
stay pending and say so in `retention status`, while the signed service's acks count.
"""

from __future__ import annotations

import json
from functools import partial

from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from coordinator.metrics import Metrics
from coordinator.store.tables import ack_ledger, expected_acks
from schemas.signing import SignatureMode, SignatureSettings
from tests.e2e.harness import (
    Stack,
    all_of,
    run_cli,
    running_relay,
    running_tracker,
    states_are,
    wait_for,
)
from tests.outbox import insert_rows, outbox_rows

SIGNED, UNSIGNED = "notifications", "preferences"
FLEET = (SIGNED, UNSIGNED)
DONE = ("completed", "not_found")


async def _count(stack: Stack, query: object) -> int:
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(query) or 0)  # type: ignore[call-overload]
    finally:
        await engine.dispose()


async def _publish(stack: Stack, start: int, count: int) -> list[str]:
    rows = outbox_rows(count, policy="inactive_users", entity_type="user", start=start)
    engine = stack.engine()
    try:
        await insert_rows(engine, rows)
    finally:
        await engine.dispose()
    return [row["entity_id"] for row in rows]


async def test_permissive_accepts_a_mixed_fleet_and_required_rejects_the_unsigned(
    stack: Stack,
) -> None:
    stack.add_service(SIGNED)
    # An old deployment: no key, tolerant of what it reads.
    stack.add_service(
        UNSIGNED,
        env={"RETENTION_SIGNATURES": "permissive", "RETENTION_SERVICE_SIGNING_KEY_FILE": ""},
    )
    await stack.start_services(*FLEET)
    registry = CollectorRegistry()
    permissive = SignatureSettings(mode=SignatureMode.PERMISSIVE)
    async with (
        running_tracker(
            stack, services=FLEET, signatures=permissive, metrics=Metrics(registry)
        ) as tracker,
        running_relay(stack) as relay,
    ):
        alive = all_of(stack.check_alive, tracker.check, relay.check)
        await _publish(stack, 0, 10)
        await wait_for(
            partial(states_are, stack, completed=10),
            timeout_s=60,
            what="10 events completed by both services",
            alive=alive,
        )
    unsigned = registry.get_sample_value(
        "retention_unsigned_records_total", {"topic": stack.kafka.topics.acks}
    )
    assert unsigned is not None
    assert unsigned >= 10

    required = SignatureSettings(mode=SignatureMode.REQUIRED)
    async with (
        running_tracker(stack, services=FLEET, signatures=required) as tracker,
        running_relay(stack) as relay,
    ):
        alive = all_of(stack.check_alive, tracker.check, relay.check)
        late = await _publish(stack, 100, 5)
        e, a = expected_acks.c, ack_ledger.c

        async def answered() -> bool:
            done = await _count(
                stack,
                select(func.count()).where(e.service == SIGNED, e.status.in_(DONE)),
            )
            refused = await _count(
                stack,
                select(func.count()).where(
                    ~a.accepted, a.service == UNSIGNED, a.reject_reason == "bad_signature"
                ),
            )
            return done == 15 and refused >= 5

        await wait_for(answered, timeout_s=60, what="signed acks in, unsigned refused", alive=alive)
        assert await states_are(stack, completed=10, pending=5)

    status = await run_cli(stack, "status", f"user:{late[0]}", "--json")
    assert status.returncode == 0, status.stderr
    [event] = json.loads(status.stdout)["events"]
    assert event["state"] == "pending"
    states = {s["service"]: s["status"] for s in event["services"]}
    assert states[UNSIGNED] == "pending"
    assert states[SIGNED] in DONE
    assert {(r["service"], r["reason"]) for r in event["rejected"]} == {(UNSIGNED, "bad_signature")}
