"""Kafka-side tools of the input scenarios: replaying a group, following the tracker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from schemas import KafkaSettings
from tests.e2e.harness import Stack, tracker_settings

__all__ = ["add_services_in_own_groups", "rewind_group", "tracker_caught_up"]


def add_services_in_own_groups(stack: Stack, services: Sequence[str]) -> dict[str, str]:
    """Add the services with consumer groups of this stack's own; service → group.

    The SDK's default group, `retention.<service>`, is the same for every topic prefix,
    so concurrent stacks on one broker share it, and a group can only be rewound while
    it has no members at all.
    """
    groups = {service: f"{stack.kafka.topic_prefix}.{service}" for service in services}
    for service, group in groups.items():
        stack.add_service(service, env={"RETENTION_CONSUMER_GROUP_ID": group})
    return groups


async def _partitions(kafka: KafkaSettings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        described: list[dict[str, Any]] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(TopicPartition(topic, p["partition"]) for d in described for p in d["partitions"])


async def rewind_group(kafka: KafkaSettings, group: str, topic: str) -> int:
    """Commit offset 0 on every partition of `topic` for the (stopped) `group`.

    The next member of the group re-reads the topic from its first record: a replay.
    Returns how many records the group will see again.
    """
    partitions = await _partitions(kafka, topic)
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in partitions})
        return sum(ends.values())
    finally:
        await consumer.stop()


async def tracker_caught_up(stack: Stack) -> bool:
    """Whether the tracker committed every record now on the acks topic."""
    kafka = stack.kafka
    partitions = await _partitions(kafka, kafka.topics.acks)
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(tracker_settings(stack).group_id)
        ends = await consumer.end_offsets(partitions)
        return all(tp in committed and committed[tp].offset >= end for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()
