"""What tracking new events costs with a large outbox already tracked, against an empty one.

    python -m bench.tracking_scale [--background 100000] [--fresh 10000] [--rounds 3]

Per round, on a fresh database: track `--fresh` newly published events with nothing else
in the outbox (the floor), then fill the outbox with `--background` published events and
track them (untimed), then track another `--fresh` new events. The ratio of the two timed
passes is what the outbox's size adds to tracking (#16: ≤ 1.2× at 10M). Each timed pass
also reports the CPU its PostgreSQL backends spent (bench/proc_cpu.py), per event. Uses only
`insert_published` and `Tracker.track_published`, so the same file times any version of
the tracker. Prints one JSON document; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.proc_cpu import backend_cpu
from coordinator.clock import FrozenClock
from coordinator.store.migrate import upgrade
from schemas import KafkaSettings
from tests import infra, keys
from tests.integration.tracking_support import insert_published, make_tracker

CHUNK = 50_000


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _pg_cpu(url: str) -> dict[int, float]:
    return await backend_cpu(infra.database_url(), [url.rpartition("/")[2]])


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


async def one_round(background: int, fresh: int) -> tuple[float, float, float, float]:
    """Seconds of the pass on an empty outbox and beside the background, then the
    PostgreSQL CPU seconds of each."""
    url = await infra.create_database(infra.database_url(), "bench_tracking_scale")
    try:
        await upgrade(url)
        clock = FrozenClock(datetime.now(UTC) - timedelta(minutes=1))
        declared = [keys.declared(f"svc{i}", {"user": ["delete"]}) for i in range(3)]
        kafka = KafkaSettings(topic_prefix=infra.unique_topic_prefix("bench"))
        tracker, engine, _ = make_tracker(url, kafka, clock, services=declared)
        try:
            await insert_published(
                engine, [f"a{i}" for i in range(fresh)], published_at=clock.now()
            )
            cpu = await _pg_cpu(url)
            started = time.perf_counter()
            assert await tracker.track_published() == fresh
            empty_s = time.perf_counter() - started
            empty_cpu = _spent(cpu, await _pg_cpu(url))
            for start in range(0, background, CHUNK):
                ids = [f"b{i}" for i in range(start, min(start + CHUNK, background))]
                await insert_published(engine, ids, published_at=clock.now())
                await tracker.track_published()
            await insert_published(
                engine, [f"c{i}" for i in range(fresh)], published_at=clock.now()
            )
            cpu = await _pg_cpu(url)
            started = time.perf_counter()
            assert await tracker.track_published() == fresh
            full_s = time.perf_counter() - started
            full_cpu = _spent(cpu, await _pg_cpu(url))
        finally:
            await engine.dispose()
        return empty_s, full_s, empty_cpu, full_cpu
    finally:
        await infra.drop_database(url)


async def main(background: int, fresh: int, rounds: int) -> dict[str, object]:
    infra.load_infra_env()
    loads, empty, full, empty_cpu, full_cpu = [], [], [], [], []
    for n in range(rounds):
        loads.append(os.getloadavg()[0])
        e, f, ec, fc = await one_round(background, fresh)
        empty.append(e)
        full.append(f)
        empty_cpu.append(ec)
        full_cpu.append(fc)
        say(
            f"round {n}: {fresh} events in {e:.3f}s empty, {f:.3f}s beside {background};"
            f" PostgreSQL CPU {ec / fresh * 1e6:.1f} / {fc / fresh * 1e6:.1f} us an event"
        )
    return {
        "fresh": fresh,
        "background": background,
        "rounds": rounds,
        "load_average_1m": {"min": min(loads), "max": max(loads)},
        "empty_s": round(statistics.median(empty), 3),
        "beside_background_s": round(statistics.median(full), 3),
        "ratio": round(statistics.median(full) / statistics.median(empty), 2),
        "postgres_cpu_us_per_event_empty": round(statistics.median(empty_cpu) / fresh * 1e6, 1),
        "postgres_cpu_us_per_event_beside_background": round(
            statistics.median(full_cpu) / fresh * 1e6, 1
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--background", type=int, default=100_000)
    parser.add_argument("--fresh", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.background, args.fresh, args.rounds)), indent=2))
