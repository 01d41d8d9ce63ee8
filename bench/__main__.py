"""Benchmarks side by side: ours vs the seed article's design vs the machine's limits.

    make bench                      # BENCH_ROWS=100000
    BENCH_ROWS=1000000 make bench   # the large run

Environment: BENCH_ROWS (rows over the five seed tables), BENCH_ROUNDS (3),
BENCH_SEED_EVENTS (events the seed publishes one `send_and_wait` at a time, 2000),
BENCH_E2E_USERS (users in the end-to-end phase, 10000; 0 skips it), BENCH_E2E_ALONE_USERS
(0; else ours alone end to end once at that many users, phase `e2e.alone`),
BENCH_E2E_REPLICAS (ours' `retention serve` replicas end to end, 2), BENCH_WARMUP_RECORDS
(records the Java producer sends before its timed run, 200000), BENCH_KAFKA_LIB.
Writes one bench/results/<UTC timestamp>.json in the fixed schema of bench/results.py
(commit it) and prints its table; `make bench-docs` renders the newest file into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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
from sqlalchemy import delete, not_, text
from sqlalchemy.dialects import postgresql

from bench import data, e2e, kafka_tools, results
from bench.seed_executor import execute_policy
from coordinator.copies.crypto.provider import write_kek
from coordinator.kafka import admin
from coordinator.kafka.admin import ensure_topics
from coordinator.outbox import lookup
from coordinator.outbox.relay import OutboxRelay, event_from_row
from coordinator.purge.holds import active_hold_exists
from coordinator.settings import RelaySettings
from coordinator.store.db import make_engine
from coordinator.store.tables import anonymize_marks, outbox_marks
from demo.keys import ensure_keys
from demo.seed_data import SEED_POLICIES
from schemas import EventType, KafkaSettings, RetentionEvent, Topics, encode
from tests import infra
from tests.infra import ROOT

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
            # One outbox batch row with the entity ids, as ours writes it.
            ", events AS (INSERT INTO retention_outbox_batches (seq, id_base, id_first, "
            "events, policy, event_type, entity_type, legal_basis, initiated_at, deadline, "
            "entity_ids) "
            "SELECT (SELECT coalesce(max(seq), 0) + 1 FROM retention_outbox_batches), "
            "retention_uuidv7_nth(retention_uuidv7(), 0), 1, count(*), "
            f"'{policy}', '{spec['action']}', '{seed.entity_type}', 'benchmark', now(), "
            "now() + interval '30 days', array_agg(acted.id::text ORDER BY acted.id) "
            "FROM acted RETURNING 1)"
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
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as keys,
    ):
        # The archive policy seals its rows under data keys wrapped by a KEK.
        write_kek(Path(keys) / "kek.hex")
        env["RETENTION_KEK_FILE"] = str(Path(keys) / "kek.hex")
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
        "per_policy": {p: {"rows": n, "seconds": s} for p, (n, s) in per_policy.items()},
        "wall_s": wall,
        "max_rss_mb": usage.ru_maxrss / 1024,
    }


async def forget_marks(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(anonymize_marks))
    finally:
        await engine.dispose()


# --- publish ---------------------------------------------------------------------------


def kafka_for(label: str) -> KafkaSettings:
    return KafkaSettings().model_copy(
        update={"topic_prefix": f"bench.{label}.{uuid.uuid4().hex[:8]}.data.retention"}
    )


async def delete_topics(kafka: KafkaSettings) -> None:
    await admin.delete_topics(kafka, Topics(kafka.topic_prefix).all())


async def sample_events(url: str, limit: int) -> list[RetentionEvent]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(lookup.events().limit(limit))
            return [event_from_row(row) for row in rows]
    finally:
        await engine.dispose()


async def publish_ours(
    url: str, kafka: KafkaSettings, settings: RelaySettings
) -> tuple[int, float]:
    await ensure_topics(kafka)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            # A second pass over the same outbox starts from an empty watermark.
            await conn.execute(delete(outbox_marks))
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE retention_outbox_batches"))
            await conn.commit()
        async with OutboxRelay(engine, kafka, settings=settings) as relay:
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
            # Nothing is due any more: an anonymize re-run starts after its mark
            # (coordinator/purge/marks.py); with the mark deleted it walks (and row-locks)
            # every row it anonymized, as every re-run did before marks.
            anonymize = [p for p, spec in data.POLICIES.items() if spec["action"] == "anonymize"]

            def anonymize_s(report: dict[str, Any]) -> float:
                return sum(report["per_policy"][p]["seconds"] for p in anonymize)

            rerun = run_ours(url, policy_file, timeout_s=1800)
            await forget_marks(url)
            full_walk = run_ours(url, policy_file, timeout_s=1800)
            got["anonymize"] = {
                "rows": sum(got["per_policy"][p]["rows"] for p in anonymize),
                "first_s": anonymize_s(got),
                "rerun_s": anonymize_s(rerun),
                "full_walk_s": anonymize_s(full_walk),
            }
            kafka = kafka_for("ours")
            try:
                published, seconds = await publish_ours(url, kafka, RelaySettings())
                events = await sample_events(url, 2000)
            finally:
                await delete_topics(kafka)
            got["published"] = published
            got["publish_events_per_s"] = published / seconds
            # The same outbox again, through the relay's librdkafka producer (the fast extra).
            kafka = kafka_for("ours_fast")
            try:
                published, seconds = await publish_ours(
                    url, kafka, RelaySettings(producer="confluent")
                )
            finally:
                await delete_topics(kafka)
            got["publish_confluent_events_per_s"] = published / seconds
            got["event_bytes"] = event_size(events)
            result["rounds"][n]["ours"] = got
            say(
                f"round {n} ours: {got['rates']['all']:,.0f} rows/s, "
                f"rss {got['max_rss_mb']:.0f} MB,"
                f" publish {got['publish_events_per_s']:,.0f}/s"
                f" (confluent {got['publish_confluent_events_per_s']:,.0f}/s) {got['check']}"
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
    warmup = env_int("BENCH_WARMUP_RECORDS", 200_000)
    with tempfile.NamedTemporaryFile("wb", suffix=".payloads") as payloads:
        payloads.write(b"\n".join(e.key.encode() + b"\t" + encode(e) for e in events))
        payloads.flush()
        try:
            producer = kafka_tools.producer_limit(
                kafka,
                kafka.topics.events,
                warmup,
                count,
                Path(payloads.name),
                RelaySettings(),
            )
            # The warm-up records are on the topic too: read them all.
            consumer = kafka_tools.consumer_performance(kafka, kafka.topics.events, warmup + count)
        finally:
            await delete_topics(kafka)
    result["rounds"][n]["kafka"] = {"producer_per_s": producer, "consumer_per_s": consumer}
    say(f"round {n} kafka: Java producer {producer:,.0f}/s, Consumer {consumer:,.0f}/s")


def machine() -> dict[str, Any]:
    def out(*command: str) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "cores": os.cpu_count(),
        "cpu": out("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "python": platform.python_version(),
        "java": out("java", "-version"),
        "kafka": "4.1.1",
        "postgres": "?",
    }


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=ROOT, check=False
        ).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    # Only tracked files count: the run's own result file is untracked until committed.
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def phases(result: dict[str, Any], rows: int) -> dict[str, Any]:
    """The fixed-schema phases (bench/results.py) from the rounds' raw measurements."""
    rounds = [r for r in result["rounds"] if "ours" in r]
    got: dict[str, Any] = {}
    for action in (*ACTIONS, "all"):
        for suffix, limit in (("", "raw"), (".same_work", "raw+outbox")):
            got[f"purge.{action}{suffix}"] = results.phase(
                f"purge.{action}{suffix}",
                rows,
                [
                    {
                        "ours": r["ours"]["rates"][action],
                        "seed": r["seed"]["rates"][action],
                        "limit": r[limit]["rates"][action],
                    }
                    for r in rounds
                ],
            )
    got["anonymize.rerun"] = results.phase(
        "anonymize.rerun",
        rounds[0]["ours"]["anonymize"]["rows"],
        [
            {
                "ours": r["ours"]["anonymize"]["rerun_s"],
                "limit": r["ours"]["anonymize"]["full_walk_s"],
            }
            for r in rounds
        ],
    )
    published = statistics.median(r["ours"]["published"] for r in rounds)
    got["publish"] = results.phase(
        "publish",
        int(published),
        [
            {
                "ours": r["ours"]["publish_events_per_s"],
                "seed": r["seed"]["publish_events_per_s"],
                "limit": r["kafka"]["producer_per_s"],
            }
            for r in rounds
        ],
    )
    confluent = [r for r in rounds if "publish_confluent_events_per_s" in r["ours"]]
    if confluent:
        got["publish.confluent"] = results.phase(
            "publish.confluent",
            int(published),
            [
                {
                    "ours": r["ours"]["publish_confluent_events_per_s"],
                    "seed": r["seed"]["publish_events_per_s"],
                    "limit": r["kafka"]["producer_per_s"],
                }
                for r in confluent
            ],
        )
    got["consume"] = results.phase(
        "consume", int(published), [{"limit": r["kafka"]["consumer_per_s"]} for r in rounds]
    )
    got["rss"] = results.phase("rss", rows, [{"ours": r["ours"]["max_rss_mb"]} for r in rounds])
    e2e_rounds = [r["e2e"] for r in result["rounds"] if "e2e" in r]
    if e2e_rounds:
        got["e2e"] = results.phase(
            "e2e",
            e2e_rounds[0]["ours"]["entities"],
            [
                {"ours": r["ours"]["entities_per_s"], "seed": r["seed"]["entities_per_s"]}
                for r in e2e_rounds
            ],
        )
    if "e2e_alone" in result:
        alone = result["e2e_alone"]
        got["e2e.alone"] = results.phase(
            "e2e.alone", alone["entities"], [{"ours": alone["entities_per_s"]}]
        )
    return got


def checks(result: dict[str, Any]) -> dict[str, int]:
    """Worst round's count of each correctness check (0 is right for ours)."""
    rounds = [r for r in result["rounds"] if "ours" in r]
    got: dict[str, int] = {}
    for contestant in ("raw", "seed", "ours"):
        for key in ("held_touched", "young_touched", "due_missed", "archive_lost"):
            got[f"{contestant}.{key}"] = max(r[contestant]["check"][key] for r in rounds)
    e2e_rounds = [r["e2e"] for r in result["rounds"] if "e2e" in r]
    for contestant in ("seed", "ours") if e2e_rounds else ():
        keys = ["held_touched", "young_touched", "due_missed", "users_table_wrong"]
        if contestant == "ours":
            keys += ["applied_twice", "applied_missing"]
        for key in keys:
            got[f"e2e {contestant}.{key}"] = max(r[contestant]["check"][key] for r in e2e_rounds)
    for key, value in result.get("e2e_alone", {}).get("check", {}).items():
        got[f"e2e ours alone.{key}"] = value
    return got


def e2e_detail(result: dict[str, Any]) -> dict[str, Any]:
    e2e_rounds = [r["e2e"] for r in result["rounds"] if "e2e" in r]
    detail: dict[str, Any] = {}
    contestants = {c: [r[c] for r in e2e_rounds] for c in ("ours", "seed") if e2e_rounds}
    if "e2e_alone" in result:
        contestants["ours_alone"] = [result["e2e_alone"]]
    for contestant, runs in contestants.items():
        marks = {m for got in runs for m in got["milestones_s"]}
        detail[contestant] = {
            "milestones_s": {
                m: statistics.median(got["milestones_s"].get(m, 0) for got in runs) for m in marks
            },
            "cpu_ms_per_entity": {
                part: statistics.median(_cpu_part(got, part) for got in runs)
                for part in _cpu_parts(runs)
            },
        }
    return detail


_NOT_SERVICES = ("bench", "postgres", "postgres_services", "poller", "postgres_server", "kafka")
"""The parts of a contestant's `cpu_s` that are not its service processes (bench/e2e.py
`_report`). `postgres_services` is a share of `postgres`, and the whole servers overlap
it: each is reported apart, none is added to another."""


def _is_replica(process: str) -> bool:
    """Ours' `retention serve` replicas ("serve-1", ...), as bench/e2e.py names them."""
    return process.startswith("serve-")


def _cpu_parts(runs: list[dict[str, Any]]) -> list[str]:
    """The parts reported: the services summed, `serve` (the replicas summed) and each
    replica where there are any, then this process, PostgreSQL, the poller and the whole
    servers, those the runs measured."""
    replicas = sorted({p for got in runs for p in got["cpu_s"] if _is_replica(p)})
    measured = {p for got in runs for p in got["cpu_s"]}
    return [
        "services",
        *(["serve", *replicas] if replicas else []),
        *(p for p in _NOT_SERVICES if p in measured),
    ]


def _cpu_part(got: dict[str, Any], part: str) -> float:
    """CPU ms per entity of one part of an end-to-end contestant (services and replicas
    each summed)."""
    cpu = got["cpu_s"]
    if part == "services":
        seconds = sum(v for k, v in cpu.items() if k not in _NOT_SERVICES and not _is_replica(k))
    elif part == "serve":
        seconds = sum(v for k, v in cpu.items() if _is_replica(k))
    else:
        seconds = cpu.get(part, 0.0)
    return 1000 * seconds / got["entities"]


async def postgres_version(url: str) -> str:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return str((await conn.execute(text("SHOW server_version"))).scalar_one())
    finally:
        await engine.dispose()


async def main() -> None:
    infra.load_infra_env()
    infra.use_test_keys()  # every benchmark runs signed
    # The template's entity types come from demo/policies.yaml, which names the demo's
    # public key files: on a fresh clone only `make demo` would have made them.
    ensure_keys()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = list(os.getloadavg())
    rows, rounds = env_int("BENCH_ROWS", 100_000), env_int("BENCH_ROUNDS", 3)
    e2e_users = env_int("BENCH_E2E_USERS", 10_000)
    e2e_alone_users = env_int("BENCH_E2E_ALONE_USERS", 0)
    say(f"building the template: {rows:,} rows")
    template, layout = await data.build_template(rows, "bench_tpl")
    raw: dict[str, Any] = {"rounds": [{} for _ in range(rounds)]}
    try:
        pg_version = await postgres_version(template)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as policy_file:
            policy_file.write(data.policy_yaml())
            policy_file.flush()
            for n in range(rounds):
                await one_round(n, template, layout, Path(policy_file.name), raw)
                if e2e_users:
                    got = raw["rounds"][n]["e2e"] = await e2e.compare(e2e_users, n)
                    say(
                        f"round {n} e2e: ours {got['ours']['entities_per_s']:,.0f}/s "
                        f"{got['ours']['check']}; seed {got['seed']['entities_per_s']:,.0f}/s "
                        f"{got['seed']['check']}"
                    )
            if e2e_alone_users:
                alone = raw["e2e_alone"] = await e2e.alone(e2e_alone_users)
                say(f"e2e ours alone: {alone['entities_per_s']:,.0f}/s {alone['check']}")
    finally:
        await infra.drop_database(template)
    ours = [r["ours"] for r in raw["rounds"] if "ours" in r]
    total = layout.per_table * len(data.POLICIES)
    result = {
        "schema": results.SCHEMA,
        "commit": commit(),
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "postgres": pg_version},
        "load": {"start": load_start, "end": list(os.getloadavg())},
        "settings": {
            "rows": total,
            "rounds": rounds,
            "held": layout.held,
            "young": layout.young,
            "e2e_users": e2e_users,
            "e2e_entities": len(e2e.Users.make(e2e_users).due) if e2e_users else 0,
            "e2e_alone_users": e2e_alone_users,
            "e2e_replicas": e2e.replicas() if e2e_users or e2e_alone_users else 0,
            "seed_events": env_int("BENCH_SEED_EVENTS", 2000),
            "warmup_records": env_int("BENCH_WARMUP_RECORDS", 200_000),
            "event_bytes": statistics.median(o["event_bytes"] for o in ours),
            "seed_nonterminating": sorted(
                {p for r in raw["rounds"] for p in r.get("seed", {}).get("nonterminating", [])}
            ),
        },
        "phases": phases(raw, total),
        "checks": checks(raw),
        "e2e": e2e_detail(raw),
    }
    path = results.write(result, datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    print(results.markdown(path, result))
    say(f"wrote bench/results/{path.name}; `make bench-docs` renders it into docs/benchmarks.md")


if __name__ == "__main__":
    # No options (the environment above configures a run), but `--help` must not start one.
    argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    asyncio.run(main())
