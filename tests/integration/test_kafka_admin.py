"""Topic creation and the readiness check docker-compose.yml runs against the real broker."""

from __future__ import annotations

import os
import subprocess
import sys

from coordinator.kafka.admin import ensure_topics, missing_topics
from schemas import KafkaSettings
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
    assert await ensure_topics(kafka_settings, partitions=1) == []
    assert await missing_topics(kafka_settings) == []
    assert _ready(kafka_settings).returncode == 0
