"""Outbox relay throughput against aiokafka's raw producer, on the same records.

    python -m bench.relay_throughput [--rows 100000] [--variants]

Fills the outbox of a scratch database with `--rows` rows (~330-byte events), times
`OutboxRelay.drain()`, and times a bare aiokafka producer (same options) sending the
same records with every future collected and gathered once: the ceiling for anything
that publishes through aiokafka in one Python process. `--variants` repeats the relay
run with other producer settings and claim sizes, to justify the defaults. Prints one
JSON document on stdout; progress on stderr. Needs the broker and PostgreSQL of
`make infra-up`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from coordinator.db import make_engine
from coordinator.kafka_admin import ensure_topics
from coordinator.kafka_producer import producer_options
from coordinator.migrate import upgrade
from coordinator.relay import OutboxRelay
from coordinator.settings import RelaySettings
from schemas import EventType, KafkaSettings, RetentionEvent, Topics, encode
from tests import infra
from tests.outbox import clear_outbox, insert_rows, outbox_rows

VARIANTS: dict[str, dict[str, Any]] = {
    "aiokafka defaults (linger 0, 16 KiB, no compression)": {
        "linger_ms": 0,
        "max_batch_size": 16 * 1024,
        "compression": "none",
    },
    "tuned, no compression": {"compression": "none"},
    "tuned, gzip": {"compression": "gzip"},
    "tuned, zstd": {"compression": "zstd"},
    "tuned, claim 500": {"batch_size": 500},
    "tuned, claim 2000": {"batch_size": 2000},
    "tuned, claim 5000": {"batch_size": 5000},
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def events_of(rows: list[dict[str, Any]]) -> list[RetentionEvent]:
    return [
        RetentionEvent(
            event_id=row["event_id"],
            type=EventType(row["event_type"]),
            entity_type=row["entity_type"],
            entity_id=row["entity_id"],
            policy=row["policy"],
            legal_basis=row["legal_basis"],
            initiated_at=row["initiated_at"],
            deadline=row["deadline"],
            fields=row["fields"],
            run_id=row["run_id"],
        )
        for row in rows
    ]


async def raw_send(
    kafka: KafkaSettings, relay: RelaySettings, events: list[RetentionEvent]
) -> float:
    """Seconds for a bare producer to send and have acknowledged every record."""
    await ensure_topics(kafka)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), **producer_options(relay))
    await producer.start()
    try:
        # Encoding is part of the work the relay does too.
        started, cpu = time.perf_counter(), time.process_time()
        futures = [
            await producer.send(
                kafka.topics.events,
                encode(event),
                key=event.key.encode(),
                headers=[("event_id", str(event.event_id).encode())],
            )
            for event in events
        ]
        await asyncio.gather(*futures)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await producer.stop()


async def relay_drain(
    url: str, kafka: KafkaSettings, relay: RelaySettings, rows: list[dict[str, Any]]
) -> tuple[float, float]:
    """Wall and CPU seconds of `drain()` over `rows`."""
    await ensure_topics(kafka)
    engine = make_engine(url)
    try:
        await clear_outbox(engine)
        await insert_rows(engine, rows)
        async with engine.connect() as conn:
            await conn.exec_driver_sql("ANALYZE retention_outbox")
        async with OutboxRelay(engine, kafka, settings=relay) as relay_:
            started, cpu = time.perf_counter(), time.process_time()
            published = await relay_.drain()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert published == len(rows), (published, len(rows))
        return elapsed, cpu
    finally:
        await engine.dispose()


PREFIXES: list[str] = []


def prefix(label: str) -> str:
    PREFIXES.append(f"bench.relay.{label}.{uuid.uuid4().hex[:8]}.data.retention")
    return PREFIXES[-1]


async def delete_topics(kafka: KafkaSettings) -> None:
    """The broker is shared: remove the bench's topics (millions of records) afterwards."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        names = [t for p in PREFIXES for t in Topics(p).all()]
        existing = set(await admin.list_topics())
        await admin.delete_topics([t for t in names if t in existing])
    finally:
        await admin.close()


async def main(count: int, variants: bool) -> dict[str, Any]:
    infra.load_infra_env()
    base = KafkaSettings()
    url = await infra.create_database(infra.database_url(), "bench_relay")
    try:
        await upgrade(url)
        tuned = RelaySettings()
        rows = outbox_rows(count, policy="session_logs")
        events = events_of(rows)
        record_bytes = sum(len(encode(e)) for e in events) / len(events)
        say(f"{count} events of {record_bytes:.0f} bytes on average")

        raw_s, raw_cpu = await raw_send(
            base.model_copy(update={"topic_prefix": prefix("raw")}), tuned, events
        )
        say(f"raw aiokafka producer: {count / raw_s:,.0f} events/s, CPU {raw_cpu:.2f}s")
        relay_s, relay_cpu = await relay_drain(
            url, base.model_copy(update={"topic_prefix": prefix("relay")}), tuned, rows
        )
        say(
            f"relay drain: {count / relay_s:,.0f} events/s ({relay_s / raw_s:.2f}x raw time), "
            f"CPU {relay_cpu:.2f}s"
        )
        result: dict[str, Any] = {
            "events": count,
            "record_bytes_avg": round(record_bytes),
            "settings": tuned.model_dump(),
            "raw_producer_events_per_s": round(count / raw_s),
            "relay_events_per_s": round(count / relay_s),
            "relay_vs_raw": round(raw_s / relay_s, 3),
            "raw_cpu_s": round(raw_cpu, 2),
            "relay_cpu_s": round(relay_cpu, 2),
            "variants": {},
        }
        if variants:
            for name, change in VARIANTS.items():
                settings = tuned.model_copy(update=change)
                fresh = outbox_rows(count, policy="session_logs")
                seconds, cpu = await relay_drain(
                    url,
                    base.model_copy(update={"topic_prefix": prefix("variant")}),
                    settings,
                    fresh,
                )
                say(f"variant {name}: {count / seconds:,.0f} events/s, CPU {cpu:.2f}s")
                result["variants"][name] = {
                    "events_per_s": round(count / seconds),
                    "cpu_s": round(cpu, 2),
                }
        return result
    finally:
        await infra.drop_database(url)
        await delete_topics(base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--variants", action="store_true", help="also time other settings")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.variants)), indent=2))
