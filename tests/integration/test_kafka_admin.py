"""Topic creation and the readiness check docker-compose.yml runs against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from coordinator.kafka.admin import (
    TopicSpec,
    TopicsRefused,
    ensure_topics,
    kafka_admin,
    missing_topics,
)
from schemas import KafkaSettings
from tests import infra
from tests.infra import ROOT


def _ready(kafka: KafkaSettings) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "coordinator.kafka.admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_readiness_check_fails_until_the_topics_exist(kafka_settings: KafkaSettings) -> None:
    assert await missing_topics(kafka_settings) == list(kafka_settings.topics.all())
    before = _ready(kafka_settings)
    assert before.returncode == 1
    assert kafka_settings.topics.dlq in before.stderr

    assert sorted(await ensure_topics(kafka_settings, partitions=1)) == sorted(
        kafka_settings.topics.all()
    )
    # Created already: said so even while the broker's metadata does not list them yet.
    assert await ensure_topics(kafka_settings, partitions=1) == []
    await infra.wait_for_topics(kafka_settings)
    assert await missing_topics(kafka_settings) == []
    assert _ready(kafka_settings).returncode == 0


async def test_a_topic_the_broker_refuses_is_an_error_naming_it(
    kafka_settings: KafkaSettings,
) -> None:
    """The broker answers CreateTopics per topic and aiokafka does not raise on it: a
    refusal must not pass for a creation (serve would start, then find no topic)."""
    refused = f"{kafka_settings.topic_prefix}.three-replicas"
    kept = f"{kafka_settings.topic_prefix}.one-replica"
    async with kafka_admin(kafka_settings) as admin:
        with pytest.raises(TopicsRefused) as raised:
            await admin.create_topics([TopicSpec(kept, 1, 1), TopicSpec(refused, 1, 3)])
        assert [name for name, _ in raised.value.refused] == [refused]
        assert "replication factor" in str(raised.value).lower()
        # Made by the call that raised; created again, it exists already: not an error,
        # and not reported as created.
        assert await admin.create_topics([TopicSpec(kept, 1, 1)]) == []
        await admin.delete_topics([kept])


async def test_the_topics_of_prefixes_fixtures_left_go_in_one_batch(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What module and session fixtures made is deleted when the session ends (tests/
    conftest.py): every prefix left, and only those."""
    made = [infra.unique_topic_prefix("left") for _ in range(2)]
    kept = infra.unique_topic_prefix("kept")
    for prefix in [*made, kept]:
        kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
        await ensure_topics(kafka, partitions=1)
        await infra.wait_for_topics(kafka)
    left = list(made)
    monkeypatch.setattr(infra, "PREFIXES_MADE", left)
    await asyncio.to_thread(infra.delete_topics_made, kafka_bootstrap)
    assert left == []
    names: list[str] = []
    async with asyncio.timeout(30):
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                names = await admin.list_topics()
            finally:
                await admin.close()
            if not any(n.startswith(tuple(made)) for n in names):
                break
            await asyncio.sleep(0.2)
    assert set(KafkaSettings(topic_prefix=kept).topics.all()) <= set(names)
