"""Outbox relay throughput against bare aiokafka and Kafka's own producer, same records.

    python -m bench.relay_throughput [--rows 100000] [--rounds 3] [--variants]
                                     [--producer-performance [--warmup 200000]]

Fills the outbox of a scratch database with `--rows` events (~330 bytes each) in purge
batches of 5,000 (the policies' default batch size) and, per round, times on fresh
topics (interleaved, rotated every round):

* `relay`: `OutboxRelay.drain()` — lead, read past the watermark, expand, validate,
  encode, sign (one Merkle root per 128 records, SPEC §9), send, await acks, mark, audit;
* `relay_unsigned`: the same with `RETENTION_SIGNATURES=off`: what signing costs;
* `relay_python_hashing`: signed, with the signature trees hashed by the pure-Python
  reference (`schemas.signing._forest_py`) even where the C extension is built: what
  the extension saves (absent when it is not built; `signing_hashing` in the results
  says which one `relay` used);
* `relay_headers_only`: signed as far as the wire goes, but nothing hashed or signed:
  every record gets a copy of the headers of a record of a genuinely signed tree, in the
  proof format the relay sends (`RETENTION_RELAY_PROOF_FORMAT`; same names, same
  lengths), so its cost over `relay_unsigned` is what carrying the headers costs
  (aiokafka's record builder, CRC32C, requests, the socket, the broker): the floor
  under any signer of these wire bytes. Not verifiable; for measuring only;
* `relay_aiokafka_builder`, `relay_aiokafka_builder_unsigned`: the relay with its record
  batches written by aiokafka's builder, one Python call per record, instead of the C
  module `coordinator.kafka._recordbatch` (the fallback where it is not built; absent
  then, and `record_batches` in the results says which one `relay` used);
* `relay_malloc_default`: signed, with the C allocator's thresholds at glibc's starting
  values instead of the relay's (`RETENTION_RELAY_MALLOC_MMAP_THRESHOLD`, coordinator/heap.py):
  what keeping freed memory in the heap saves (every other contestant runs under the
  relay's thresholds; each drain ends with the relay's trim, timed);
* `relay_gc_default`, `relay_gc_default_unsigned`: the same two with CPython's default
  garbage-collection threshold during rounds (`RETENTION_RELAY_GC_THRESHOLD=700`): what
  collecting less often saves;
* `relay_one_claim_rounds`: signed, one claim a round (`RETENTION_RELAY_ROUND_CLAIMS=1`),
  each sent only after the previous one was acknowledged, marked and committed, instead
  of the next claim encoded and handed over while the previous one's acknowledgements are
  awaited: what the pipeline buys;
* `relay_chain_busy`, `relay_chain_busy_waiting`: signed, while another connection holds
  the audit chain's lock 0.3 s of every 0.4 s (as the purge and the tracker do when they
  overlap the relay at scale): the relay sending further claims while the lock is busy
  (the default), and waiting for it after each claim (`RETENTION_RELAY_BUSY_CHAIN_CLAIMS=1`);
* `relay_confluent`, `relay_confluent_unsigned`: the same two on the relay's librdkafka
  producer (`RETENTION_RELAY_PRODUCER=confluent`, the `fast` extra);
* `send_per_message`: a bare aiokafka producer (same options) encoding each event with
  `schemas.encode` and calling `send()` per record, every future gathered once — what
  the relay did before it used the batch API;
* `batch_api`: the relay's `KafkaEventProducer.send_all` (aiokafka's `create_batch` /
  `send_batch`, one builder per partition) on the same events encoded as the relay
  does, a claim-sized chunk at a time without waiting between chunks: the ceiling for
  publishing these events through aiokafka from one Python process;
* with `--producer-performance`: Kafka's Java producer (bench/ProducerLimit.java through
  bench/kafka_tools.py) on the same keyed, encoded events with the same producer and
  connection settings, timed after `--warmup` records as in `make bench`.

Reports medians with min–max, CPU seconds of this process, and the load average.
`--only relay,relay_unsigned` runs those contestants alone (more rounds in the same time).
`--variants` repeats the relay run with other producer settings and claim sizes, to
justify the defaults. Prints one JSON document on stdout; progress on stderr. Needs the
broker and PostgreSQL of `make infra-up`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import kafka_tools
from bench.signing import python_hashing
from coordinator import heap
from coordinator.evidence import audit
from coordinator.heap import keep_freed_memory
from coordinator.kafka import admin, recordbatch
from coordinator.kafka.admin import ensure_topics
from coordinator.kafka.producer import KafkaEventProducer, OutgoingRecord, producer_options
from coordinator.outbox.events import SHARED
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import RelaySettings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from schemas import EventType, KafkaSettings, RetentionEvent, Topics, encode, signing
from schemas.event_json import EventTemplate
from schemas.signing import SignatureMode, SignatureSettings, Signer
from tests import infra
from tests.outbox import clear_outbox, insert_rows, outbox_rows

VARIANTS: dict[str, dict[str, Any]] = {
    "aiokafka defaults (linger 0, 16 KiB, no compression)": {
        "linger_ms": 0,
        "max_batch_size": 16 * 1024,
        "compression": "none",
    },
    "tuned, lz4": {"compression": "lz4"},
    "tuned, gzip": {"compression": "gzip"},
    "tuned, zstd": {"compression": "zstd"},
    "tuned, claim 1000": {"batch_size": 1000},
    "tuned, claim 5000": {"batch_size": 5000},
    "tuned, claim 10000": {"batch_size": 10000},
    "tuned, claim 20000": {"batch_size": 20000},
    "tuned, 2 claims a round": {"round_claims": 2},
    "tuned, 8 claims a round": {"round_claims": 8},
    "confluent, claim 5000": {"producer": "confluent"},
    "confluent, claim 20000": {"producer": "confluent", "batch_size": 20000},
    "confluent, send chunk 5000": {"producer": "confluent", "send_chunk": 5000},
}

Timing = tuple[float, float]
"""Wall and CPU seconds."""


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


async def send_per_message(
    kafka: KafkaSettings, relay: RelaySettings, events: list[RetentionEvent]
) -> Timing:
    """A bare producer's `send()` per record, encoding included, all futures gathered."""
    await ensure_topics(kafka)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), **producer_options(relay))
    await producer.start()
    try:
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


async def batch_api(
    kafka: KafkaSettings, relay: RelaySettings, events: list[RetentionEvent]
) -> Timing:
    """The batch API through the relay's producer, encoding included, acks awaited once."""
    await ensure_topics(kafka)
    producer = KafkaEventProducer(kafka, relay)
    await producer.start()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        # The events share everything but their own three fields, as one purge batch's do.
        template = EventTemplate.of({name: getattr(events[0], name) for name in SHARED})
        assert template is not None
        futures = []
        for offset in range(0, len(events), relay.batch_size):
            records = [
                OutgoingRecord(
                    event.key.encode(),
                    template.render(str(event.event_id), event.entity_id, event.subject),
                    [("event_id", str(event.event_id).encode())],
                )
                for event in events[offset : offset + relay.batch_size]
            ]
            async for delivery in producer.send_all(kafka.topics.events, records):
                futures.append(delivery.future)
        await asyncio.gather(*futures)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await producer.stop()


async def relay_drain(
    url: str,
    kafka: KafkaSettings,
    relay: RelaySettings,
    rows: list[dict[str, Any]],
    signatures: SignatureSettings | None = None,
    on_filled: Callable[[], Awaitable[None]] | None = None,
) -> Timing:
    """Wall and CPU seconds of `drain()` over `rows`; `on_filled` runs once the outbox
    holds them, before the clock starts."""
    await ensure_topics(kafka)
    engine = make_engine(url)
    try:
        await clear_outbox(engine)
        await insert_rows(engine, rows)
        async with engine.connect() as conn:
            await conn.exec_driver_sql("ANALYZE retention_outbox_batches")
        if on_filled is not None:
            await on_filled()
        async with OutboxRelay(engine, kafka, settings=relay, signatures=signatures) as relay_:
            started, cpu = time.perf_counter(), time.process_time()
            published = await relay_.drain()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert published == len(rows), (published, len(rows))
        return elapsed, cpu
    finally:
        await engine.dispose()


CHAIN_HELD_S, CHAIN_FREE_S = 0.3, 0.1
"""How long the chain-lock holder of `relay_chain_busy` holds the lock, then leaves it."""


async def hold_chain(url: str, stop: asyncio.Event) -> None:
    """Hold the audit chain's lock `CHAIN_HELD_S` of every `CHAIN_HELD_S + CHAIN_FREE_S`
    until `stop`, as another writer of evidence would."""
    engine = make_engine(url)
    try:
        while not stop.is_set():
            async with engine.connect() as conn:
                await conn.begin()
                await audit.lock_head(conn)
                await asyncio.sleep(CHAIN_HELD_S)
                await conn.rollback()
            await asyncio.sleep(CHAIN_FREE_S)
    finally:
        await engine.dispose()


async def relay_drain_chain_busy(
    url: str, kafka: KafkaSettings, relay: RelaySettings, rows: list[dict[str, Any]]
) -> Timing:
    """`relay_drain` while `hold_chain` runs (started once the outbox is filled)."""
    stop = asyncio.Event()
    holder: asyncio.Task[None] | None = None

    async def filled() -> None:
        nonlocal holder
        holder = asyncio.create_task(hold_chain(url, stop))

    try:
        return await relay_drain(url, kafka, relay, rows, on_filled=filled)
    finally:
        stop.set()
        if holder is not None:
            await holder


async def producer_performance(
    kafka: KafkaSettings, relay: RelaySettings, events: list[RetentionEvent], warmup: int
) -> Timing:
    """Kafka's Java producer (bench/ProducerLimit.java) on the same keyed, encoded events;
    its CPU is the JVM's, not ours."""
    await ensure_topics(kafka)
    with tempfile.NamedTemporaryFile("wb", suffix=".payloads") as payloads:
        payloads.write(b"\n".join(e.key.encode() + b"\t" + encode(e) for e in events))
        payloads.flush()
        per_s = await asyncio.to_thread(
            kafka_tools.producer_limit,
            kafka,
            kafka.topics.events,
            warmup,
            len(events),
            Path(payloads.name),
            relay,
        )
    return len(events) / per_s, float("nan")


@contextmanager
def headers_only() -> Iterator[None]:
    """While inside, `Signer.sign_columns` and `sign_columns_v2` (whichever proof format
    the relay sends) return a genuinely signed tree's header values instead of signing
    (see `relay_headers_only`)."""
    signer = Signer(Ed25519PrivateKey.generate())
    keys: list[bytes | None] = [f"session_logs:{n}".encode() for n in range(128)]
    values: list[bytes | None] = [b"{}"] * 128
    samples = {
        "sign_columns": signer.sign_columns(keys, values, 128),
        "sign_columns_v2": signer.sign_columns_v2(keys, values, 128),
    }
    originals = {name: getattr(Signer, name) for name in samples}

    def copying(name: str) -> object:
        first, second = samples[name]

        def copy_headers(
            self: Signer,
            keys: Sequence[bytes | None],
            values: Sequence[bytes | None],
            tree_size: int,
        ) -> tuple[list[bytes | None], list[bytes | None]]:
            n = len(keys)
            return list(itertools.islice(itertools.cycle(first), n)), list(
                itertools.islice(itertools.cycle(second), n)
            )

        return copy_headers

    for name in samples:
        setattr(Signer, name, copying(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(Signer, name, original)


async def relay_drain_headers_only(
    url: str, kafka: KafkaSettings, relay: RelaySettings, rows: list[dict[str, Any]]
) -> Timing:
    with headers_only():
        return await relay_drain(url, kafka, relay, rows)


@contextmanager
def aiokafka_builder() -> Iterator[None]:
    """While inside, new relay producers write their batches with aiokafka's builder (the
    fallback where `coordinator.kafka._recordbatch` is not built)."""
    chosen = recordbatch.BUILDER
    recordbatch.BUILDER = "aiokafka"
    try:
        yield
    finally:
        recordbatch.BUILDER = chosen


async def relay_drain_aiokafka_builder(
    url: str,
    kafka: KafkaSettings,
    relay: RelaySettings,
    rows: list[dict[str, Any]],
    signatures: SignatureSettings | None = None,
) -> Timing:
    with aiokafka_builder():
        return await relay_drain(url, kafka, relay, rows, signatures)


async def relay_drain_malloc_default(
    url: str, kafka: KafkaSettings, relay: RelaySettings, rows: list[dict[str, Any]]
) -> Timing:
    # glibc's starting thresholds, fixed (its own raise them as big blocks are freed),
    # then the relay's again: the contestants that start no relay (`send_per_message`,
    # `batch_api`) always run under the relay's, whatever the rotation's order.
    keep_freed_memory(heap.GLIBC_DEFAULT, heap.GLIBC_DEFAULT)
    unset = relay.model_copy(update={"malloc_mmap_threshold": 0})
    try:
        return await relay_drain(url, kafka, unset, rows)
    finally:
        keep_freed_memory(relay.malloc_mmap_threshold, relay.malloc_trim_threshold)


async def relay_drain_python_hashing(
    url: str, kafka: KafkaSettings, relay: RelaySettings, rows: list[dict[str, Any]]
) -> Timing:
    with python_hashing():
        return await relay_drain(url, kafka, relay, rows)


PREFIXES: list[str] = []


def prefix(label: str) -> str:
    PREFIXES.append(f"bench.relay.{label}.{uuid.uuid4().hex[:8]}.data.retention")
    return PREFIXES[-1]


async def delete_topics(kafka: KafkaSettings) -> None:
    """The broker is shared: remove the bench's topics (millions of records) afterwards."""
    await admin.delete_topics(kafka, [t for p in PREFIXES for t in Topics(p).all()])


def summary(count: int, timings: list[Timing]) -> dict[str, Any]:
    rates = sorted(count / wall for wall, _ in timings)
    cpus = [cpu for _, cpu in timings if cpu == cpu]
    return {
        "events_per_s": round(statistics.median(rates)),
        "min": round(rates[0]),
        "max": round(rates[-1]),
        "cpu_us_per_event": round(statistics.median(cpus) / count * 1e6, 2) if cpus else None,
    }


async def main(
    count: int, rounds: int, variants: bool, java: bool, warmup: int, only: list[str] | None
) -> dict[str, Any]:
    infra.load_infra_env()
    infra.use_test_keys()  # every benchmark runs signed
    base = KafkaSettings()
    url = await infra.create_database(infra.database_url(), "bench_relay")
    try:
        await upgrade(url)
        tuned = RelaySettings()
        # Every contestant under the relay's thresholds (but `relay_malloc_default`), the
        # first round's too.
        keep_freed_memory(tuned.malloc_mmap_threshold, tuned.malloc_trim_threshold)
        confluent = tuned.model_copy(update={"producer": "confluent"})
        gc_default = tuned.model_copy(update={"gc_threshold": 700})
        waiting = tuned.model_copy(update={"busy_chain_claims": 1, "round_claims": 1})
        one_claim = tuned.model_copy(update={"round_claims": 1})
        rows = outbox_rows(count, policy="session_logs")
        events = events_of(rows)
        record_bytes = sum(len(encode(e)) for e in events) / len(events)
        say(f"{count} events of {record_bytes:.0f} bytes on average, {rounds} rounds")

        def kafka(label: str) -> KafkaSettings:
            return base.model_copy(update={"topic_prefix": prefix(label)})

        contestants: dict[str, Callable[[], Awaitable[Timing]]] = {
            "relay": lambda: relay_drain(url, kafka("relay"), tuned, rows),
            "relay_unsigned": lambda: relay_drain(
                url, kafka("unsigned"), tuned, rows, SignatureSettings(mode=SignatureMode.OFF)
            ),
            "relay_one_claim_rounds": lambda: relay_drain(url, kafka("one_claim"), one_claim, rows),
            "relay_gc_default": lambda: relay_drain(url, kafka("gc"), gc_default, rows),
            "relay_gc_default_unsigned": lambda: relay_drain(
                url,
                kafka("gc_unsigned"),
                gc_default,
                rows,
                SignatureSettings(mode=SignatureMode.OFF),
            ),
            "relay_chain_busy": lambda: relay_drain_chain_busy(url, kafka("busy"), tuned, rows),
            "relay_chain_busy_waiting": lambda: relay_drain_chain_busy(
                url, kafka("busy_waiting"), waiting, rows
            ),
            "relay_confluent": lambda: relay_drain(url, kafka("confluent"), confluent, rows),
            "relay_confluent_unsigned": lambda: relay_drain(
                url,
                kafka("confluent_unsigned"),
                confluent,
                rows,
                SignatureSettings(mode=SignatureMode.OFF),
            ),
            "send_per_message": lambda: send_per_message(kafka("raw"), tuned, events),
            "batch_api": lambda: batch_api(kafka("batch"), tuned, events),
        }
        contestants["relay_malloc_default"] = lambda: relay_drain_malloc_default(
            url, kafka("malloc_default"), tuned, rows
        )
        contestants["relay_headers_only"] = lambda: relay_drain_headers_only(
            url, kafka("headers_only"), tuned, rows
        )
        if recordbatch.BUILDER == "native":
            contestants["relay_aiokafka_builder"] = lambda: relay_drain_aiokafka_builder(
                url, kafka("aiokafka_builder"), tuned, rows
            )
            contestants["relay_aiokafka_builder_unsigned"] = lambda: relay_drain_aiokafka_builder(
                url,
                kafka("aiokafka_builder_unsigned"),
                tuned,
                rows,
                SignatureSettings(mode=SignatureMode.OFF),
            )
        if signing.HASHING == "native":
            contestants["relay_python_hashing"] = lambda: relay_drain_python_hashing(
                url, kafka("python_hashing"), tuned, rows
            )
        if java:
            contestants["producer_performance"] = lambda: producer_performance(
                kafka("perf"), tuned, events, warmup
            )
        if only is not None:
            unknown = set(only) - set(contestants)
            assert not unknown, f"no such contestant: {sorted(unknown)}"
            contestants = {name: contestants[name] for name in only}
        timings: dict[str, list[Timing]] = {name: [] for name in contestants}
        loads = []
        names = list(contestants)
        for n in range(rounds):
            for name in names[n % len(names) :] + names[: n % len(names)]:
                loads.append(os.getloadavg()[0])
                wall, cpu = await contestants[name]()
                timings[name].append((wall, cpu))
                say(f"round {n} {name}: {count / wall:,.0f} events/s, CPU {cpu:.2f}s")
            await delete_topics(base)
            PREFIXES.clear()
        result: dict[str, Any] = {
            "events": count,
            "rounds": rounds,
            "record_bytes_avg": round(record_bytes),
            "load_average_1m": {"min": min(loads), "max": max(loads)},
            "settings": tuned.model_dump(),
            "signing_hashing": signing.HASHING,
            "record_batches": recordbatch.BUILDER,
            **{name: summary(count, t) for name, t in timings.items()},
            "variants": {},
        }

        def ratio(a: str, b: str) -> None:
            if a in timings and b in timings:
                rate = result[a]["events_per_s"] / result[b]["events_per_s"]
                result[f"{a}/{b}"] = round(rate, 3)

        for name in names:
            if name != "relay":
                ratio("relay", name)
        ratio("relay_gc_default", "relay_gc_default_unsigned")
        ratio("relay_chain_busy", "relay_chain_busy_waiting")
        ratio("relay_confluent", "relay_confluent_unsigned")
        ratio("relay_python_hashing", "relay_unsigned")
        ratio("relay_headers_only", "relay_unsigned")
        ratio("relay_aiokafka_builder", "relay_aiokafka_builder_unsigned")
        ratio("relay_unsigned", "relay_aiokafka_builder_unsigned")
        ratio("relay_confluent", "producer_performance")
        if variants:
            for name, change in VARIANTS.items():
                settings = tuned.model_copy(update=change)
                fresh = outbox_rows(count, policy="session_logs")
                seconds, cpu = await relay_drain(url, kafka("variant"), settings, fresh)
                say(f"variant {name}: {count / seconds:,.0f} events/s, CPU {cpu:.2f}s")
                result["variants"][name] = summary(count, [(seconds, cpu)])
        return result
    finally:
        await infra.drop_database(url)
        await delete_topics(base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", action="store_true", help="also time other settings")
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        help="comma-separated contestants to run (default: all)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=200_000,
        help="records the Java producer sends before it is timed (as `make bench`)",
    )
    parser.add_argument(
        "--producer-performance",
        action="store_true",
        help="also run Kafka's Java producer (needs java and the Kafka jars)",
    )
    args = parser.parse_args()
    print(
        json.dumps(
            asyncio.run(
                main(
                    args.rows,
                    args.rounds,
                    args.variants,
                    args.producer_performance,
                    args.warmup,
                    args.only,
                )
            ),
            indent=2,
        )
    )
