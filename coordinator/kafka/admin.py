"""Topic administration: create the product's topics when missing, say which are missing.

`missing_topics` is the one "which topics are missing" check (readiness, /healthz,
benchmarks). `python -m coordinator.kafka.admin` exits 0 once all the product's topics exist and
1 naming the missing ones otherwise.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from coordinator import CoordinatorError
from schemas import KafkaSettings

__all__ = [
    "KafkaTopicAdmin",
    "TopicAdmin",
    "TopicSpec",
    "TopicsRefused",
    "delete_topics",
    "ensure_topics",
    "kafka_admin",
    "missing_topics",
]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    compacted: bool = False


class TopicsRefused(CoordinatorError, RuntimeError):
    """The broker refused to create these topics: (name, its reason) each. Its text names
    only topics and the broker's reasons, so it can be shown as it is."""

    def __init__(self, refused: Sequence[tuple[str, str]]) -> None:
        self.refused = list(refused)
        super().__init__(
            "could not create topics: " + ", ".join(f"{t} ({r})" for t, r in self.refused)
        )


class TopicAdmin(Protocol):
    """What the coordinator asks of the cluster about topics."""

    async def list_topics(self) -> set[str]: ...

    async def create_topics(self, topics: Sequence[TopicSpec]) -> list[str]:
        """Create these and return the names this call created. One that exists already
        (another client created it meanwhile) is no error and is not returned; any other
        refusal raises `TopicsRefused`."""

    async def delete_topics(self, names: Sequence[str]) -> None: ...


class KafkaTopicAdmin:
    """`TopicAdmin` backed by aiokafka's admin client (started by `kafka_admin`)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def list_topics(self) -> set[str]:
        return set(await self._client.list_topics())

    async def create_topics(self, topics: Sequence[TopicSpec]) -> list[str]:
        new = [
            NewTopic(
                t.name,
                num_partitions=t.partitions,
                replication_factor=t.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if t.compacted else {},
            )
            for t in topics
        ]
        # aiokafka hands back the broker's answer per topic without raising: a refusal
        # (no CREATE permission, a replication factor the cluster cannot meet) would
        # otherwise pass for a creation.
        response = await self._client.create_topics(new)
        created: list[str] = []
        refused: list[tuple[str, str]] = []
        for topic, code, *message in response.topic_errors:
            if code == 0:
                created.append(topic)
            # Another coordinator may create one between our list and create: fine. A
            # retriable answer (request timed out, not the controller) may still end in
            # a topic: not reported as created, left to /healthz and the next start.
            elif code != TopicAlreadyExistsError.errno and not for_code(code).retriable:
                reason = message[0] if message and message[0] else for_code(code).__name__
                refused.append((topic, reason))
        if refused:
            raise TopicsRefused(refused)
        return created

    async def delete_topics(self, names: Sequence[str]) -> None:
        await self._client.delete_topics(list(names))


@asynccontextmanager
async def kafka_admin(kafka: KafkaSettings) -> AsyncIterator[KafkaTopicAdmin]:
    client = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await client.start()
        yield KafkaTopicAdmin(client)
    finally:
        await client.close()


async def ensure_topics(
    kafka: KafkaSettings,
    *,
    partitions: int = 6,
    replication_factor: int = 1,
    admin: TopicAdmin | None = None,
) -> list[str]:
    """Create whichever of the product's topics are missing; return the names created."""
    if admin is None:
        async with kafka_admin(kafka) as opened:
            return await ensure_topics(
                kafka, partitions=partitions, replication_factor=replication_factor, admin=opened
            )
    topics = kafka.topics
    wanted = [
        # Registrations are keyed by service, hold sets by entity, erased entities by their
        # HMAC and audit heads by `coordinator`: only the latest record per key matters. The
        # audit topic is one partition: its records are one sequence.
        TopicSpec(
            name,
            1 if name == topics.audit else partitions,
            replication_factor,
            compacted=name in topics.compacted,
        )
        for name in await missing_topics(kafka, admin=admin)
    ]
    if not wanted:
        return []
    created = set(await admin.create_topics(wanted))
    return [t.name for t in wanted if t.name in created]


async def missing_topics(
    kafka: KafkaSettings,
    names: Iterable[str] | None = None,
    *,
    admin: TopicAdmin | None = None,
    present: bool = False,
) -> list[str]:
    """Which of `names` (default: the product's topics) the cluster does not have, in order;
    with `present`, which it has."""
    wanted = list(kafka.topics.all() if names is None else names)
    if admin is None:
        async with kafka_admin(kafka) as opened:
            existing = await opened.list_topics()
    else:
        existing = await admin.list_topics()
    return [name for name in wanted if (name in existing) is present]


async def delete_topics(kafka: KafkaSettings, names: Iterable[str]) -> list[str]:
    """Delete whichever of `names` exist (benchmarks clean up the shared broker)."""
    async with kafka_admin(kafka) as admin:
        existing = await missing_topics(kafka, names, admin=admin, present=True)
        if existing:
            await admin.delete_topics(existing)
    return existing


def main() -> int:
    missing = asyncio.run(missing_topics(KafkaSettings()))
    if missing:
        print(f"missing topics: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
