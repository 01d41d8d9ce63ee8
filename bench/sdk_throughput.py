"""Consumer SDK throughput: events/s and CPU of real service processes.

    python -m bench.sdk_throughput [--events 5000] [--e2e-users 1000] [--skip-e2e]

1. `one`: one process of the first example service on the core SDK (`ONE`, from
   `services.EXAMPLES`: notifications) on a fresh topic (3 partitions) and a fresh
   service database seeded by its own `seed` (3 notifications per user), and a backlog of
   `--events` user-delete events, signed as the relay signs them (Merkle trees of 128);
   timed from its partition assignment (seen in its log within 0.1 s) until every ack
   is on the acks topic. Checks each event's effect is in
   `erasure_log` exactly once.
2. `e2e`: the three product services as processes, the outbox relay in this process,
   `--e2e-users` users and 100 orders (the e2e test's workload); timed from the relay's
   start to the last expected ack.

CPU is each service process's user+system time (from /proc) over the timed span;
`database_commits` is how many transactions the service database committed meanwhile
(pg_stat_database; includes the service's start-up and a few of the bench's own).
Prints one JSON document on stdout, progress on stderr. Needs the broker and PostgreSQL
of `make infra-up`. To measure another SDK version, run this module from that version's
checkout (this venv's python, that tree as the working directory): `python -m` puts the
working directory first on the path, before PYTHONPATH, for this process and the
service processes it starts there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from bench.proc_cpu import cpu_seconds
from coordinator.outbox.lookup import EVENTS
from coordinator.settings import RelaySettings
from coordinator.store.db import make_engine
from schemas import KafkaSettings
from services import EXAMPLES
from tests import infra
from tests.e2e import workload
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    AckTail,
    ServiceProcess,
    Stack,
    isolated_stack,
    running_relay,
    wait_for,
)
from tests.sdk.helpers import event
from tests.sdk.kafka_io import produce

ONE = next(e for e in EXAMPLES if not e.faust)
"""The service `one` measures: the first example on the core SDK."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def process_cpu(process: ServiceProcess) -> float:
    assert process.proc is not None
    return cpu_seconds(process.proc.pid)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def commits(url: str) -> int:
    """Transactions committed in the database of `url` so far (pg_stat_database)."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            # Statistics reach pg_stat_database up to a second after a backend's commit.
            await asyncio.sleep(1.5)
            await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            value = await conn.scalar(
                text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            )
            return int(value)
    finally:
        await engine.dispose()


async def one_service(stack: Stack, events: int) -> dict[str, Any]:
    users = [f"bench-u{i:06d}" for i in range(events)]
    await ONE.seed(stack.services_url, users)
    commits_before = await commits(stack.services_url)
    # A backlog, as after an outage or a big purge: the service's own pace, not the producer's.
    # Signed as the relay signs them (Merkle trees of its default 128 records): a
    # signature per record would make a service check an Ed25519 signature per event.
    await produce(
        stack.kafka, [event(user) for user in users], tree=RelaySettings().signature_batch
    )
    async with AckTail(stack.kafka) as acks:
        await stack.start_services(ONE.name)
        process = stack.processes[ONE.name]
        cpu_before, load_before = process_cpu(process), loadavg()
        # From the partition assignment (consuming starts there; seen within 0.1 s).
        started = time.monotonic()
        await wait_for(
            lambda: len(acks.pairs()) >= events,
            timeout_s=max(120.0, events / 10),
            what=f"{events} acks",
            alive=process.check_alive,
            interval_s=0.05,
        )
        elapsed = time.monotonic() - started
        cpu = process_cpu(process) - cpu_before
    await stack.stop_services()
    database_commits = await commits(stack.services_url) - commits_before
    engine = make_engine(stack.services_url)
    try:
        async with engine.connect() as conn:
            log = ONE.erasure_log
            rows = await conn.execute(select(log.c.event_id, func.count()).group_by(log.c.event_id))
            applied = Counter(dict(rows.all()))
    finally:
        await engine.dispose()
    if sorted(applied.values()) != [1] * events:
        raise AssertionError(f"effects not applied exactly once: {Counter(applied.values())}")
    return {
        "events": events,
        "seconds": round(elapsed, 2),
        "events_per_s": round(events / elapsed, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_ms_per_event": round(1000 * cpu / events, 2),
        "database_commits": database_commits,
        "loadavg_1m_before": load_before,
    }


async def published_after(stack: Stack, started: float, events: int) -> float:
    """Seconds from `started` until the relay marked every outbox row published."""
    engine = stack.engine()
    try:
        while True:
            async with engine.connect() as conn:
                done = await conn.scalar(
                    select(func.count())
                    .select_from(EVENTS)
                    .where(EVENTS.c.published_at.is_not(None))
                )
            if done == events:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def three_services(stack: Stack, users: int) -> dict[str, Any]:
    work = await workload.prepare(stack, users=users, customers=50)
    expected = work.expected_acks()
    await stack.start_services(*PRODUCT_SERVICES)
    processes = [stack.processes[name] for name in PRODUCT_SERVICES]
    async with AckTail(stack.kafka) as acks:
        cpu_before = {p.name: process_cpu(p) for p in processes}
        load_before = loadavg()
        started = time.monotonic()
        async with running_relay(stack) as relay:
            published = await published_after(stack, started, work.events)
            await wait_for(
                lambda: expected.keys() <= acks.pairs(),
                timeout_s=max(180.0, len(expected) / 10),
                what=f"{len(expected)} acks",
                alive=relay.check,
                interval_s=0.05,
            )
            elapsed = time.monotonic() - started
        cpu = {p.name: process_cpu(p) - cpu_before[p.name] for p in processes}
    await stack.stop_services()
    return {
        "entities": work.events,
        "acks": len(expected),
        "seconds": round(elapsed, 2),
        "relay_published_all_after_s": round(published, 2),
        "entities_per_s": round(work.events / elapsed, 1),
        "acks_per_s": round(len(expected) / elapsed, 1),
        "cpu_percent": {name: round(100 * s / elapsed, 1) for name, s in cpu.items()},
        "loadavg_1m_before": load_before,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    postgres, kafka = infra.database_url(), KafkaSettings().bootstrap_servers
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sdk-bench-") as logs:
        say(f"one {ONE.name} process, {args.events} events")
        async with isolated_stack(postgres, kafka, "sdkbench", Path(logs)) as stack:
            result["one"] = await one_service(stack, args.events)
        say(json.dumps(result["one"]))
        if not args.skip_e2e:
            say(f"three services end to end, {args.e2e_users} users + 100 orders")
            async with isolated_stack(postgres, kafka, "sdkbench3", Path(logs)) as stack:
                result["e2e"] = await three_services(stack, args.e2e_users)
            say(json.dumps(result["e2e"]))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_throughput")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--e2e-users", type=int, default=1000)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    infra.use_test_keys()  # every benchmark runs signed, as the services do by default
    print(json.dumps(asyncio.run(main(args)), indent=2))
