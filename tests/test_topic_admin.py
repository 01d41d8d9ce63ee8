"""`ensure_topics` and `missing_topics` against the in-memory topic admin."""

from __future__ import annotations

from coordinator.kafka.admin import TopicSpec, ensure_topics, missing_topics
from coordinator.kafka.memory import MemoryTopicAdmin
from schemas import KafkaSettings

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="t.admin")
TOPICS = KAFKA.topics


async def test_only_missing_topics_are_created_and_registrations_and_holds_are_compacted() -> None:
    admin = MemoryTopicAdmin({TOPICS.events, "unrelated"})
    missing = [TOPICS.acks, TOPICS.services, TOPICS.dlq, TOPICS.holds, TOPICS.erased, TOPICS.audit]
    assert await missing_topics(KAFKA, admin=admin) == missing
    created = await ensure_topics(KAFKA, partitions=3, replication_factor=1, admin=admin)
    assert created == missing
    assert admin.created == [
        TopicSpec(TOPICS.acks, 3, 1),
        TopicSpec(TOPICS.services, 3, 1, compacted=True),
        TopicSpec(TOPICS.dlq, 3, 1),
        TopicSpec(TOPICS.holds, 3, 1, compacted=True),
        # The suppression list keeps the latest record per erased entity (SPEC §12).
        TopicSpec(TOPICS.erased, 3, 1, compacted=True),
        TopicSpec(TOPICS.audit, 1, 1, compacted=True),
    ]
    assert await ensure_topics(KAFKA, admin=admin) == []
    assert await missing_topics(KAFKA, admin=admin) == []


async def test_named_topics_missing_or_present() -> None:
    admin = MemoryTopicAdmin({TOPICS.events})
    names = [TOPICS.events, TOPICS.acks]
    assert await missing_topics(KAFKA, names, admin=admin) == [TOPICS.acks]
    assert await missing_topics(KAFKA, names, admin=admin, present=True) == [TOPICS.events]
