"""The invariant check itself: a clean run passes all seven; sabotage fails the right one."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, insert, select, update

from coordinator.store.db import make_engine
from coordinator.store.tables import ack_ledger, audit_log, expected_acks
from services import notifications
from tests.e2e.harness import Stack, running_tracker
from tests.faults.drive import complete, coordinator_processes, start_services
from tests.faults.invariants import check_invariants, settle
from tests.faults.world import USERS_POLICY, World, fault_users, user_tables


async def test_clean_run_passes_and_sabotage_is_caught(stack: Stack, world: World) -> None:
    run, relay = coordinator_processes(stack, world)
    async with running_tracker(stack) as tracker:
        await start_services(stack)
        await complete(run)
        await complete(relay)
        await settle(stack, world, timeout_s=60, alive=tracker.check)
    report = await check_invariants(stack, world, scenario="clean", seed=0, faults={})
    report.assert_ok()
    assert report.events == world.expected_events > 0

    # Each kind of damage shows up under its own invariant, and only there.
    held_user = sorted(world.held(USERS_POLICY))[0]
    young_user = sorted(world.young(USERS_POLICY))[0]
    engine, services = stack.engine(), make_engine(stack.services_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(fault_users).where(fault_users.c.id == held_user))
            await conn.execute(
                update(fault_users).where(fault_users.c.id == young_user).values(email="x")
            )
            await conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="eve"))
            # Completions the ledger never accepted (what a forged ack would have needed).
            done = (
                select(expected_acks.c.event_id)
                .where(expected_acks.c.status == "completed")
                .limit(1)
                .scalar_subquery()
            )
            await conn.execute(
                delete(ack_ledger).where(ack_ledger.c.event_id == done, ack_ledger.c.accepted)
            )
            # An expected ack of no tracked event (no foreign key forbids it since 0028).
            orphan = uuid.uuid4()
            await conn.execute(insert(expected_acks).values(event_id=orphan, service="billing"))
        async with services.begin() as conn:
            log = notifications.erasure_log
            first = (await conn.execute(select(log.c.event_id, log.c.user_id).limit(1))).one()
            await conn.execute(insert(log), [{**first._asdict(), "rows": 1}])
            # A held user's service rows gone, and an effect logged for a young user.
            rows = user_tables()[0]
            await conn.execute(delete(rows).where(rows.c.user_id == held_user))
            await conn.execute(
                insert(log), [{"event_id": uuid.uuid4(), "user_id": young_user, "rows": 1}]
            )
    finally:
        await engine.dispose()
        await services.dispose()
    broken = await check_invariants(
        stack, world, scenario="sabotaged", seed=0, faults={}, record=False
    )
    failed = {name for name, problems in broken.problems.items() if problems}
    assert failed == {"holds", "young", "once", "signed", "settled", "audit"}, broken.details()
    assert broken.problems["settled"] == [
        f"expected ack of billing for untracked event {orphan}"
    ], broken.details()
    assert any(
        p.startswith(f"{rows.name} of {held_user}: 0 of") for p in broken.problems["holds"]
    ), broken.details()
    assert (
        f"{notifications.SERVICE} applied an effect to user {young_user}"
        in (broken.problems["young"])
    ), broken.details()
