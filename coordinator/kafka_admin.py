"""Creates the product's topics when they are missing; never alters existing ones.

`python -m coordinator.kafka_admin` exits 0 once all four topics exist and 1 naming the
missing ones otherwise: the relay's readiness check in docker-compose.yml, so services
start only after the coordinator created the topics they consume and produce to.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import suppress

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas import KafkaSettings

__all__ = ["ensure_topics", "missing_topics"]


async def ensure_topics(
    kafka: KafkaSettings, *, partitions: int = 6, replication_factor: int = 1
) -> list[str]:
    """Create whichever of the four topics are missing; return the names created."""
    topics = kafka.topics
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                # Registrations are keyed by service: only the latest per service matters.
                topic_configs={"cleanup.policy": "compact"} if name == topics.services else {},
            )
            for name in topics.all()
            if name not in existing
        ]
        if not wanted:
            return []
        # Another coordinator may create them between our list and create: that's fine.
        with suppress(TopicAlreadyExistsError):
            await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def missing_topics(kafka: KafkaSettings) -> list[str]:
    """Which of the four topics the cluster does not have."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [name for name in kafka.topics.all() if name not in existing]


def main() -> int:
    missing = asyncio.run(missing_topics(KafkaSettings()))
    if missing:
        print(f"missing topics: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
