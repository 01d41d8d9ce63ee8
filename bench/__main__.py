"""Benchmarks side by side: ours vs the seed article's design vs the machine's limits.

    make bench                      # BENCH_ROWS=100000
    BENCH_ROWS=1000000 make bench   # the large run

Environment: BENCH_ROWS (rows over the five seed tables), BENCH_ROUNDS (3),
BENCH_SEED_EVENTS (events the seed publishes one `send_and_wait` at a time, 2000),
BENCH_E2E_USERS (users in the end-to-end phase, 10000; 0 skips it), BENCH_KAFKA_LIB.
Writes bench/results/<timestamp>.json, .md (the table it prints) and .png (the chart,
when matplotlib is installed: `pip install -e '.[bench]'`); see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import delete, not_, text
from sqlalchemy.dialects import postgresql

from bench import chart, data, e2e, kafka_tools
from bench.seed_executor import execute_policy
from coordinator.db import make_engine
from coordinator.kafka_admin import ensure_topics
from coordinator.outbox.relay import OutboxRelay, event_from_row
from coordinator.purge.holds import active_hold_exists
from coordinator.settings import RelaySettings
from coordinator.tables import outbox
from demo.seed_data import SEED_POLICIES
from schemas import EventType, KafkaSettings, RetentionEvent, Topics, encode
from tests import infra
from tests.infra import ROOT

RESULTS = ROOT / "bench" / "results"
ACTIONS = ("delete", "anonymize", "archive")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# --- contestants: local purge ---------------------------------------------------------


def _rates(per_policy: dict[str, tuple[int, float]]) -> dict[str, float]:
    """rows/s per action and overall from {policy: (rows, seconds)}."""
    rates: dict[str, float] = {}
    for action in ACTIONS:
        chosen = [v for p, v in per_policy.items() if data.POLICIES[p]["action"] == action]
        rows, seconds = sum(r for r, _ in chosen), sum(s for _, s in chosen)
        rates[action] = rows / seconds if seconds else 0.0
    rows, seconds = sum(r for r, _ in per_policy.values()), sum(s for _, s in per_policy.values())
    rates["all"] = rows / seconds if seconds else 0.0
    return rates


def _raw_statement(policy: str, layout: data.Layout, *, with_outbox: bool) -> tuple[str, dict]:
    """One set-based statement per policy: the floor for what the engine does in batches."""
    seed, spec = SEED_POLICIES[policy], data.POLICIES[policy]
    table = seed.table.name
    cutoff = layout.cutoff(policy)
    if not seed.table.c[seed.timestamp].type.timezone:  # type: ignore[attr-defined]
        cutoff = cutoff.astimezone(UTC).replace(tzinfo=None)
    clause = delete(seed.table).where(
        seed.table.c[seed.timestamp] < cutoff,
        not_(active_hold_exists(seed.entity_type, seed.table.c.id, layout.now)),
    )
    compiled = clause.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    where = str(compiled).split(" WHERE ", 1)[1]
    if spec["conditions"]:
        where += f" AND ({spec['conditions']})"
    params: dict[str, Any] = {}
    if spec["action"] == "delete":
        acted = f"DELETE FROM {table} WHERE {where} RETURNING {table}.id"
    elif spec["action"] == "anonymize":
        acted = (
            f"UPDATE {table} SET customer_name = md5(customer_name), "
            f"email = 'anon-' || id || '@example.invalid', shipping_address = '[REDACTED]', "
            f"phone = NULL WHERE {where} RETURNING {table}.id"
        )
    else:
        acted = f"DELETE FROM {table} WHERE {where} RETURNING {table}.*"
    parts = [f"WITH acted AS ({acted})"]
    if spec["action"] == "archive":
        parts.append(
            f", archived AS (INSERT INTO {table}_archive_seed SELECT * FROM acted RETURNING 1)"
        )
    if with_outbox:
        parts.append(
            ", events AS (INSERT INTO retention_outbox (event_id, policy, event_type, "
            "entity_type, entity_id, legal_basis, initiated_at, deadline) "
            # The same time-ordered event ids as ours (migration 0005).
            "SELECT retention_uuidv7_nth((SELECT retention_uuidv7()), row_number() OVER ()), "
            f"'{policy}', '{spec['action']}', '{seed.entity_type}', "
            "acted.id::text, 'benchmark', now(), now() + interval '30 days' FROM acted "
            "RETURNING 1)"
        )
    parts.append(" SELECT count(*) FROM acted")
    return "".join(parts), params


async def run_raw(url: str, layout: data.Layout, *, with_outbox: bool) -> dict[str, Any]:
    engine = make_engine(url)
    per_policy: dict[str, tuple[int, float]] = {}
    try:
        for policy in data.POLICIES:
            sql, params = _raw_statement(policy, layout, with_outbox=with_outbox)
            start = time.perf_counter()
            async with engine.begin() as conn:
                rows = (await conn.execute(text(sql), params)).scalar_one()
            per_policy[policy] = (rows, time.perf_counter() - start)
    finally:
        await engine.dispose()
    return {"rates": _rates(per_policy), "rows": sum(r for r, _ in per_policy.values())}


async def run_seed(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    results = []
    try:
        async with engine.connect() as conn:
            for policy in data.POLICIES:
                results.append(await execute_policy(conn, policy))
    finally:
        await engine.dispose()
    per_policy = {r.policy: (r.processed, r.seconds) for r in results}
    return {
        "rates": _rates(per_policy),
        "rows": sum(r.processed for r in results),
        "seconds": sum(r.seconds for r in results),
        "nonterminating": [r.policy for r in results if r.nonterminating],
        "errors": [e for r in results for e in r.errors],
    }


def run_ours(url: str, policy_file: Path, timeout_s: float) -> dict[str, Any]:
    """`retention run` as a subprocess; its own per-policy durations, its peak RSS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update(RETENTION_DATABASE_URL=url, RETENTION_HASH_SECRET="bench-only-key")  # noqa: S106
    env.update(infra.signing_env())
    retention = str(Path(sys.executable).with_name("retention"))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [retention, "run", "--policies", str(policy_file), "--json"],
            stdout=out,
            stderr=err,
            env=env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"retention run exceeded {timeout_s}s")
            time.sleep(0.05)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"retention run failed ({proc.returncode}): {stderr[-2000:]}")
    report = json.loads(stdout)
    per_policy = {p["policy"]: (p["processed"], p["duration_s"]) for p in report["policies"]}
    return {
        "rates": _rates(per_policy),
        "rows": sum(r for r, _ in per_policy.values()),
        "wall_s": wall,
        "max_rss_mb": usage.ru_maxrss / 1024,
    }


# --- publish ---------------------------------------------------------------------------


def kafka_for(label: str) -> KafkaSettings:
    return KafkaSettings().model_copy(
        update={"topic_prefix": f"bench.{label}.{uuid.uuid4().hex[:8]}.data.retention"}
    )


async def delete_topics(kafka: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [t for t in Topics(kafka.topic_prefix).all() if t in existing]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def sample_events(url: str, limit: int) -> list[RetentionEvent]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(outbox.select().order_by(outbox.c.created_at).limit(limit))
            return [event_from_row(row) for row in rows]
    finally:
        await engine.dispose()


async def publish_ours(url: str, kafka: KafkaSettings) -> tuple[int, float]:
    await ensure_topics(kafka)
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE retention_outbox"))
            await conn.commit()
        async with OutboxRelay(engine, kafka, settings=RelaySettings()) as relay:
            start = time.perf_counter()
            published = await relay.drain(timeout_s=900)
            return published, time.perf_counter() - start
    finally:
        await engine.dispose()


async def publish_seed(kafka: KafkaSettings, events: list[RetentionEvent]) -> float:
    """The article's publisher: one awaited send per event (aiokafka defaults)."""
    await ensure_topics(kafka)
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:
        start = time.perf_counter()
        for event in events:
            await producer.send_and_wait(kafka.topics.events, encode(event))
        return len(events) / (time.perf_counter() - start)
    finally:
        await producer.stop()


def event_size(events: list[RetentionEvent]) -> float:
    return sum(len(encode(e)) for e in events) / len(events)


# --- rounds ----------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def one_round(
    n: int, template: str, layout: data.Layout, policy_file: Path, result: dict[str, Any]
) -> None:
    seed_events = env_int("BENCH_SEED_EVENTS", 2000)
    contestants: list[tuple[str, Callable[[], Any]]] = []

    async def raw() -> None:
        for label, with_outbox in (("raw", False), ("raw+outbox", True)):
            url = await data.copy_of(template, f"bench_{label.replace('+', '_')}")
            try:
                got = await run_raw(url, layout, with_outbox=with_outbox)
                got["check"] = await data.check(url, layout, archive="archive_seed")
                result["rounds"][n][label] = got
                say(f"round {n} {label}: {got['rates']['all']:,.0f} rows/s {got['check']}")
            finally:
                await infra.drop_database(url)

    async def seed() -> None:
        url = await data.copy_of(template, "bench_seed")
        try:
            got = await run_seed(url)
            got["check"] = await data.check(url, layout, archive="archive_seed")
            events = [
                RetentionEvent(
                    event_id=uuid.uuid4(),
                    type=EventType.DELETE,
                    entity_type="session",
                    entity_id=str(i),
                    policy="session_logs",
                    legal_basis="benchmark",
                    initiated_at=datetime.now(UTC),
                    deadline=datetime.now(UTC),
                    fields=[],
                    run_id=None,
                )
                for i in range(min(seed_events, layout.total_due))
            ]
            kafka = kafka_for("seed")
            try:
                got["publish_events_per_s"] = await publish_seed(kafka, events)
            finally:
                await delete_topics(kafka)
            result["rounds"][n]["seed"] = got
            say(
                f"round {n} seed: {got['rates']['all']:,.0f} rows/s, publish "
                f"{got['publish_events_per_s']:,.0f}/s {got['check']} {got['nonterminating']}"
            )
        finally:
            await infra.drop_database(url)

    async def ours() -> None:
        url = await data.copy_of(template, "bench_ours")
        try:
            got = run_ours(url, policy_file, timeout_s=1800)
            got["check"] = await data.check(url, layout, archive="archive")
            kafka = kafka_for("ours")
            try:
                published, seconds = await publish_ours(url, kafka)
                events = await sample_events(url, 2000)
            finally:
                await delete_topics(kafka)
            got["published"] = published
            got["publish_events_per_s"] = published / seconds
            got["event_bytes"] = event_size(events)
            result["rounds"][n]["ours"] = got
            say(
                f"round {n} ours: {got['rates']['all']:,.0f} rows/s, "
                f"rss {got['max_rss_mb']:.0f} MB,"
                f" publish {got['publish_events_per_s']:,.0f}/s {got['check']}"
            )
            await kafka_limits(n, events, published, result)
        finally:
            await infra.drop_database(url)

    contestants = [("raw", raw), ("seed", seed), ("ours", ours)]
    shift = n % len(contestants)
    for _, run in contestants[shift:] + contestants[:shift]:
        await run()


async def kafka_limits(
    n: int, events: list[RetentionEvent], count: int, result: dict[str, Any]
) -> None:
    kafka = kafka_for("perf")
    await ensure_topics(kafka)
    with tempfile.NamedTemporaryFile("wb", suffix=".payloads") as payloads:
        payloads.write(b"\n".join(encode(e) for e in events))
        payloads.flush()
        try:
            producer = kafka_tools.producer_performance(
                kafka.bootstrap_servers,
                kafka.topics.events,
                count,
                Path(payloads.name),
                RelaySettings(),
            )
            consumer = kafka_tools.consumer_performance(
                kafka.bootstrap_servers, kafka.topics.events, count
            )
        finally:
            await delete_topics(kafka)
    result["rounds"][n]["kafka"] = {"producer_per_s": producer, "consumer_per_s": consumer}
    say(f"round {n} kafka: ProducerPerformance {producer:,.0f}/s, Consumer {consumer:,.0f}/s")


def machine() -> dict[str, Any]:
    def out(*command: str) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "cores": os.cpu_count(),
        "cpu": out("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "python": platform.python_version(),
        "java": out("java", "-version"),
        "kafka": "4.1.1",
        "load_avg_at_start": os.getloadavg(),
    }


def aggregate(result: dict[str, Any]) -> dict[str, Any]:
    rounds = [r for r in result["rounds"] if "ours" in r]

    def series(path: Callable[[dict[str, Any]], float]) -> dict[str, float]:
        return summary([path(r) for r in rounds])

    agg: dict[str, Any] = {}
    for contestant in ("raw", "raw+outbox", "seed", "ours"):
        for phase in (*ACTIONS, "all"):
            agg[f"purge.{phase}.{contestant}"] = series(
                lambda r, c=contestant, p=phase: r[c]["rates"][p]
            )
    for phase in (*ACTIONS, "all"):
        agg[f"purge.{phase}.ours/raw"] = series(
            lambda r, p=phase: r["ours"]["rates"][p] / r["raw"]["rates"][p]
        )
        agg[f"purge.{phase}.ours/raw+outbox"] = series(
            lambda r, p=phase: r["ours"]["rates"][p] / r["raw+outbox"]["rates"][p]
        )
        agg[f"purge.{phase}.ours/seed"] = series(
            lambda r, p=phase: r["ours"]["rates"][p] / r["seed"]["rates"][p]
        )
    agg["publish.ours"] = series(lambda r: r["ours"]["publish_events_per_s"])
    agg["publish.seed"] = series(lambda r: r["seed"]["publish_events_per_s"])
    agg["publish.producer_performance"] = series(lambda r: r["kafka"]["producer_per_s"])
    agg["publish.consumer_performance"] = series(lambda r: r["kafka"]["consumer_per_s"])
    agg["publish.ours/producer_performance"] = series(
        lambda r: r["ours"]["publish_events_per_s"] / r["kafka"]["producer_per_s"]
    )
    agg["rss.ours_mb"] = series(lambda r: r["ours"]["max_rss_mb"])
    for key in ("held_touched", "young_touched", "due_missed", "archive_lost"):
        for contestant in ("raw", "seed", "ours"):
            agg[f"check.{contestant}.{key}"] = max(r[contestant]["check"][key] for r in rounds)
    e2e_rounds = [r["e2e"] for r in result["rounds"] if "e2e" in r]
    if e2e_rounds:
        for contestant in ("ours", "seed"):
            agg[f"e2e.{contestant}"] = summary(
                [r[contestant]["entities_per_s"] for r in e2e_rounds]
            )
            for key in ("held_touched", "young_touched", "due_missed", "users_table_wrong"):
                agg[f"e2e.check.{contestant}.{key}"] = max(
                    r[contestant]["check"][key] for r in e2e_rounds
                )
            milestones = {m for r in e2e_rounds for m in r[contestant]["milestones_s"]}
            agg[f"e2e.{contestant}.cpu_ms_per_entity"] = {
                part: statistics.median(_cpu_part(r[contestant], part) for r in e2e_rounds)
                for part in ("services", "bench", "postgres")
            }
            agg[f"e2e.{contestant}.milestones_s"] = {
                m: statistics.median(r[contestant]["milestones_s"].get(m, 0) for r in e2e_rounds)
                for m in milestones
            }
        agg["e2e.check.ours.applied_twice"] = max(
            r["ours"]["check"]["applied_twice"] for r in e2e_rounds
        )
        agg["e2e.check.ours.applied_missing"] = max(
            r["ours"]["check"]["applied_missing"] for r in e2e_rounds
        )
        agg["e2e.ours/seed"] = summary(
            [r["ours"]["entities_per_s"] / r["seed"]["entities_per_s"] for r in e2e_rounds]
        )
    return agg


def _cpu_part(got: dict[str, Any], part: str) -> float:
    """CPU ms per entity of one part of an end-to-end contestant (services summed)."""
    cpu = got["cpu_s"]
    seconds = (
        cpu.get(part, 0.0)
        if part != "services"
        else sum(v for k, v in cpu.items() if k not in ("bench", "postgres"))
    )
    return 1000 * seconds / got["entities"]


def fmt(s: dict[str, float], unit: str = "") -> str:
    if s["median"] >= 100:
        return f"{s['median']:,.0f}{unit} ({s['min']:,.0f}–{s['max']:,.0f})"
    return f"{s['median']:.2f}{unit} ({s['min']:.2f}–{s['max']:.2f})"


def table(result: dict[str, Any]) -> str:
    a, meta = result["aggregate"], result["meta"]
    lines = [
        f"**{meta['rows']:,} rows** over five tables ({meta['held']:,} held, "
        f"{meta['young']:,} young per table), {meta['rounds']} interleaved rounds, "
        f"median (min–max); {meta['machine']['cores']} cores, load average at start "
        f"{meta['machine']['load_avg_at_start'][0]:.1f} (machine shared with other work)",
        "",
        "| phase | seed (article) | ours | limit | ours / limit | goal |",
        "|---|---|---|---|---|---|",
    ]
    for phase in (*ACTIONS, "all"):
        lines.append(
            f"| purge {phase}, rows/s | {fmt(a[f'purge.{phase}.seed'])} | "
            f"{fmt(a[f'purge.{phase}.ours'])} | raw {fmt(a[f'purge.{phase}.raw'])}; "
            f"raw+outbox {fmt(a[f'purge.{phase}.raw+outbox'])} | "
            f"{fmt(a[f'purge.{phase}.ours/raw'])}; "
            f"{fmt(a[f'purge.{phase}.ours/raw+outbox'])} | ≥ 0.5 |"
        )
    lines.append(
        f"| publish, events/s ({meta['event_bytes']:.0f} B) | {fmt(a['publish.seed'])} | "
        f"{fmt(a['publish.ours'])} | ProducerPerformance "
        f"{fmt(a['publish.producer_performance'])} | "
        f"{fmt(a['publish.ours/producer_performance'])} | ≥ 0.3 |"
    )
    lines.append(
        f"| consume, events/s | – | – | ConsumerPerformance "
        f"{fmt(a['publish.consumer_performance'])} | – | – |"
    )
    if "e2e.ours" in a:
        lines.append(
            f"| end to end, entities/s ({meta['e2e_entities']:,} due of "
            f"{meta['e2e_users']:,} users × 3 services) | "
            f"{fmt(a['e2e.seed'])} | {fmt(a['e2e.ours'])} | – | ours/seed "
            f"{fmt(a['e2e.ours/seed'])} | ≥ 20 |"
        )
    lines.append(
        f"| peak RSS of `retention run`, MB | – | {fmt(a['rss.ours_mb'])} | – | – | "
        "1M ≤ 1.2 × 100k |"
    )
    lines += [
        "",
        "Correctness (worst round): "
        + "; ".join(
            f"{c}: held touched {a[f'check.{c}.held_touched']}, young touched "
            f"{a[f'check.{c}.young_touched']}, due missed {a[f'check.{c}.due_missed']}"
            for c in ("raw", "seed", "ours")
        )
        + f"; seed never terminates on: {', '.join(meta['seed_nonterminating']) or 'none'}.",
    ]
    if "e2e.ours" in a:

        def e2e_check(c: str) -> str:
            return (
                f"{c}: held users touched {a[f'e2e.check.{c}.held_touched']}, young "
                f"{a[f'e2e.check.{c}.young_touched']}, due rows missed "
                f"{a[f'e2e.check.{c}.due_missed']}"
            )

        def timeline(c: str) -> str:
            marks = sorted(a[f"e2e.{c}.milestones_s"].items(), key=lambda kv: kv[1])
            return ", ".join(f"{m} {s:.1f}" for m, s in marks)

        def cpu(c: str) -> str:
            parts = a[f"e2e.{c}.cpu_ms_per_entity"]
            return ", ".join(f"{p} {ms:.2f}" for p, ms in parts.items())

        lines += [
            "",
            "End to end, correctness (worst round): "
            + "; ".join(e2e_check(c) for c in ("seed", "ours"))
            + f"; ours applied twice {a['e2e.check.ours.applied_twice']}, missing "
            f"{a['e2e.check.ours.applied_missing']} (seed: not recorded, cannot be checked).",
            "",
            f"End to end, where the time goes (median s from the clock's start): "
            f"ours: {timeline('ours')}; seed: {timeline('seed')}. CPU ms per entity "
            f"(median): ours: {cpu('ours')}; seed: {cpu('seed')}.",
        ]
    return "\n".join(lines)


async def main() -> None:
    infra.load_infra_env()
    infra.use_test_keys()  # every benchmark runs signed
    rows, rounds = env_int("BENCH_ROWS", 100_000), env_int("BENCH_ROUNDS", 3)
    e2e_users = env_int("BENCH_E2E_USERS", 10_000)
    say(f"building the template: {rows:,} rows")
    template, layout = await data.build_template(rows, "bench_tpl")
    result: dict[str, Any] = {"rounds": [{} for _ in range(rounds)]}
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as policy_file:
            policy_file.write(data.policy_yaml())
            policy_file.flush()
            for n in range(rounds):
                await one_round(n, template, layout, Path(policy_file.name), result)
                if e2e_users:
                    got = result["rounds"][n]["e2e"] = await e2e.compare(e2e_users, n)
                    say(
                        f"round {n} e2e: ours {got['ours']['entities_per_s']:,.0f}/s "
                        f"{got['ours']['milestones_s']} {got['ours']['check']}; seed "
                        f"{got['seed']['entities_per_s']:,.0f}/s "
                        f"{got['seed']['milestones_s']} {got['seed']['check']}"
                    )
    finally:
        await infra.drop_database(template)
    ours = [r["ours"] for r in result["rounds"] if "ours" in r]
    result["meta"] = {
        "rows": layout.per_table * len(data.POLICIES),
        "held": layout.held,
        "young": layout.young,
        "rounds": rounds,
        "e2e_users": e2e_users,
        "e2e_entities": len(e2e.Users.make(e2e_users).due) if e2e_users else 0,
        "event_bytes": statistics.median(o["event_bytes"] for o in ours),
        "seed_nonterminating": sorted(
            {p for r in result["rounds"] for p in r.get("seed", {}).get("nonterminating", [])}
        ),
        "machine": machine(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    result["aggregate"] = aggregate(result)
    markdown = table(result)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / f"{stamp}.md").write_text(markdown + "\n")
    print(markdown)
    written = ".json and .md"
    if chart.draw(result, RESULTS / f"{stamp}.png"):
        written = ".json, .md and .png"
    say(f"wrote bench/results/{stamp}{written}")


if __name__ == "__main__":
    asyncio.run(main())
