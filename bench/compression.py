"""Producer compression on our records: throughput, CPU and bytes per codec, real broker.

    python -m bench.compression [--events 30000] [--rounds 3] [--codecs none,gzip,snappy,lz4,zstd]

Encodes `--events` events the way the relay does (`schemas.encode`, byte for byte the
relay's fast encoder, ~330-byte JSON) and signs
them as it does (one Merkle tree per `RETENTION_RELAY_SIGNATURE_BATCH` records, SPEC §9), so
each record carries its ~400 bytes of signature and proof headers. Per codec and round,
on a fresh topic (codecs interleaved, rotated every round):

* `produce`: the relay's producer (`KafkaEventProducer.send_all`, the relay's settings with
  only the codec changed), claim-sized chunks, every acknowledgement awaited: events/s and
  CPU µs per event of this process (compressing is the producer's CPU);
* `consume`: an aiokafka consumer reading the topic back from the start: events/s and CPU
  µs per event (decompressing is every service's CPU);
* `bytes`: the record batches as the producer sends them and the broker stores them,
  built offline from the same records with aiokafka's batch builder, spread over the
  topic's 6 partitions by key as the producer does (512 KiB batches): bytes per event on
  the wire and on disk.

Prints one JSON document on stdout (medians with min–max, the load average) and, with
`--out DIR`, writes it to DIR/<UTC timestamp>.json. Needs the broker of `make infra-up`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bench.relay_throughput import events_of
from coordinator.kafka import admin
from coordinator.kafka.admin import ensure_topics
from coordinator.kafka.producer import KafkaEventProducer, OutgoingRecord
from coordinator.settings import RelaySettings
from schemas import KafkaSettings, Topics, encode
from schemas.signing import SignatureSettings
from tests import infra
from tests.outbox import outbox_rows

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
_CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_PREFIXES: list[str] = []
_PARTITIONS = 6
"""Partitions of each topic (`ensure_topics`' default, as the relay's topic has)."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def signed_records(count: int, relay: RelaySettings) -> list[OutgoingRecord]:
    records = [
        OutgoingRecord(e.key.encode(), encode(e), [("event_id", str(e.event_id).encode())])
        for e in events_of(outbox_rows(count, policy="session_logs"))
    ]
    signer = SignatureSettings().coordinator_signer()
    assert signer is not None, "every benchmark runs signed (tests/keys.py)"
    signer.sign_in_place(records, relay.signature_batch)
    return records


def batch_bytes(
    records: Sequence[OutgoingRecord], codec: str, batch_size: int, partitions: int
) -> int:
    """Bytes of the record batches the producer sends (and the broker stores): records
    spread over `partitions` by key as the producer does, one batch at a time each."""
    partitioner, ids = DefaultPartitioner(), list(range(partitions))
    by_partition: dict[int, list[OutgoingRecord]] = {}
    for record in records:
        by_partition.setdefault(partitioner(record.key, ids, ids), []).append(record)

    def builder() -> Any:
        return DefaultRecordBatchBuilder(2, _CODEC_IDS[codec], 0, -1, -1, 0, batch_size)

    total = 0
    for chunk in by_partition.values():
        current, offset = builder(), 0
        for record in chunk:
            args = (None, record.key, record.value, record.headers)
            if current.append(offset, *args) is None:
                total += len(current.build())
                current, offset = builder(), 0
                current.append(offset, *args)
            offset += 1
        total += len(current.build())
    return total


async def produce(
    kafka: KafkaSettings, relay: RelaySettings, records: Sequence[OutgoingRecord]
) -> tuple[float, float]:
    await ensure_topics(kafka, partitions=_PARTITIONS)
    # A fresh topic's leaders may not be known yet: retries would be timed as the codec's.
    await infra.wait_for_topics(kafka)
    producer = KafkaEventProducer(kafka, relay)
    await producer.start()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        futures = []
        for offset in range(0, len(records), relay.batch_size):
            chunk = records[offset : offset + relay.batch_size]
            async for delivery in producer.send_all(kafka.topics.events, chunk):
                futures.append(delivery.future)
        await asyncio.gather(*futures)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await producer.stop()


async def consume(kafka: KafkaSettings, count: int) -> tuple[float, float]:
    consumer = AIOKafkaConsumer(
        kafka.topics.events,
        **kafka.client_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
    try:
        seen, started, cpu = 0, time.perf_counter(), time.process_time()
        deadline = started + 120
        while seen < count:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"read back only {seen} of {count} records")
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(messages) for messages in batches.values())
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await consumer.stop()


def _summary(count: int, timings: list[tuple[float, float]]) -> dict[str, Any]:
    rates = sorted(count / wall for wall, _ in timings)
    return {
        "events_per_s": round(statistics.median(rates)),
        "min": round(rates[0]),
        "max": round(rates[-1]),
        "cpu_us_per_event": round(statistics.median(c for _, c in timings) / count * 1e6, 1),
    }


async def main(count: int, rounds: int, codecs: list[str]) -> dict[str, Any]:
    infra.load_infra_env()
    infra.use_test_keys()  # every benchmark runs signed
    base = KafkaSettings()
    tuned = RelaySettings()
    records = signed_records(count, tuned)
    value_bytes = sum(len(r.value) for r in records) / count
    header_bytes = sum(len(k) + len(v) for r in records for k, v in r.headers) / count
    say(f"{count} events: {value_bytes:.0f}-byte values, {header_bytes:.0f} bytes of headers")
    produced: dict[str, list[tuple[float, float]]] = {c: [] for c in codecs}
    consumed: dict[str, list[tuple[float, float]]] = {c: [] for c in codecs}
    loads: list[float] = []
    try:
        for n in range(rounds):
            for codec in codecs[n % len(codecs) :] + codecs[: n % len(codecs)]:
                prefix = f"bench.compression.{codec}.{uuid.uuid4().hex[:8]}.data.retention"
                _PREFIXES.append(prefix)
                kafka = base.model_copy(update={"topic_prefix": prefix})
                relay = tuned.model_copy(update={"compression": codec})
                loads.append(os.getloadavg()[0])
                produced[codec].append(await produce(kafka, relay, records))
                consumed[codec].append(await consume(kafka, count))
                say(
                    f"round {n} {codec}: produce {count / produced[codec][-1][0]:,.0f}/s, "
                    f"consume {count / consumed[codec][-1][0]:,.0f}/s"
                )
            await admin.delete_topics(base, [t for p in _PREFIXES for t in Topics(p).all()])
            _PREFIXES.clear()
    finally:
        await admin.delete_topics(base, [t for p in _PREFIXES for t in Topics(p).all()])
    return {
        "events": count,
        "rounds": rounds,
        "value_bytes_avg": round(value_bytes),
        "header_bytes_avg": round(header_bytes),
        "signature_batch": tuned.signature_batch,
        "load_average_1m": {"min": min(loads), "max": max(loads)},
        "codecs": {
            codec: {
                "produce": _summary(count, produced[codec]),
                "consume": _summary(count, consumed[codec]),
                "bytes_per_event": round(
                    batch_bytes(records, codec, tuned.max_batch_size, _PARTITIONS) / count, 1
                ),
            }
            for codec in codecs
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--out", type=Path, help="also write DIR/<UTC timestamp>.json")
    args = parser.parse_args()
    result = asyncio.run(main(args.events, args.rounds, args.codecs.split(",")))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        (args.out / f"{stamp}.json").write_text(text + "\n", encoding="utf-8")
