"""Verification end to end (SPEC §12, issue 20 item 4): real service processes, the real
broker, relay and tracker in-process. Billing unlinks a deleted user's orders and counts
them when asked to verify; a late import re-inserts one, a sampled verify catches it and
the entity shows `resurrected` in status and certificate; a later delete completes it
again. A test-only `legacy` service has no verify handler: its `unsupported` never counts
as verified.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import func, insert, select

from coordinator.copies.verification.request import sample_all
from coordinator.policy.model import Policy
from services import billing
from services._shared import engine_for
from tests.e2e.harness import (
    Stack,
    all_of,
    event_states,
    has_registered,
    run_cli,
    running_relay,
    running_tracker,
    wait_for,
)
from tests.outbox import insert_rows, outbox_rows

USER = "vu-1"
SERVICES = ["billing", "legacy"]


def _policy() -> Policy:
    return Policy.model_validate(
        {
            "name": "accounts",
            "table": "accounts",
            "entity_type": "user",
            "timestamp_column": "created_at",
            "retention": "30d",
            "action": "delete",
            "legal_basis": "Contract ended",
            "fan_out": True,
            "verify_sample": 1.0,
            "verify_after": "1m",
        }
    )


async def _status(stack: Stack) -> dict[str, Any]:
    done = await run_cli(stack, "status", f"user:{USER}", "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


async def _answered(stack: Stack, count: int) -> bool:
    verifications = (await _status(stack))["verifications"]
    return len(verifications) == count and all(
        a["status"] != "pending" for v in verifications for a in v["services"]
    )


async def test_a_sampled_verify_catches_a_reinserted_row(stack: Stack) -> None:
    await billing.seed(stack.services_url, [USER])
    stack.add_service("legacy", module="tests.e2e.legacy_service")
    await stack.start_services(*SERVICES)
    engine = stack.engine()
    try:
        async with (
            running_tracker(stack, services=SERVICES) as tracker,
            running_relay(stack) as relay,
        ):
            alive = all_of(stack.check_alive, tracker.check, relay.check)
            await wait_for(
                partial(has_registered, stack, SERVICES), timeout_s=30, what="registrations"
            )
            await insert_rows(engine, outbox_rows(1, policy="accounts", entity_ids=[USER]))
            await wait_for(
                lambda: _completed(stack, 1), timeout_s=60, what="the deletion", alive=alive
            )

            # A late import brings one of the user's orders back.
            await _reinsert_order(stack)

            # The sampler (what `serve` runs every verify_interval_s) picks the deletion.
            later = datetime.now(UTC) + timedelta(minutes=2)
            [asked] = await sample_all(engine, [_policy()], now=later)
            assert sorted(asked.services) == SERVICES
            # Each deletion is considered once.
            assert await sample_all(engine, [_policy()], now=later) == []
            await wait_for(
                partial(_answered, stack, 1), timeout_s=60, what="verify answers", alive=alive
            )
            status = await _status(stack)
            [event] = status["events"]
            assert event["state"] == "resurrected"
            answers = {s["service"]: s["status"] for s in event["services"]}
            assert answers == {"billing": "still_present", "legacy": "not_found"}
            [verification] = status["verifications"]
            assert verification["trigger"] == "sample"
            assert verification["outcome"] == "still_present"
            assert {
                a["service"]: (a["status"], a["records_affected"]) for a in verification["services"]
            } == {"billing": ("still_present", 1), "legacy": ("unsupported", 0)}
            certificate = await run_cli(stack, "certificate", f"user:{USER}")
            assert certificate.returncode == 1
            document = json.loads(certificate.stdout)
            assert document["complete"] is False
            assert document["resurrected"] is True
            assert await event_states(stack) == {"resurrected": 1}

            # A later delete is acked by billing: the entity is completed again.
            await insert_rows(engine, outbox_rows(1, policy="accounts", entity_ids=[USER]))
            await wait_for(
                lambda: _completed(stack, 2), timeout_s=60, what="the second deletion", alive=alive
            )
            [first, second] = (await _status(stack))["events"]
            assert first["state"] == second["state"] == "completed"
            assert {s["service"]: s["status"] for s in first["services"]}["billing"] == "completed"

            # On demand, from the CLI: billing now holds nothing; legacy can't say.
            asked_now = await run_cli(stack, "verify", f"user:{USER}", "--by", "tester", "--json")
            assert asked_now.returncode == 0, asked_now.stderr
            await wait_for(
                partial(_answered, stack, 2), timeout_s=60, what="on-demand answers", alive=alive
            )
            [last] = [
                v for v in (await _status(stack))["verifications"] if v["trigger"] == "on_demand"
            ]
            assert last["requested_by"].startswith("tester")
            assert {a["service"]: a["status"] for a in last["services"]} == {
                "billing": "verified",
                "legacy": "unsupported",
            }
            # `unsupported` is no proof: the verify event is not `verified`.
            assert last["outcome"] == "incomplete"
        # Verify events never reached a delete handler: billing applied two deletions.
        assert await _billing_erasures(stack) == 2
    finally:
        await engine.dispose()


async def _completed(stack: Stack, count: int) -> bool:
    return (await event_states(stack)).get("completed", 0) == count and not (
        await event_states(stack)
    ).get("pending", 0)


async def _reinsert_order(stack: Stack) -> None:
    engine = engine_for(stack.services_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(billing.orders).values(
                    id="late-import-1",
                    user_id=USER,
                    customer_name="Customer again",
                    email="again@example.com",
                    address="1 Example Street",
                    amount_cents=1000,
                    currency="EUR",
                    ordered_at=datetime.now(UTC),
                )
            )
    finally:
        await engine.dispose()


async def _billing_erasures(stack: Stack) -> int:
    engine = engine_for(stack.services_url)
    try:
        async with engine.connect() as conn:
            log = billing.erasure_log
            return int(
                (
                    await conn.execute(select(func.count()).where(log.c.entity_id == USER))
                ).scalar_one()
            )
    finally:
        await engine.dispose()
