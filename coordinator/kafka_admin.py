"""Creates the product's topics when they are missing; never alters existing ones."""

from __future__ import annotations

from contextlib import suppress

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas import KafkaSettings

__all__ = ["ensure_topics"]


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
