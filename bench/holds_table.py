"""What the holds table costs a service (SPEC §11): the read at start, and the read to the
end before each batch of events.

    python -m bench.holds_table [--entities 10000] [--rounds 200] [--partitions 6]

On its own topic prefix of the broker in `RETENTION_KAFKA_BOOTSTRAP_SERVERS`: publishes
`--entities` signed hold sets (as the coordinator signs them, one Merkle root per 1000),
then measures `HoldReader.start` (the whole topic from its start, verified) and, with
nothing new, `HoldReader.catch_up` `--rounds` times (one end-offsets request: what the
SDK adds to each batch). Deletes the topic afterwards. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consumer_sdk._internal.holds import HoldReader, HoldTable, kafka_hold_source
from consumer_sdk._internal.trust import Trust
from consumer_sdk.metrics import ConsumerMetrics
from coordinator.kafka.admin import TopicSpec, delete_topics, kafka_admin
from coordinator.kafka.clients import KafkaPublisher
from coordinator.purge.hold_topic import records_for
from schemas import KafkaSettings
from schemas.signing import SignatureMode, Signer, Verifier


async def measure(entities: int, rounds: int, partitions: int) -> dict[str, object]:
    kafka = KafkaSettings(
        bootstrap_servers=os.environ.get("RETENTION_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"),
        topic_prefix=f"bench.holds.{uuid.uuid4().hex[:8]}.data.retention",
    )
    private = Ed25519PrivateKey.generate()
    signer = Signer(private)
    async with kafka_admin(kafka) as admin:
        await admin.create_topics([TopicSpec(kafka.topics.holds, partitions, 1, compacted=True)])
    try:
        publisher = KafkaPublisher(kafka)
        await publisher.start()
        try:
            now = datetime.now(UTC)
            for start in range(0, entities, 1000):
                keys = [("user", str(i)) for i in range(start, min(start + 1000, entities))]
                sets = {k: ["case-1"] for k in keys}
                await publisher.publish(
                    kafka.topics.holds, records_for(sets, keys, now=now, signer=signer)
                )
        finally:
            await publisher.stop()
        metrics = ConsumerMetrics()
        trust = Trust(
            "bench", SignatureMode.REQUIRED, None, Verifier([private.public_key()]), metrics
        )
        reader = HoldReader(kafka_hold_source(kafka), HoldTable(trust), read_timeout_s=120)
        started = time.perf_counter()
        await reader.start(timeout_s=60)
        start_s = time.perf_counter() - started
        assert len(reader.table) == entities, len(reader.table)
        samples = []
        for _ in range(rounds):
            began = time.perf_counter()
            await reader.catch_up()
            samples.append((time.perf_counter() - began) * 1000)
        await reader.stop()
    finally:
        await delete_topics(kafka, [kafka.topics.holds])
    samples.sort()
    return {
        "bench": "holds_table",
        "entities": entities,
        "partitions": partitions,
        "start_s": round(start_s, 3),
        "catch_up_ms_median": round(statistics.median(samples), 3),
        "catch_up_ms_p95": round(samples[int(len(samples) * 0.95) - 1], 3),
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.entities, args.rounds, args.partitions))))


if __name__ == "__main__":
    main()
