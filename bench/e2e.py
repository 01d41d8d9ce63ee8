"""End to end: users erased locally, then by the example services, until the effects are done.

Both contestants get the same world: a `bench_users` table (1 % held — the oldest —,
5 % young, the rest due), the same rows (each service's own seed) in the tables of the
example services on the core SDK (`services.EXAMPLES`) in a fresh service database, a
legal hold on the held users (ours in `legal_holds`, the article's as a JSON blob in
`seed_legal_holds`), a fresh topic prefix. Service processes are started and ready
(`partitions_assigned`) before the clock.

* Ours, deployed as in production: `retention serve` replicas as processes of their own
  (BENCH_E2E_REPLICAS, default 2), the relay leader-elected among them each round, the
  tracker on every replica in one consumer group over the acks topic's six partitions.
  The replicas are started and ready (services registered, the group's partitions handed
  out) before the clock. Then `Runner` purges `bench_users` (policy `inactive_users`,
  fan-out) in the bench process: that is what the leader's scheduler does when a schedule
  fires (`Runner.run` in a process already running; a `retention run` process would add
  its interpreter's start, ~1 s, which no scheduled run pays), and it keeps the purge's
  CPU apart from the replicas'. The relay publishes the batches as they commit (the
  scheduler's drain after the run would find nothing left). Those are our example
  services (the SDK, batch transactions, acks); the clock stops when the trackers have
  every event `completed` — the product knows it is done.
* Seed: the article's executor loop on `bench_users` (bench/seed_executor.py's hold
  check) publishing the article's JSON message with one awaited `send_and_wait` per
  event after each batch; one bench/seed_consumer.py process per service (one message
  at a time, a transaction per effect, auto-commit, no acks). The article cannot know
  when it is done, so the bench watches from outside: the clock stops when no due
  user's row is left in any of the service tables.

A background poller records when each milestone was first reached (published, each
service's effects visible, completed), which is where the time goes; each service
process's and serve replica's CPU seconds are read from /proc. Afterwards both are
checked the same way: held and young users untouched everywhere, due users' rows gone
(or, in a table with an `anonymized_at` column such as billing's orders, anonymized and
unlinked), and for ours each event applied exactly once per service (its `erasure_log`;
the seed keeps no such record, so a redelivered message would be applied again unseen).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer
from sqlalchemy import ARRAY, Select, Text, any_, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench.proc_cpu import backend_cpu, cpu_seconds, family_cpu_seconds, parent_pid
from bench.seed_executor import check_ids, in_params
from coordinator.clock import SystemClock
from coordinator.outbox.lookup import event_counts, tracked_up_to
from coordinator.policy.model import parse_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.tables import event_status, outbox_batches
from services import EXAMPLES
from tests import declared, infra
from tests.e2e.harness import (
    PRODUCT_SERVICES,
    ServiceProcess,
    Stack,
    erasure_counts,
    has_registered,
    isolated_stack,
    stable_members,
    wait_for,
)
from tests.infra import ROOT

POLICY = """
policies:
  - name: inactive_users
    table: bench_users
    entity_type: user
    timestamp_column: last_seen
    retention: 365d
    action: delete
    legal_basis: benchmark
    fan_out: true
"""


def policy_file() -> str:
    """The policy and the services the bench runs, declared (SPEC §9)."""
    services = declared.services_block(PRODUCT_SERVICES)
    return POLICY + yaml.safe_dump({"services": services}, sort_keys=False)


BATCH_SIZE = 5000  # the article's, and the policy's default
PARTITIONS = 6
"""Partitions of every topic, for both contestants: what `retention serve` creates
(`RETENTION_SERVE_TOPIC_PARTITIONS`), so acks (keyed by event id) spread over up to six
tracker replicas; with the tests' three, two replicas would split them 2:1."""
NEVER = "0 0 29 2 *"
"""The replicas' global schedule: next on 29 February, never during a run."""
TIMEOUT_S = 1200
SEED_CHUNK = 50_000
# The poller's shortest interval; each poll is one query per pending milestone. At 0.2 s a
# 4 s run's `completed` was noticed 0.1 s late on average (2.5 %, not the ~2 % promised).
POLL_S = 0.05
POLL_GROWTH = 0.02  # and its interval as a fraction of the time so far
HELD_FRACTION, YOUNG_FRACTION = 0.01, 0.05
BENCHED = [e for e in EXAMPLES if e.name in PRODUCT_SERVICES]
"""The example services the bench runs: those on the core SDK, which `bench.seed_consumer`
reimplements."""
TABLES = {e.name: e.tables[0] for e in BENCHED}
ROWS_PER_USER = {e.name: len(e.seed_rows(["bench"])[TABLES[e.name]]) for e in BENCHED}
"""The rows each service's own seed gives a user."""
KEPT = [name for name, table in TABLES.items() if "anonymized_at" in table.c]
"""Services that keep a deleted user's rows, anonymized and unlinked (billing's orders)."""


def timeout_s(users: Users) -> float:
    """How long a contestant may take: TIMEOUT_S, plus 10 ms per due user past 100k."""
    return TIMEOUT_S + max(0, len(users.due) - 100_000) / 100


@dataclass(frozen=True)
class Users:
    held: list[str]
    due: list[str]
    young: list[str]

    @classmethod
    def make(cls, count: int) -> Users:
        held = max(1, int(count * HELD_FRACTION))
        young = max(1, int(count * YOUNG_FRACTION))
        return cls(
            held=[f"bench-held-{i:07d}" for i in range(held)],
            due=[f"bench-due-{i:07d}" for i in range(count - held - young)],
            young=[f"bench-young-{i:07d}" for i in range(young)],
        )

    @property
    def all(self) -> list[str]:
        return self.held + self.due + self.young


# --- the world both contestants start from --------------------------------------------


async def _prepare(stack: Stack, users: Users) -> None:
    now = datetime.now(UTC)
    engine = stack.engine()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE bench_users (id text PRIMARY KEY, last_seen timestamptz)")
            )
            # Inserted oldest first (held, due, young): the physical order `LIMIT` returns.
            for group, age in ((users.held, 800), (users.due, 400), (users.young, 10)):
                await conn.execute(
                    text("INSERT INTO bench_users SELECT unnest(CAST(:ids AS text[])), :at"),
                    {"ids": group, "at": now - timedelta(days=age)},
                )
            await create_hold(
                conn,
                types=await entity_types(conn, parse_policies(policy_file())),
                entities=[f"user:{u}" for u in users.held],
                reason="bench",
                created_by="bench",
                now=now,
            )
            await conn.execute(
                text(
                    "CREATE TABLE seed_legal_holds (id text PRIMARY KEY, reason text, "
                    "tables text, record_ids text, created_by text, "
                    "created_at timestamptz, expires_at timestamptz)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO seed_legal_holds VALUES ('hold-bench', 'bench', 'bench_users', "
                    ":ids, 'bench', now(), NULL)"
                ),
                {"ids": json.dumps({"bench_users": users.held})},
            )
            await conn.execute(text("ANALYZE bench_users"))
    finally:
        await engine.dispose()
    for example in BENCHED:
        # In chunks: a million users' rows at once would be gigabytes of parameters.
        for at in range(0, len(users.all), SEED_CHUNK):
            await example.seed(stack.services_url, users.all[at : at + SEED_CHUNK])
    # A service's tables in production have statistics; freshly filled ones have none
    # until autovacuum gets to them, mid-run or not at all, and without them PostgreSQL
    # planned billing's set-based UPDATE (joined to the batch's ids) as a hash join over
    # every order: 94-110 ms a batch at 200,000 orders against 8-13 ms by the index.
    services = make_engine(stack.services_url)
    try:
        async with services.begin() as conn:
            for table in TABLES.values():
                await conn.execute(text(f"ANALYZE {table.fullname}"))
    finally:
        await services.dispose()


# --- measuring ------------------------------------------------------------------------


def _due_rows(service: str) -> Any:
    """Rows of due users still linked in one service's table (0 = its effects are done)."""
    table = TABLES[service]
    return (
        select(func.count()).select_from(table).where(table.c.user_id.like("bench-due-%"))
    ).scalar_subquery()


Check = Callable[[AsyncConnection], Awaitable[bool]]
"""A milestone's condition, asked on the poller's own connection to one database."""


def poll_interval(elapsed_s: float) -> float:
    """The poller's wait after a round of checks `elapsed_s` into the run.

    2 % of the time so far (never below POLL_S): a milestone is recorded at most ~2 %
    late, and a run of T seconds costs O(log T) polls, not O(T).
    """
    return max(POLL_S, POLL_GROWTH * elapsed_s)


class Milestones:
    """Polls conditions in the background; records when each first held (s from start).

    The poller has one connection per database it asks (autocommit, so no snapshot is
    held across polls and vacuum is not held back) and remembers their backends, so
    its database work is reported apart from the contestants' (`poller_pids`).
    """

    def __init__(self, urls: dict[str, str], checks: dict[str, tuple[str, Check]]) -> None:
        self.urls = urls
        self.checks = dict(checks)
        self.at: dict[str, float] = {}
        self.polls = 0
        self.poller_pids: list[int] = []
        self.start = time.perf_counter()
        self._engines: list[AsyncEngine] = []
        self._conns: dict[str, AsyncConnection] = {}
        self._task: asyncio.Task[None] | None = None

    def mark(self, name: str) -> None:
        self.at.setdefault(name, round(time.perf_counter() - self.start, 2))

    async def open(self) -> None:
        """Connect (before the clock: connecting is not part of either contestant)."""
        for database, url in self.urls.items():
            engine = make_engine(url, pool_size=1)
            self._engines.append(engine)
            conn = await engine.connect()
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conns[database] = conn
            self.poller_pids.append(int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0))

    async def _poll(self) -> None:
        while self.checks:
            self.polls += 1
            for name, (database, check) in list(self.checks.items()):
                if await check(self._conns[database]):
                    self.mark(name)
                    del self.checks[name]
            await asyncio.sleep(poll_interval(time.perf_counter() - self.start))

    def begin(self) -> None:
        self.start = time.perf_counter()
        self._task = asyncio.create_task(self._poll(), name="milestones")

    def done(self, name: str) -> bool:
        if self._task is not None and self._task.done() and self._task.exception():
            raise self._task.exception()  # type: ignore[misc]
        return name in self.at

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for conn in self._conns.values():
            await conn.close()
        for engine in self._engines:
            await engine.dispose()


def first_linked(service: str, low: str, high: str) -> Select[tuple[Any]]:
    """The lowest `user_id` from `low` to `high` still in one service's table."""
    user_id = TABLES[service].c.user_id
    return select(user_id).where(user_id.between(low, high)).order_by(user_id).limit(1)


def _service_checks(users: Users) -> dict[str, tuple[str, Check]]:
    """Per service: no due user's row left linked.

    The due ids share a prefix and differ only in fixed-width digits, so in any collation
    the range from the first to the last holds them all and no held or young id. Each
    poll reads the range's first linked row through the `user_id` index (ORDER BY …
    LIMIT 1: an index scan whatever the statistics) and starts the next poll there, since
    a due row that is gone never comes back: a poll never counts the table, nor walks the
    rows already gone again.
    """
    last = users.due[-1]
    floor = dict.fromkeys(PRODUCT_SERVICES, users.due[0])

    async def none_left(service: str, conn: AsyncConnection) -> bool:
        found = await conn.scalar(first_linked(service, floor[service], last))
        if found is None:
            return True
        floor[service] = found
        return False

    return {s: ("services", partial(none_left, s)) for s in PRODUCT_SERVICES}


def _ours_checks(users: Users) -> dict[str, tuple[str, Check]]:
    """Ours' `published` and `completed`, from the outbox's batch rows (one per purge
    batch), the relay's watermark, the tracker's cursor and the partial index of open
    events: none of them reads a row per event."""
    due = len(users.due)

    async def published(conn: AsyncConnection) -> bool:
        return await event_counts(conn) == (due, due)

    async def completed(conn: AsyncConnection) -> bool:
        events, _ = await event_counts(conn)
        last = await conn.scalar(select(func.max(outbox_batches.c.seq)))
        if events != due or await tracked_up_to(conn) < (last or 0):
            return False  # some event has no status row yet
        # ix_retention_event_status_open, spelled as its predicate and read in its order
        # (an index scan whatever the statistics), stops at the first open event.
        still_open = (
            select(literal(1))
            .select_from(event_status)
            .where(text("state <> 'completed'"))
            .order_by(event_status.c.next_reminder_at)
            .limit(1)
        )
        return await conn.scalar(still_open) is None

    return {
        "published": ("coordinator", published),
        **_service_checks(users),
        "completed": ("coordinator", completed),
    }


def _cpu_seconds(process: ServiceProcess) -> float:
    assert process.proc is not None
    return cpu_seconds(process.proc.pid)


async def _check(stack: Stack, users: Users, *, ours: bool) -> dict[str, Any]:
    """Held and young users untouched, due users' effects applied (once, where recorded)."""
    engine = make_engine(stack.services_url)
    coordinator = stack.engine()
    try:
        async with engine.connect() as conn:

            async def rows(service: str, ids: list[str]) -> int:
                table = TABLES[service]
                # One array parameter: an IN list of 50,000 young users (1M users) would
                # pass the driver's limit of 32,767 parameters.
                query = (
                    select(func.count())
                    .select_from(table)
                    .where(table.c.user_id == any_(literal(ids, ARRAY(Text))))
                )
                if service in KEPT:
                    query = query.where(table.c.anonymized_at.is_(None))
                return int(await conn.scalar(query) or 0)

            touched = {"held": 0, "young": 0}
            due_left = 0
            for service, per_user in ROWS_PER_USER.items():
                touched["held"] += per_user * len(users.held) - await rows(service, users.held)
                touched["young"] += per_user * len(users.young) - await rows(service, users.young)
                due_left += int(await conn.scalar(select(_due_rows(service))) or 0)
            anonymized = 0
            for service in KEPT:
                table = TABLES[service]
                unlinked = table.c.user_id.is_(None), table.c.anonymized_at.is_not(None)
                anonymized += int(
                    await conn.scalar(select(func.count()).select_from(table).where(*unlinked)) or 0
                )
            kept_rows = sum(ROWS_PER_USER[service] for service in KEPT) * len(users.due)
        async with coordinator.connect() as conn:
            kept = await conn.scalar(text("SELECT count(*) FROM bench_users"))
    finally:
        await engine.dispose()
        await coordinator.dispose()
    result: dict[str, Any] = {
        "held_touched": touched["held"],
        "young_touched": touched["young"],
        "due_missed": due_left + kept_rows - anonymized,
        "users_table_wrong": abs(int(kept or 0) - len(users.held) - len(users.young)),
    }
    if ours:
        counts = await erasure_counts(stack.services_url)
        result["applied_twice"] = sum(
            1 for per_event in counts.values() for n in per_event.values() if n > 1
        )
        result["applied_missing"] = sum(
            len(users.due) - len(counts.get(service, {})) for service in PRODUCT_SERVICES
        )
    else:
        result["applied_twice"] = None  # the article records nothing a bench could count
    return result


def _urls(stack: Stack) -> dict[str, str]:
    return {"coordinator": stack.coordinator_url, "services": stack.services_url}


async def _backend_cpu(stack: Stack, milestones: Milestones) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving this stack's two databases.

    The server is local (the bench reads /proc); backends are pooled and live through
    the round, so the difference of two snapshots is the database's work for it. The
    milestone poller's backends are included here and split off by `_backend_cpu_parts`.
    """
    names = [url.rpartition("/")[2] for url in (stack.coordinator_url, stack.services_url)]
    return await backend_cpu(
        infra.with_database(stack.coordinator_url, "postgres"), names, also=milestones.poller_pids
    )


async def _backend_cpu_parts(
    stack: Stack, milestones: Milestones, before: dict[int, float], cpu: dict[str, float]
) -> None:
    """Fill in `postgres` (the contestant's backends), `postgres_services` (those of
    them serving the service database) and `poller` (the milestone poller's backends,
    which neither contestant would run in production)."""
    after = await _backend_cpu(stack, milestones)
    delta = {pid: value - before.get(pid, 0.0) for pid, value in after.items()}
    poller = set(milestones.poller_pids)
    cpu["postgres"] = sum(v for pid, v in delta.items() if pid not in poller)
    # The services' share on its own: their statements and the coordinator's are tuned
    # apart, and the total hides which one moved.
    services = await backend_cpu(
        infra.with_database(stack.coordinator_url, "postgres"),
        [stack.services_url.rpartition("/")[2]],
    )
    cpu["postgres_services"] = sum(
        v for pid, v in delta.items() if pid in services and pid not in poller
    )
    cpu["poller"] = sum(v for pid, v in delta.items() if pid in poller)


async def _servers(stack: Stack) -> dict[str, tuple[int, Callable[[int], float]]]:
    """The whole broker ("kafka", when this project's scripts started it: its pid file)
    and the whole PostgreSQL server ("postgres_server": the postmaster and every process
    it forked, those that ended meanwhile too), each with how its CPU is read.

    Both serve any client, so on a quiet machine they add what the per-process figures
    leave out (the broker; autovacuum and parallel workers), and elsewhere they include
    other work."""
    servers: dict[str, tuple[int, Callable[[int], float]]] = {}
    engine = make_engine(infra.with_database(stack.coordinator_url, "postgres"))
    try:
        async with engine.connect() as conn:
            backend = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            # While the connection is open: its backend exits with it.
            servers["postgres_server"] = (parent_pid(backend), family_cpu_seconds)
    finally:
        await engine.dispose()
    pid_file = ROOT / ".cache" / "kafka" / "broker.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        # A pid file left by a broker that stopped (or whose pid was reused) is no broker.
        pid = int(pid_file.read_text().split()[0])
        if b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes():
            servers["kafka"] = (pid, cpu_seconds)
    return servers


def _servers_cpu(servers: dict[str, tuple[int, Callable[[int], float]]]) -> dict[str, float]:
    """Each server's CPU seconds so far; one that has ended (a broker a test restarted) is
    left out."""
    cpu: dict[str, float] = {}
    for name, (pid, read) in servers.items():
        with contextlib.suppress(OSError):
            cpu[name] = read(pid)
    return cpu


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(
    users: Users, seconds: float, milestones: Milestones, cpu: dict[str, float]
) -> dict[str, Any]:
    return {
        "entities": len(users.due),
        "seconds": round(seconds, 2),
        "entities_per_s": len(users.due) / seconds,
        "milestones_s": dict(sorted(milestones.at.items(), key=lambda kv: kv[1])),
        "polls": milestones.polls,
        # "bench": this process — ours: the purge (`Runner`); seed: its executor and
        # publisher. Both include the milestone poller's Python side (one query per
        # pending milestone per poll, O(log T) polls). "serve-N": ours' replicas.
        # "postgres": the backends serving this round's two databases, except the
        # poller's; "postgres_services": those of them serving the service database;
        # "poller": the poller's backends, reported apart; "postgres_server" and "kafka":
        # the whole servers (`_servers`).
        "cpu_s": {name: round(value, 2) for name, value in cpu.items()},
    }


# --- ours -----------------------------------------------------------------------------


def replicas() -> int:
    """How many `retention serve` replicas ours runs: BENCH_E2E_REPLICAS, default 2."""
    count = int(os.environ.get("BENCH_E2E_REPLICAS", 2))
    if count < 1:
        raise ValueError(f"BENCH_E2E_REPLICAS must be at least 1, not {count}")
    return count


def serve_env() -> dict[str, str]:
    """Settings of the bench's `serve` replicas that differ from the product's defaults."""
    return {
        # The bench starts the purge itself (below); no scheduled run may fire meanwhile.
        "RETENTION_SCHEDULE": NEVER,
        # The relay's idle sleep stays the product's: the purge's commits wake it
        # (docs/relay.md, "Waking up"); polling faster only costs serve CPU.
    }


async def _start_replicas(stack: Stack, count: int, policies: Path) -> list[ServiceProcess]:
    """`count` serve replicas, ready: services registered, every replica's tracker a
    member of the acks consumer group with its partitions handed out."""
    started = [
        stack.add_serve(f"serve-{n}", policies, env=serve_env()) for n in range(1, count + 1)
    ]
    for replica in started:
        replica.start()

    def alive() -> None:
        for replica in started:
            replica.check_alive()

    await wait_for(
        partial(has_registered, stack, PRODUCT_SERVICES),
        timeout_s=60,
        what="registrations",
        alive=alive,
    )
    await wait_for(
        lambda: _group_is(stack, count),
        timeout_s=60,
        what=f"{count} trackers in the acks consumer group",
        interval_s=0.2,
        alive=alive,
    )
    return started


async def _group_is(stack: Stack, count: int) -> bool:
    return await stable_members(stack.kafka, stack.tracker_group) == count


async def _ours(
    users: Users, log_dir: Path, label: str, *, serve_replicas: int | None = None
) -> dict[str, Any]:
    count = serve_replicas or replicas()
    async with isolated_stack(
        infra.database_url(),
        infra.KafkaSettings().bootstrap_servers,
        label,
        log_dir,
        partitions=PARTITIONS,
    ) as stack:
        await _prepare(stack, users)
        await stack.start_services(*PRODUCT_SERVICES)
        policies = log_dir / f"{label}.policies.yaml"
        policies.write_text(policy_file())
        serve = await _start_replicas(stack, count, policies)
        coordinator = stack.engine()
        try:
            milestones = Milestones(_urls(stack), _ours_checks(users))
            await milestones.open()
            processes = [stack.processes[s] for s in PRODUCT_SERVICES] + serve
            servers = await _servers(stack)
            cpu_before = {p.name: _cpu_seconds(p) for p in processes}
            cpu_before["bench"] = _own_cpu_seconds()
            cpu_before |= _servers_cpu(servers)
            backends_before = await _backend_cpu(stack, milestones)
            gc.freeze()  # as `retention serve` does once started
            milestones.begin()
            # The scheduler's job in the leader replica, run here: see the module's doc.
            runner = Runner(
                coordinator,
                parse_policies(policy_file()),
                Settings(database_url=stack.coordinator_url),
                clock=SystemClock(),
            )
            report = await runner.run()
            assert report.ok, report.as_dict()
            milestones.mark("purged")

            def alive() -> None:
                stack.check_alive()
                for replica in serve:
                    replica.check_alive()

            await wait_for(
                lambda: milestones.done("completed"),
                timeout_s=timeout_s(users),
                what="every event completed",
                interval_s=0.02,
                alive=alive,
            )
            seconds = milestones.at["completed"]
            cpu = {p.name: _cpu_seconds(p) - cpu_before[p.name] for p in processes}
            cpu["bench"] = _own_cpu_seconds() - cpu_before["bench"]
            cpu |= {
                n: v - cpu_before[n] for n, v in _servers_cpu(servers).items() if n in cpu_before
            }
            await _backend_cpu_parts(stack, milestones, backends_before, cpu)
            await milestones.stop()
        finally:
            await coordinator.dispose()
        got = _report(users, seconds, milestones, cpu)
        got["check"] = await _check(stack, users, ours=True)
        return got


# --- the seed article -----------------------------------------------------------------


async def _seed_purge_and_publish(stack: Stack) -> int:
    """The article's executor loop on `bench_users` and its publisher, per batch."""
    engine = stack.engine()
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs())
    await producer.start()
    sent = 0
    try:
        async with engine.connect() as conn:
            cutoff = datetime.now(UTC) - timedelta(days=365)
            while True:
                rows = await conn.execute(
                    text("SELECT id FROM bench_users WHERE last_seen < :cutoff LIMIT :batch"),
                    {"cutoff": cutoff, "batch": BATCH_SIZE},
                )
                candidate_ids = [row[0] for row in rows]
                if not candidate_ids:
                    break
                held_ids = await check_ids(conn, "bench_users", candidate_ids)
                actionable = [id_ for id_ in candidate_ids if id_ not in held_ids]
                if not actionable:
                    break
                placeholders, params = in_params(actionable)
                await conn.execute(
                    text(f"DELETE FROM bench_users WHERE id IN ({placeholders})"), params
                )
                await conn.commit()
                initiated_at = datetime.now(UTC).isoformat()
                for user in actionable:
                    message = {
                        "type": "delete",
                        "entity_type": "user",
                        "entity_id": user,
                        "policy": "inactive_users",
                        "initiated_at": initiated_at,
                    }
                    await producer.send_and_wait(
                        stack.kafka.topics.events, json.dumps(message).encode()
                    )
                    sent += 1
    finally:
        await producer.stop()
        await engine.dispose()
    return sent


async def _seed(users: Users, log_dir: Path, label: str) -> dict[str, Any]:
    async with isolated_stack(
        infra.database_url(),
        infra.KafkaSettings().bootstrap_servers,
        label,
        log_dir,
        partitions=PARTITIONS,
    ) as stack:
        await _prepare(stack, users)
        names = [f"seed-{s}" for s in PRODUCT_SERVICES]
        for service, name in zip(PRODUCT_SERVICES, names, strict=True):
            stack.add_service(
                name, module="bench.seed_consumer", env={"BENCH_SEED_SERVICE": service}
            )
        await stack.start_services(*names)
        processes = [stack.processes[n] for n in names]
        milestones = Milestones(_urls(stack), _service_checks(users))
        await milestones.open()
        try:
            servers = await _servers(stack)
            cpu_before = {p.name: _cpu_seconds(p) for p in processes}
            cpu_before["bench"] = _own_cpu_seconds()
            cpu_before |= _servers_cpu(servers)
            backends_before = await _backend_cpu(stack, milestones)
            gc.freeze()  # the same for the seed: neither pays for the other's setup
            milestones.begin()
            sent = await _seed_purge_and_publish(stack)
            milestones.mark("published")
            assert sent == len(users.due), (sent, len(users.due))
            await wait_for(
                lambda: all(milestones.done(s) for s in PRODUCT_SERVICES),
                timeout_s=timeout_s(users),
                what="every due user's rows gone from every service",
                interval_s=0.02,
                alive=stack.check_alive,
            )
            seconds = max(milestones.at[s] for s in PRODUCT_SERVICES)
            cpu = {p.name: _cpu_seconds(p) - cpu_before[p.name] for p in processes}
            cpu["bench"] = _own_cpu_seconds() - cpu_before["bench"]
            cpu |= {
                n: v - cpu_before[n] for n, v in _servers_cpu(servers).items() if n in cpu_before
            }
            await _backend_cpu_parts(stack, milestones, backends_before, cpu)
        finally:
            await milestones.stop()
        got = _report(users, seconds, milestones, cpu)
        got["check"] = await _check(stack, users, ours=False)
        return got


async def _cleaned(run: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """`run`, then its topics deleted from the shared broker (as tests/conftest.py does for
    each test): a broker keeps every partition's files open, and one that keeps every
    run's topics runs out of file descriptors and shuts down."""
    made_before = len(infra.PREFIXES_MADE)
    try:
        return await run
    finally:
        made = infra.PREFIXES_MADE[made_before:]
        del infra.PREFIXES_MADE[made_before:]
        await asyncio.to_thread(
            infra.delete_topics_of, infra.KafkaSettings().bootstrap_servers, made
        )


async def compare(count: int, round_no: int) -> dict[str, Any]:
    """One round of both contestants on `count` users (order alternates by round)."""
    users = Users.make(count)
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = [("seed", _seed), ("ours", _ours)]
    if round_no % 2:
        runs.reverse()
    return {name: await _cleaned(run(users, log_dir, f"bench_e2e_{name}")) for name, run in runs}


async def alone(count: int) -> dict[str, Any]:
    """Ours alone on `count` users: the scale run, where the seed would take hours."""
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    return await _cleaned(_ours(Users.make(count), log_dir, "bench_e2e_alone"))


async def _main() -> dict[str, Any]:
    load = {"start": list(os.getloadavg())}
    alone_users = int(os.environ.get("BENCH_E2E_ALONE_USERS", 0))
    if alone_users:
        got = {"ours_alone": await alone(alone_users)}
    else:
        got = await compare(int(os.environ.get("BENCH_E2E_USERS", 2000)), 0)
    load["end"] = list(os.getloadavg())
    return {**got, "load": load}


if __name__ == "__main__":
    # One round on its own: BENCH_E2E_USERS=2000 python -m bench.e2e
    # Ours alone: BENCH_E2E_ALONE_USERS=1000000 python -m bench.e2e
    # Ours' serve replicas: BENCH_E2E_REPLICAS (default 2)
    infra.load_infra_env()
    infra.use_test_keys()  # every benchmark runs signed
    print(json.dumps(asyncio.run(_main())))
