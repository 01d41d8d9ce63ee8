"""SPEC §9 "Kafka transport": the whole fan-out over SASL_SSL with ACLs enforced.

A private broker (tests/secure_kafka.py) authenticates every client with SCRAM-SHA-512
over TLS and enforces the ACLs of coordinator/kafka/acls.py. The coordinator's principal
publishes through the relay and records acks with the tracker; the `billing` principal
consumes with the SDK in this process, `search_index` with the Faust adapter in its own;
both register and ack. Then the point of the ACLs: a service may not write the events
topic, so it cannot forge an event at the transport level.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from consumer_sdk import ConsumerSettings, RetentionConsumer, RetentionEvent
from coordinator.kafka.admin import ensure_topics
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings, TrackerSettings
from coordinator.store.db import make_engine
from schemas import decode
from schemas.signing import SignatureSettings
from tests import declared, infra
from tests.e2e.harness import (
    Stack,
    all_of,
    has_registered,
    running_relay,
    running_tracker,
    states_are,
    wait_for,
)
from tests.outbox import insert_rows, outbox_rows, read_records
from tests.secure_kafka import SecuredKafka, secured_kafka

pytestmark = pytest.mark.slow

SERVICE = "billing"
FAUST_SERVICE = "search_index"
EVENTS = 30


@pytest.fixture(scope="module")
def broker() -> Iterator[SecuredKafka]:
    with secured_kafka([SERVICE, FAUST_SERVICE]) as secured:
        admin = secured.settings("admin")
        asyncio.run(ensure_topics(admin, partitions=2))
        asyncio.run(infra.wait_for_topics(admin))
        yield secured


@pytest.fixture
async def services_db(postgres_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(postgres_url, "kafka_security_svc")
    yield url
    await infra.drop_database(url)


async def test_fan_out_over_sasl_ssl(
    broker: SecuredKafka, coordinator_db: str, services_db: str, tmp_path: Path
) -> None:
    coordinator = broker.settings("coordinator")
    assert coordinator.security_protocol == "SASL_SSL"
    stack = Stack(coordinator, coordinator_db, services_db, tmp_path)
    # The Faust service's process gets its own principal's settings over the coordinator's.
    stack.add_service(FAUST_SERVICE, env=broker.settings(FAUST_SERVICE).environ())
    handled: list[str] = []
    billing = RetentionConsumer(
        SERVICE,
        kafka=broker.settings(SERVICE),
        settings=ConsumerSettings(database_url=None, poll_timeout_s=0.2),
        # Signed with its own key, the one its declaration names.
        signatures=SignatureSettings(service_signing_key_file=declared.key_file(SERVICE)),
    )

    @billing.on_delete("user")
    async def delete_user(event: RetentionEvent) -> int:
        handled.append(event.entity_id)
        return 1

    rows = outbox_rows(EVENTS)
    # The tracker's group is the one the ACLs name (RETENTION_TRACKER_GROUP_ID).
    async with running_tracker(
        stack,
        settings=TrackerSettings(poll_interval_s=0.05),
        services=[SERVICE, FAUST_SERVICE],
    ) as tracker:
        await billing.start()
        try:
            await stack.start_services(FAUST_SERVICE)
            await wait_for(
                partial(has_registered, stack, [SERVICE, FAUST_SERVICE]),
                timeout_s=30,
                what="both registrations, read by the tracker",
                alive=all_of(tracker.check, stack.check_alive),
            )
            engine = stack.engine()
            try:
                await insert_rows(engine, rows)
            finally:
                await engine.dispose()
            async with running_relay(stack) as relay:
                await wait_for(
                    partial(states_are, stack, completed=EVENTS),
                    timeout_s=60,
                    what=f"{EVENTS} events completed by both services' acks",
                    alive=all_of(tracker.check, relay.check, stack.check_alive),
                )
        finally:
            await billing.stop()
            await stack.stop_services()
    assert sorted(handled) == sorted(row["entity_id"] for row in rows)


async def test_the_librdkafka_relay_publishes_over_sasl_ssl(
    broker: SecuredKafka, coordinator_db: str
) -> None:
    # RETENTION_RELAY_PRODUCER=confluent gets its TLS and SCRAM login from the same settings.
    coordinator = broker.settings("coordinator")
    engine = make_engine(coordinator_db)
    try:
        rows = outbox_rows(EVENTS, start=7000)
        await insert_rows(engine, rows)
        relay = OutboxRelay(engine, coordinator, settings=RelaySettings(producer="confluent"))
        async with relay:
            assert await relay.drain(timeout_s=60) == EVENTS
    finally:
        await engine.dispose()
    admin = broker.settings("admin")
    records = await read_records(admin, admin.topics.events, expected=EVENTS)
    ours = {row["event_id"] for row in rows}
    verifier = SignatureSettings().coordinator_verifier()
    mine = [r for r in records if r.value and decode(RetentionEvent, r.value).event_id in ours]
    assert {decode(RetentionEvent, r.value).event_id for r in mine} == ours
    assert all(verifier.verify(r.key, r.value, r.headers).valid for r in mine)


async def test_only_the_coordinator_may_write_events(broker: SecuredKafka) -> None:
    topics = broker.settings("admin").topics
    forger = AIOKafkaProducer(
        **broker.settings(SERVICE).client_kwargs(), acks="all", enable_idempotence=True
    )
    await forger.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await forger.send_and_wait(topics.events, b"{}", key=b"forged")
        # Its own topics it may write: the refusal is the ACL, not the connection.
        await forger.send_and_wait(topics.dlq, b"{}", key=b"allowed")
    finally:
        await forger.stop()
    publisher = AIOKafkaProducer(**broker.settings("coordinator").client_kwargs(), acks="all")
    await publisher.start()
    try:
        await publisher.send_and_wait(topics.events, b"{}", key=b"genuine")
    finally:
        await publisher.stop()


async def test_a_service_reads_no_acks_and_joins_no_other_group(broker: SecuredKafka) -> None:
    topics = broker.settings("admin").topics
    snoop = AIOKafkaConsumer(
        topics.acks,
        **broker.settings(SERVICE).client_kwargs(),
        group_id=f"retention.{SERVICE}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await snoop.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(snoop.getmany(timeout_ms=5000), 20)
    finally:
        await snoop.stop()
    intruder = AIOKafkaConsumer(
        topics.events,
        **broker.settings(SERVICE).client_kwargs(),
        group_id=TrackerSettings().group_id,
        enable_auto_commit=False,
    )
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            await asyncio.wait_for(intruder.start(), 20)
    finally:
        await intruder.stop()


async def test_a_wrong_password_is_refused(broker: SecuredKafka) -> None:
    impostor = AIOKafkaProducer(
        **broker.settings(SERVICE, RETENTION_KAFKA_SASL_PASSWORD="guessed").client_kwargs()
    )
    with pytest.raises(KafkaConnectionError):
        await impostor.start()
    await impostor.stop()
