"""`ensure_topics` and `missing_topics` against the in-memory topic admin."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.kafka.admin import (
    KafkaTopicAdmin,
    TopicSpec,
    TopicsRefused,
    ensure_topics,
    missing_topics,
)
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


class _Answering:
    """An aiokafka admin client whose CreateTopics answers with these per-topic codes."""

    def __init__(self, answers: list[tuple[Any, ...]]) -> None:
        self.answers = answers

    async def create_topics(self, new: list[Any]) -> Any:
        return SimpleNamespace(topic_errors=self.answers)


async def test_only_topics_the_broker_created_are_reported_created() -> None:
    # 36: exists already; 7: the request timed out (retriable: it may exist in a moment).
    admin = KafkaTopicAdmin(
        _Answering([("a", 0, None), ("b", 36, "Topic 'b' already exists."), ("c", 7, None)])
    )
    specs = [TopicSpec(n, 1, 1) for n in "abc"]
    assert await admin.create_topics(specs) == ["a"]


async def test_a_refused_topic_raises_naming_each_refused_topic_and_its_reason() -> None:
    admin = KafkaTopicAdmin(
        _Answering([("a", 0, None), ("b", 29, None), ("c", 38, "Replication factor: 3.")])
    )
    with pytest.raises(TopicsRefused) as raised:
        await admin.create_topics([TopicSpec(n, 1, 1) for n in "abc"])
    assert raised.value.refused == [
        ("b", "TopicAuthorizationFailedError"),
        ("c", "Replication factor: 3."),
    ]
    assert str(raised.value) == (
        "could not create topics: b (TopicAuthorizationFailedError), c (Replication factor: 3.)"
    )
