"""How fast the tracker applies acks, and how soon an event reads `completed`.

    python -m bench.tracker_throughput [--acks 60000] [--services 3] [--rounds 3]

Phase 1 (throughput): N acks (events × services) wait on the acks topic; one tracker
drains them batch by batch, one transaction each; reports acks/s. Then `--replicas`
trackers in one consumer group (as `retention serve` replicas run) drain as many on a
fresh topic together. Each round times both, in alternating order; the result is the
median of the rounds and the ratio replicas/one. Every tracker runs in a process of its
own (as replicas do), joins the group before the acks are sent and starts on a signal;
the clock stops when the trackers report every ack applied. CPU per ack: the trackers'
own (process time while draining) and the database backends' (from /proc).
Phase 2 (lag): with `run_forever` running, acks for fresh events arrive at a steady rate;
for each event, lag = when its state became `completed` (tracker clock) − when its last
ack was handed to the producer. Uses a fresh database and topic prefix; drops the database
and deletes the topics.
Writes bench/results/tracker/<UTC stamp>.json (with the load average of each timing).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import any_, func, select

from bench.proc_cpu import backend_cpu
from coordinator.clock import FrozenClock, SystemClock
from coordinator.evidence import audit
from coordinator.kafka.admin import delete_topics, ensure_topics
from coordinator.store.migrate import upgrade
from coordinator.store.tables import event_status
from coordinator.tracking.columns import event_ids_param
from schemas import KafkaSettings, encode
from tests import infra, keys
from tests.integration.tracking_support import (
    ack,
    insert_published,
    make_tracker,
    produce,
    registration,
)

RESULTS = Path(__file__).parent / "results" / "tracker"
PARTITIONS = 6
SDK_BATCH = 500
"""Acks signed together, as the SDK signs one batch's acks (one Merkle root)."""


async def _produce_acks(kafka: KafkaSettings, acks: list, *, rate: float | None) -> dict:
    """Send acks signed per `SDK_BATCH` with the services' test key; with `rate`, pace
    them; return event_id → time its last ack was sent."""
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5)
    await producer.start()
    signer = keys.signer()
    last_sent: dict = {}
    try:
        futures = []
        start = time.time()
        for offset in range(0, len(acks), SDK_BATCH):
            chunk = acks[offset : offset + SDK_BATCH]
            records = [(a.key.encode(), encode(a)) for a in chunk]
            for n, (a, (key, value), headers) in enumerate(
                zip(chunk, records, signer.sign_batch(records), strict=True)
            ):
                if rate is not None:
                    delay = start + (offset + n) / rate - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                futures.append(
                    await producer.send(kafka.topics.acks, value, key=key, headers=headers)
                )
                last_sent[a.event_id] = time.time()
        for f in futures:
            await f
    finally:
        await producer.stop()
    return last_sent


class _LockClock:
    """How long each ack batch holds the audit chain's lock: from its first `lock_head`
    to its offsets' commit (right after the database commit that frees the lock), out
    of the whole batch (from the records' arrival to that commit)."""

    def __init__(self, trackers: list) -> None:
        self._readers = [t._kafka.acks for t in trackers]
        self._arrived: dict[Any, float] = {}
        self._locked: dict[Any, float] = {}
        self.held = 0.0
        self.total = 0.0

    def __enter__(self) -> None:
        original = audit.lock_head

        async def lock_head(conn):
            self._locked.setdefault(asyncio.current_task(), time.perf_counter())
            return await original(conn)

        self._original = original
        audit.lock_head = lock_head
        for reader in self._readers:
            reader.read = self._read(reader.read)
            reader.commit = self._commit(reader.commit)

    def __exit__(self, *_: object) -> None:
        audit.lock_head = self._original
        for reader in self._readers:
            del reader.read, reader.commit

    def _read(self, read):
        async def timed(**kwargs):
            got = await read(**kwargs)
            self._arrived[asyncio.current_task()] = time.perf_counter()
            return got

        return timed

    def _commit(self, commit):
        async def timed(records):
            task, now = asyncio.current_task(), time.perf_counter()
            locked = self._locked.pop(task, None)
            if locked is not None:
                self.held += now - locked
            self.total += now - self._arrived[task]
            return await commit(records)

        return timed

    def share(self) -> float:
        return round(self.held / self.total, 3) if self.total else 0.0


async def _joined(trackers: list, partitions: int) -> None:
    """Poll the empty acks topic until each of `trackers` holds `partitions` partitions:
    the group's join (and its rebalance delay) stays out of the timing."""

    def settled() -> bool:
        return all(len(t._kafka.acks._consumer.assignment()) == partitions for t in trackers)

    while not settled():
        await asyncio.gather(*(t.consume_acks(timeout_s=0.2) for t in trackers))


async def _backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving `database`."""
    return await backend_cpu(infra.with_database(infra.database_url(), "postgres"), [database])


async def throughput(
    url: str,
    names: list[str],
    declared: list,
    clock: FrozenClock,
    *,
    n_events: int,
    batch: int,
    replicas: int,
    created: list[KafkaSettings],
) -> dict[str, Any]:
    """Track `n_events` fresh events, put one ack per event and service on a fresh acks
    topic, and time `replicas` tracker processes of one consumer group draining it."""
    kafka = KafkaSettings(topic_prefix=infra.unique_topic_prefix("bench"))
    created.append(kafka)
    await ensure_topics(kafka, partitions=PARTITIONS)
    t0 = datetime.now(UTC) - timedelta(days=1)
    await produce(kafka, kafka.topics.services, [registration(n, t0) for n in names])
    tracker, engine, _ = make_tracker(url, kafka, clock, batch_size=batch, services=declared)
    ids = [f"r{replicas}-{uuid.uuid4().hex[:8]}-{i}" for i in range(n_events)]
    events = await insert_published(engine, ids, published_at=clock.now())
    await tracker.start()
    try:
        await tracker.sync_registry()
        started = time.perf_counter()
        tracked = await tracker.track_published()
        snapshot_s = time.perf_counter() - started
    finally:
        await tracker.stop()
    spec = {
        "url": url,
        "topic_prefix": kafka.topic_prefix,
        "names": names,
        "now": clock.now().isoformat(),
        "batch": batch,
        "partitions": PARTITIONS // replicas,
    }
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.tracker_throughput",
            "--worker",
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(replicas)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            while (said := await w.stdout.readline()) != _SAYS + b"ready\n":
                if not said:
                    raise RuntimeError("a tracker process ended before joining the group")
        acks = [ack(e, n, i, clock.now()) for e, i in zip(events, ids, strict=True) for n in names]
        await _produce_acks(kafka, acks, rate=None)
        total, done_reading = len(acks), asyncio.Event()
        consumed, finals = [0], []

        async def follow(w: asyncio.subprocess.Process) -> None:
            assert w.stdout is not None
            while line := await w.stdout.readline():
                if not line.startswith(_SAYS):
                    continue  # the tracker's own log lines
                got = json.loads(line.removeprefix(_SAYS))
                if "records" in got:
                    consumed[0] += got["records"]
                    if consumed[0] >= total:
                        done_reading.set()
                else:
                    finals.append(got)

        database = url.rpartition("/")[2]
        pg_before = await _backend_cpu(database)
        readers = [asyncio.create_task(follow(w)) for w in workers]
        started = time.perf_counter()
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(b"go\n")
            await w.stdin.drain()
        await done_reading.wait()
        apply_s = time.perf_counter() - started
        pg_after = await _backend_cpu(database)
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(b"stop\n")
            await w.stdin.drain()
        await asyncio.gather(*readers)
        for w in workers:
            if await w.wait() != 0:
                raise RuntimeError("a tracker process failed")
    finally:
        for w in workers:
            if w.returncode is None:
                w.kill()
                await w.wait()
    async with engine.connect() as conn:
        done = (
            await conn.execute(
                select(func.count()).where(
                    event_status.c.state == "completed",
                    event_status.c.event_id == any_(event_ids_param(events)),
                )
            )
        ).scalar_one()
    await engine.dispose()
    python_cpu = sum(f["cpu_s"] for f in finals)
    pg_cpu = sum(value - pg_before.get(pid, 0.0) for pid, value in pg_after.items())
    held, whole = sum(f["lock_held_s"] for f in finals), sum(f["batch_s"] for f in finals)
    got = {
        "replicas": replicas,
        "acks": consumed[0],
        "seconds": round(apply_s, 3),
        "acks_per_s": round(consumed[0] / apply_s),
        "batches": sum(f["batches"] for f in finals),
        "completed": done,
        "events": n_events,
        "snapshot_s": round(snapshot_s, 3),
        "chain_lock_share": round(held / whole, 3) if whole else 0.0,
        "tracker_cpu_us_per_ack": round(python_cpu / consumed[0] * 1e6, 1),
        "postgres_cpu_us_per_ack": round(pg_cpu / consumed[0] * 1e6, 1),
        "tracked": tracked,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(
        f"ledger:   {replicas} tracker process(es), {consumed[0]} acks in {apply_s:.2f}s = "
        f"{consumed[0] / apply_s:,.0f} acks/s ({got['batches']} batches of ≤{batch}); "
        f"completed events {done}/{n_events}; CPU per ack: tracker "
        f"{got['tracker_cpu_us_per_ack']} µs, PostgreSQL {got['postgres_cpu_us_per_ack']} µs; "
        f"chain lock held {got['chain_lock_share']:.0%} of a batch; "
        f"load {got['load_average_1m']}",
        flush=True,
    )
    return got


_SAYS = b"@bench "
"""Starts a worker's lines meant for the bench, among the tracker's log lines."""


def _say(what: str) -> None:
    print(_SAYS.decode() + what, flush=True)


async def worker(spec: dict[str, Any]) -> None:
    """One tracker replica in a process of its own (`--worker`): join the group, say
    `ready`, wait for `go`, then apply batches, printing each one's record count, until
    `stop`; last, print its CPU seconds and the chain lock's share of its batches."""
    kafka = KafkaSettings(topic_prefix=spec["topic_prefix"])
    declared = [keys.declared(n, {"user": ["delete", "anonymize"]}) for n in spec["names"]]
    clock = FrozenClock(datetime.fromisoformat(spec["now"]))
    tracker, engine, _ = make_tracker(
        spec["url"], kafka, clock, batch_size=spec["batch"], services=declared
    )
    loop = asyncio.get_running_loop()

    async def line() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    await tracker.start()
    try:
        await tracker.sync_registry()
        await _joined([tracker], spec["partitions"])
        gc.freeze()  # as `retention serve` does once started (docs/tracking.md)
        _say("ready")
        if await line() != "go":
            return
        stop = asyncio.create_task(line())
        locks, batches = _LockClock([tracker]), 0
        cpu = time.process_time()
        with locks:
            while not stop.done():
                outcome = await tracker.consume_acks(timeout_s=0.1)
                if outcome is not None:
                    batches += 1
                    _say(json.dumps({"records": outcome.records}))
        cpu = time.process_time() - cpu
        _say(
            json.dumps(
                {
                    "cpu_s": cpu,
                    "batches": batches,
                    "lock_held_s": locks.held,
                    "batch_s": locks.total,
                }
            )
        )
    finally:
        await tracker.stop()
        await engine.dispose()


def _commit() -> str | None:
    """The checked-out commit the bench ran, if this is a git checkout."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


async def main(
    total_acks: int, services: int, batch: int, lag_events: int, replicas: int, rounds: int
) -> dict[str, Any]:
    url = await infra.create_database(infra.database_url(), "bench_tracker")
    kafka = KafkaSettings(topic_prefix=infra.unique_topic_prefix("bench"))
    # Every topic this run makes is deleted at its end: the shared broker keeps a few
    # files open per partition, and left-behind topics add up to its open-files limit.
    created = [kafka]
    result: dict[str, Any] = {
        "acks": total_acks,
        "services": services,
        "batch_size": batch,
        "replicas": replicas,
        "rounds": rounds,
        "signatures": "required",
        "load_average_1m_start": round(os.getloadavg()[0], 2),
        "commit": _commit(),
    }
    try:
        await upgrade(url)
        await ensure_topics(kafka, partitions=PARTITIONS)
        names = [f"svc{i}" for i in range(services)]
        t0 = datetime.now(UTC) - timedelta(days=1)
        await produce(kafka, kafka.topics.services, [registration(n, t0) for n in names])

        # --- phase 1: throughput, 1 and `replicas` trackers in one group, alternating ---
        clock = FrozenClock(datetime.now(UTC))
        declared = [keys.declared(n, {"user": ["delete", "anonymize"]}) for n in names]
        n_events = total_acks // services
        timings: dict[int, list[dict[str, Any]]] = {1: [], replicas: []}
        for n in range(rounds):
            order = [1, replicas] if n % 2 == 0 else [replicas, 1]
            for count in order:
                timings[count].append(
                    await throughput(
                        url,
                        names,
                        declared,
                        clock,
                        n_events=n_events,
                        batch=batch,
                        replicas=count,
                        created=created,
                    )
                )
        for count, runs in timings.items():
            result[f"trackers_{count}"] = {
                "acks_per_s": statistics.median(r["acks_per_s"] for r in runs),
                "runs": runs,
            }
        one = result["trackers_1"]["acks_per_s"]
        result[f"trackers_{replicas}/trackers_1"] = round(
            result[f"trackers_{replicas}"]["acks_per_s"] / one, 3
        )
        result["ratio_per_round"] = [
            round(many["acks_per_s"] / single["acks_per_s"], 3)
            for single, many in zip(timings[1], timings[replicas], strict=True)
        ]

        # --- phase 2: lag from last ack to `completed` ------------------------------
        live, engine2, _ = make_tracker(
            url, kafka, SystemClock(), batch_size=batch, services=declared
        )
        lag_ids = [f"lag-{uuid.uuid4().hex[:8]}" for _ in range(lag_events)]
        lag_events_ids = await insert_published(engine2, lag_ids, published_at=datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(live.run_forever(stop))
        await asyncio.sleep(3)  # group join
        lag_acks = [
            ack(e, n, i, datetime.now(UTC))
            for e, i in zip(lag_events_ids, lag_ids, strict=True)
            for n in names
        ]
        last_sent = await _produce_acks(kafka, lag_acks, rate=1000.0)
        deadline = time.time() + 60
        while time.time() < deadline:
            async with engine2.connect() as conn:
                rows = (
                    await conn.execute(
                        select(event_status.c.event_id, event_status.c.updated_at).where(
                            event_status.c.event_id.in_(lag_events_ids),
                            event_status.c.state == "completed",
                        )
                    )
                ).all()
            if len(rows) == len(lag_events_ids):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await engine2.dispose()
        lags = sorted(r.updated_at.timestamp() - last_sent[r.event_id] for r in rows)
        result["lag_ms"] = {
            "events": lag_events,
            "completed": len(rows),
            "paced_acks_per_s": 1000,
            "median": round(statistics.median(lags) * 1000),
            "p95": round(lags[int(len(lags) * 0.95) - 1] * 1000),
            "max": round(lags[-1] * 1000),
        }
        print(f"lag:      {result['lag_ms']} (acks paced at 1000/s)", flush=True)
    finally:
        await infra.drop_database(url)
        for made in created:
            await delete_topics(made, made.topics.all())
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acks", type=int, default=60_000)
    parser.add_argument("--services", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--lag-events", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--replicas", type=int, default=2, help="trackers in one group, timed against one"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one replica's process
    args = parser.parse_args()
    infra.load_infra_env()
    infra.use_test_keys()  # every benchmark runs signed: acks verified per record
    if args.worker:
        asyncio.run(worker(json.loads(args.worker)))
        sys.exit(0)
    got = asyncio.run(
        main(args.acks, args.services, args.batch, args.lag_events, args.replicas, args.rounds)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(got, indent=2) + "\n")
    print(f"{path}: {args.replicas} trackers / 1 = {got[f'trackers_{args.replicas}/trackers_1']}")
