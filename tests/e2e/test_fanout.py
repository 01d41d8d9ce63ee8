"""Issues 4 and 9, end to end: outbox → relay → service processes (three on the core SDK,
`search_index` on Faust) → acks, on the real broker and database. Effects are counted in
the services' `erasure_log` tables, acks by reading the acks topic to its end after the
services stopped."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from functools import partial

from aiokafka.structs import ConsumerRecord

from consumer_sdk import DlqHeader, DlqReason
from schemas import AckStatus, RetentionEvent, decode
from tests.e2e import crm_service, workload
from tests.e2e.harness import (
    ALL_SERVICES,
    FAUST_SERVICE,
    PRODUCT_SERVICES,
    AckTail,
    Pair,
    Stack,
    TopicTail,
    ack_problems,
    acks_by_pair,
    all_of,
    effect_problems,
    erasure_counts,
    has_registered,
    last_completion_at,
    running_relay,
    running_tracker,
    states_are,
    wait_for,
)
from tests.outbox import insert_rows, outbox_rows
from tests.sdk.kafka_io import produce

N_USERS = 1000
CUSTOMERS = 50  # 100 orders anonymized


async def test_thousand_users_erased_everywhere_once(stack: Stack) -> None:
    work = await workload.prepare(stack, users=N_USERS, customers=CUSTOMERS)
    expected = work.expected_acks()
    await stack.start_services(*PRODUCT_SERVICES)
    async with (
        running_tracker(stack) as tracker,
        AckTail(stack.kafka) as acks,
    ):
        await wait_for(
            partial(has_registered, stack, PRODUCT_SERVICES),
            timeout_s=30,
            what="the three registrations",
        )

        alive = all_of(stack.check_alive, tracker.check, acks.check)

        started = time.time()
        async with running_relay(stack) as relay:
            await wait_for(
                lambda: expected.keys() <= acks.pairs(),
                timeout_s=90,
                what=f"{len(expected)} acks",
                alive=all_of(alive, relay.check),
                interval_s=0.1,
            )
        codes = await stack.stop_services()
        await acks.caught_up()
        pairs = acks_by_pair(acks.records)
        last_ack = max(min(c.timestamp_ms for c in pairs[p]) for p in expected) / 1000
        await wait_for(
            partial(states_are, stack, completed=work.events),
            timeout_s=30,
            what="every event completed in the tracker",
            alive=tracker.check,
        )
        completed_at = await last_completion_at(stack)

    assert codes == dict.fromkeys(PRODUCT_SERVICES, 0)
    assert ack_problems(pairs, expected) == []
    assert effect_problems(await erasure_counts(stack.services_url), pairs) == []
    assert await workload.data_problems(stack, work) == []
    assert Counter(c[0].ack.status for c in pairs.values()) == Counter(expected.values())
    elapsed = last_ack - started
    assert completed_at is not None
    lag = completed_at.timestamp() - last_ack
    print(
        f"\n[e2e] {work.events} entities ({N_USERS} users, {len(work.orders)} orders), "
        f"{len(expected)} acks from 3 service processes in {elapsed:.2f}s: "
        f"{work.events / elapsed:.0f} entities/s, {len(expected) / elapsed:.0f} acks/s; "
        f"tracker recorded the last completion {lag:.2f}s after the last ack"
    )


KILL_USERS = 300  # smaller than N_USERS: the restart waits out the dead member's session
KILL_CUSTOMERS = 10


async def test_sigkill_midway_then_restart_applies_each_effect_once(stack: Stack) -> None:
    work = await workload.prepare(stack, users=KILL_USERS, customers=KILL_CUSTOMERS)
    expected = work.expected_acks()
    victim_total = sum(1 for _, service in expected if service == "billing")
    # A partition's batch is acked all at once; small batches let the kill land mid-way.
    stack.add_service("billing", env={"RETENTION_CONSUMER_MAX_BATCH": "20"})
    await stack.start_services(*PRODUCT_SERVICES)
    victim = stack.processes["billing"]
    async with running_tracker(stack) as tracker, AckTail(stack.kafka) as acks:
        await wait_for(
            partial(has_registered, stack, PRODUCT_SERVICES), timeout_s=30, what="registrations"
        )
        async with running_relay(stack) as relay:
            alive = all_of(stack.check_alive, tracker.check, relay.check, acks.check)

            await wait_for(
                lambda: acks.acked_by("billing") >= victim_total // 4,
                timeout_s=60,
                what="billing to be a quarter through",
                alive=alive,
            )
            victim.kill()
            acked_at_kill = acks.acked_by("billing")
            killed = time.monotonic()
            victim.start()
            await victim.wait_ready(timeout_s=60)
            await wait_for(
                lambda: expected.keys() <= acks.pairs(),
                timeout_s=90,
                what=f"{len(expected)} acks",
                alive=alive,
                interval_s=0.1,
            )
            recovered = time.monotonic() - killed
        codes = await stack.stop_services()
        await acks.caught_up()
        pairs = acks_by_pair(acks.records)
        await wait_for(
            partial(states_are, stack, completed=work.events),
            timeout_s=30,
            what="every event completed in the tracker",
            alive=tracker.check,
        )

    assert 0 < acked_at_kill < victim_total, "the kill must land mid-way"
    assert codes == dict.fromkeys(PRODUCT_SERVICES, 0)
    assert ack_problems(pairs, expected, redelivery_from={"billing"}) == []
    assert effect_problems(await erasure_counts(stack.services_url), pairs) == []
    assert await workload.data_problems(stack, work) == []
    resent = sum(len(c) - 1 for (_, s), c in pairs.items() if s == "billing")
    print(
        f"\n[e2e] SIGKILL billing after {acked_at_kill}/{victim_total} acks; restarted, all "
        f"{len(expected)} acks in {recovered:.1f}s after the kill; {resent} billing acks "
        "re-sent for redelivered events (idempotency store), every effect applied once"
    )


# Four services, the Faust one killed: the issue-9 scenario. Smaller than N_USERS because
# the Faust adapter handles one event at a time and the restart waits out the dead
# member's 10 s session.
FAUST_KILL_USERS = 300
FAUST_KILL_CUSTOMERS = 5


async def test_sigkill_faust_service_midway_then_restart_applies_each_effect_once(
    stack: Stack,
) -> None:
    work = await workload.prepare(
        stack,
        users=FAUST_KILL_USERS,
        customers=FAUST_KILL_CUSTOMERS,
        label="fk",
        with_search_index=True,
    )
    expected = work.expected_acks()
    victim_total = sum(1 for _, service in expected if service == FAUST_SERVICE)
    await stack.start_services(*ALL_SERVICES)
    victim = stack.processes[FAUST_SERVICE]
    async with running_tracker(stack) as tracker, AckTail(stack.kafka) as acks:
        await wait_for(
            partial(has_registered, stack, ALL_SERVICES), timeout_s=30, what="registrations"
        )
        async with running_relay(stack) as relay:
            alive = all_of(stack.check_alive, tracker.check, relay.check, acks.check)
            await wait_for(
                lambda: acks.acked_by(FAUST_SERVICE) >= victim_total // 4,
                timeout_s=60,
                what=f"{FAUST_SERVICE} to be a quarter through",
                alive=alive,
                interval_s=0.01,
            )
            victim.kill()
            acked_at_kill = acks.acked_by(FAUST_SERVICE)
            killed = time.monotonic()
            victim.start()
            await victim.wait_ready(timeout_s=60)
            await wait_for(
                lambda: expected.keys() <= acks.pairs(),
                timeout_s=90,
                what=f"{len(expected)} acks",
                alive=alive,
                interval_s=0.1,
            )
            recovered = time.monotonic() - killed
        codes = await stack.stop_services()
        await acks.caught_up()
        pairs = acks_by_pair(acks.records)
        await wait_for(
            partial(states_are, stack, completed=work.events),
            timeout_s=30,
            what="every event completed in the tracker",
            alive=tracker.check,
        )

    assert 0 < acked_at_kill < victim_total, "the kill must land mid-way"
    assert codes == dict.fromkeys(ALL_SERVICES, 0)
    assert ack_problems(pairs, expected, redelivery_from={FAUST_SERVICE}) == []
    assert effect_problems(await erasure_counts(stack.services_url), pairs) == []
    assert await workload.data_problems(stack, work) == []
    resent = sum(len(c) - 1 for (_, s), c in pairs.items() if s == FAUST_SERVICE)
    print(
        f"\n[e2e] SIGKILL {FAUST_SERVICE} (Faust) after {acked_at_kill}/{victim_total} acks; "
        f"restarted, all {len(expected)} acks in {recovered:.1f}s after the kill; {resent} "
        "acks re-sent for redelivered events (idempotency store), every effect applied once"
    )


FAILING_ATTEMPTS = 3
CRM_ENV = {
    # Fast retries: the handler never succeeds, the test only needs to see it give up.
    "RETENTION_CONSUMER_MAX_ATTEMPTS": str(FAILING_ATTEMPTS),
    "RETENTION_CONSUMER_RETRY_INITIAL_S": "0.05",
    "RETENTION_CONSUMER_RETRY_MAX_S": "0.2",
    "RETENTION_CONSUMER_RETRY_JITTER_S": "0.01",
}
POISON = (b"user:poison", b'{"schema_version": "1.0", "event_id": "not-a-uuid"')


async def test_poison_record_and_failing_handler_end_in_dlq_while_the_rest_completes(
    stack: Stack,
) -> None:
    work = await workload.prepare(stack, users=60, customers=5, label="dlq")
    sessions = outbox_rows(
        4,
        policy="session_logs",
        entity_type=crm_service.ENTITY_TYPE,
        entity_ids=[f"dlq-s{i}" for i in range(4)],
    )
    engine = stack.engine()
    try:
        await insert_rows(engine, sessions)
    finally:
        await engine.dispose()
    expected: dict[Pair, AckStatus] = {
        **work.expected_acks(),
        **{(row["event_id"], crm_service.SERVICE): AckStatus.FAILED for row in sessions},
    }
    stack.add_service(crm_service.SERVICE, module="tests.e2e.crm_service", env=CRM_ENV)
    consumers = (*PRODUCT_SERVICES, crm_service.SERVICE)
    await stack.start_services(*consumers)
    # First on its partition: every service must step over it to reach the events behind.
    await produce(stack.kafka, [POISON])
    async with (
        running_tracker(stack) as tracker,
        AckTail(stack.kafka) as acks,
        TopicTail(stack.kafka, stack.kafka.topics.dlq) as dlq,
    ):
        await wait_for(
            partial(has_registered, stack, consumers), timeout_s=30, what="registrations"
        )
        async with running_relay(stack) as relay:
            await wait_for(
                lambda: expected.keys() <= acks.pairs() and len(dlq.records) >= 8,
                timeout_s=60,
                what="every ack and 8 dead letters",
                alive=all_of(stack.check_alive, tracker.check, relay.check),
                interval_s=0.1,
            )
        codes = await stack.stop_services()
        await acks.caught_up()
        await dlq.caught_up()
        await wait_for(
            partial(states_are, stack, completed=work.events, failed=len(sessions)),
            timeout_s=30,
            what="user and order events completed, session events failed",
            alive=tracker.check,
        )

    assert codes == dict.fromkeys(consumers, 0)
    pairs = acks_by_pair(acks.records)
    assert ack_problems(pairs, expected) == []
    assert effect_problems(await erasure_counts(stack.services_url), pairs) == []
    assert await workload.data_problems(stack, work) == []
    for row in sessions:
        [failed] = pairs[(row["event_id"], crm_service.SERVICE)]
        assert failed.ack.attempt == FAILING_ATTEMPTS
        # The class only (SPEC §13): the handler's message never leaves the service.
        assert failed.ack.detail == "ConnectionError"

    letters = [(_headers(r), r) for r in dlq.records]
    poisoned = sorted(h[DlqHeader.SERVICE] for h, _ in letters if _is(h, DlqReason.POISON))
    assert poisoned == sorted(consumers)  # each consumer group dead-letters it once
    assert {(r.key, r.value) for h, r in letters if _is(h, DlqReason.POISON)} == {POISON}
    failed_letters = [(h, r) for h, r in letters if _is(h, DlqReason.FAILED)]
    assert sorted(decode(RetentionEvent, r.value).event_id for _, r in failed_letters) == sorted(
        row["event_id"] for row in sessions
    )
    assert {(h[DlqHeader.SERVICE], h[DlqHeader.ATTEMPTS]) for h, _ in failed_letters} == {
        (crm_service.SERVICE, str(FAILING_ATTEMPTS))
    }
    assert len(letters) == len(consumers) + len(sessions)


def _headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    # The event's own headers come along, `retention-batch` binary among them.
    return {key: value.decode("utf-8", "replace") for key, value in record.headers}


def _is(headers: Mapping[str, str], reason: DlqReason) -> bool:
    return headers.get(DlqHeader.REASON) == reason.value
