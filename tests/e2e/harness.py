"""End-to-end harness: the coordinator in-process, the services as real processes.

A `Stack` is one isolated world: a unique topic prefix with its topics, a fresh
coordinator database migrated to the latest schema, and a fresh service database.
Services run as `python -m <module>` subprocesses that a test can start, stop with
SIGTERM, SIGKILL and restart; their logs go to files, because a pipe nobody reads
blocks a chatty process. The relay and the tracker run as asyncio tasks in the test's
event loop (`running_relay`, `running_tracker`), or inside `retention serve` replicas
started as processes (`Stack.add_serve`). `TopicTail` follows a topic from its
first record, so a test can wait for what it expects and then count duplicates. The
`*_problems` functions check the invariants and return what is wrong, so an assertion
shows every violation at once. The fault suite reuses all of this.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from sqlalchemy import func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import Clock, SystemClock
from coordinator.evidence.audit import CHAIN_LOCK
from coordinator.kafka.admin import ensure_topics
from coordinator.metrics import Metrics
from coordinator.outbox.relay import OutboxRelay
from coordinator.policy.model import DeclaredService
from coordinator.purge.hold_topic import HOLD_TOPIC_LOCK
from coordinator.purge.holds import HOLD_LOCK
from coordinator.settings import RelaySettings, TrackerSettings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_log, event_status, service_registry
from coordinator.tracking.tracker import Tracker
from schemas import AckStatus, KafkaSettings, RetentionAck, decode
from schemas.signing import SignatureSettings
from services import EXAMPLES
from tests import declared, infra
from tests.faults.private_postgres import free_port
from tests.infra import ROOT

__all__ = [
    "ALL_SERVICES",
    "FAUST_SERVICE",
    "PRODUCT_SERVICES",
    "AckCopy",
    "AckTail",
    "Pair",
    "ServiceProcess",
    "Stack",
    "TopicTail",
    "ack_problems",
    "acks_by_pair",
    "all_of",
    "effect_problems",
    "erasure_counts",
    "event_states",
    "has_registered",
    "isolated_stack",
    "last_completion_at",
    "lock_waits",
    "registered",
    "run_cli",
    "running_relay",
    "running_tracker",
    "stable_members",
    "states_are",
    "tracker_settings",
    "wait_for",
]

PRODUCT_SERVICES = tuple(e.name for e in EXAMPLES if not e.faust)
"""The example services on the core SDK, each run as `python -m services.<name>`."""

[FAUST_SERVICE] = [e.name for e in EXAMPLES if e.faust]
"""The example service built as a Faust app (`python -m services.search_index`)."""

ALL_SERVICES = (*PRODUCT_SERVICES, FAUST_SERVICE)

ERASURE_LOGS = {e.name: e.erasure_log for e in EXAMPLES}
"""One row per applied effect, with no unique key: a twice-applied event shows twice."""

RETENTION_CLI = str(Path(sys.executable).with_name("retention"))
"""The installed `retention` command of this environment."""

READY_MARKER = b"partitions_assigned"
"""What the SDK logs once the consumer group handed the service its partitions."""

Pair = tuple[uuid.UUID, str]
"""(event_id, service): the unit the issue's "exactly one ack" is about."""


async def wait_for(
    check: Callable[[], Any],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll `check` (sync or async) until it is truthy; `alive` raises if something died."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def all_of(*checks: Callable[[], None]) -> Callable[[], None]:
    """One `alive` callback from several: each raises if its component died."""

    def check() -> None:
        for one in checks:
            one()

    return check


# --- service processes ---------------------------------------------------------------


@dataclass(eq=False)
class ServiceProcess:
    """One service run as `python -m <module>`; restartable, its log appended to a file."""

    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    argv: tuple[str, ...] = ()
    """The command instead of `python -m <module>` (e.g. the `retention` CLI)."""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    _ready_marks: int = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self._ready_marks = self.log().count(READY_MARKER)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(self.argv) or [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    async def wait_ready(self, *, timeout_s: float = 60.0) -> None:
        """Until the service logged a partition assignment since its last start."""
        await wait_for(
            lambda: self.log().count(READY_MARKER) > self._ready_marks,
            timeout_s=timeout_s,
            what=f"{self.name} to be assigned its partitions",
            interval_s=0.1,
            alive=self.check_alive,
        )

    async def wait(self, *, timeout_s: float) -> int:
        """Until the process exits on its own; its exit code."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout_s}s:\n{self.log_tail()}"
            ) from None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL: no handler finishes, no ack is flushed, no offset is committed."""
        if self.proc is None or not self.alive:
            raise RuntimeError(f"{self.name} is not running")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def pause(self) -> None:
        """SIGSTOP: the process freezes (no poll, no heartbeat) but keeps its connections."""
        if self.proc is None or not self.alive:
            raise RuntimeError(f"{self.name} is not running")
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`: a zombie comes back and finds its partitions reassigned."""
        if self.proc is None or not self.alive:
            raise RuntimeError(f"{self.name} is not running")
        self.proc.send_signal(signal.SIGCONT)

    async def terminate(self, *, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the graceful stop; SIGKILL after `timeout_s`."""
        proc = self.proc
        if proc is None:
            raise RuntimeError(f"{self.name} was never started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log().decode(errors="replace")[-chars:]


# --- the isolated world ---------------------------------------------------------------


@dataclass(eq=False)
class Stack:
    """Topics, databases and service processes of one test, and nobody else's."""

    kafka: KafkaSettings
    coordinator_url: str
    services_url: str
    log_dir: Path
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def service_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            # The parent's own settings must not leak into a service by accident.
            if not key.startswith("RETENTION_")
        }
        env.update(self.kafka.environ())
        env.update(
            {
                "RETENTION_SERVICE_DATABASE_URL": self.services_url,
                "RETENTION_CONSUMER_POLL_TIMEOUT_S": "0.2",
                **infra.signing_env(),
            }
        )
        env.update(extra or {})
        return env

    def add_service(
        self, name: str, *, module: str | None = None, env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        if name in self.processes:
            raise ValueError(f"service {name} already added")
        module = module or f"services.{name}"
        # Each service signs with its own key, the one `running_tracker` declares for it.
        # A process that is no SDK service (the bench's seed consumer) has no key to sign with.
        own_key = (
            {"RETENTION_SERVICE_SIGNING_KEY_FILE": str(declared.key_file(module))}
            if declared.is_service(module)
            else {}
        )
        process = ServiceProcess(
            name=name,
            module=module,
            env=self.service_env({**own_key, **(env or {})}),
            log_path=self.log_dir / f"{name}.log",
        )
        self.processes[name] = process
        return process

    async def start_services(self, *names: str, timeout_s: float = 60.0) -> None:
        """Start the named services (added or product ones) together; wait until each is ready."""
        chosen = [self.processes.get(n) or self.add_service(n) for n in names]
        for process in chosen:
            process.start()
        await asyncio.gather(*(p.wait_ready(timeout_s=timeout_s) for p in chosen))

    async def stop_services(self) -> dict[str, int]:
        """SIGTERM every running service; their exit codes (0 is a graceful stop)."""
        running = [p for p in self.processes.values() if p.alive]
        codes = await asyncio.gather(*(p.terminate() for p in running))
        return {p.name: code for p, code in zip(running, codes, strict=True)}

    def check_alive(self) -> None:
        for process in self.processes.values():
            # One-shot `retention` commands end on their own; their callers wait for them.
            if process.argv:
                continue
            if process.starts and process.proc is not None:
                # A process the test killed on purpose is not running until restarted.
                if process.proc.returncode == -signal.SIGKILL:
                    continue
                process.check_alive()

    def engine(self) -> AsyncEngine:
        return make_engine(self.coordinator_url)

    def coordinator_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a `retention` command on this stack's database and topics."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
        env["RETENTION_DATABASE_URL"] = self.coordinator_url
        # The test session's KEK (tests/conftest.py), for archive policies; a benchmark
        # has none and needs none.
        if "RETENTION_KEK_FILE" in os.environ:
            env["RETENTION_KEK_FILE"] = os.environ["RETENTION_KEK_FILE"]
        env.update(self.kafka.environ())
        env.update(infra.signing_env())
        env.update(extra or {})
        return env

    def add_cli(
        self, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        """A `retention <args>` process on this stack (start, kill, restart like a service)."""
        if name in self.processes:
            raise ValueError(f"process {name} already added")
        process = ServiceProcess(
            name=name,
            module="coordinator.cli",
            env=self.coordinator_env(env),
            log_path=self.log_dir / f"{name}.log",
            argv=(RETENTION_CLI, *args),
        )
        self.processes[name] = process
        return process

    def add_serve(
        self,
        name: str,
        policies: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServiceProcess:
        """A `retention serve` replica on this stack: its tracker in the stack's own consumer
        group (every replica of the stack in the same one), its HTTP API on `port` (default
        a free one). Like every `add_cli` process, `check_alive` leaves it to its caller."""
        group = {"RETENTION_TRACKER_GROUP_ID": self.tracker_group}
        return self.add_cli(
            name,
            "serve",
            "--port",
            str(port or free_port()),
            "--policies",
            str(policies),
            env={**group, **(env or {})},
        )

    @property
    def tracker_group(self) -> str:
        """The acks consumer group of this stack's trackers (`tracker_settings`, `add_serve`)."""
        return f"{self.kafka.topic_prefix}.tracker"


async def stable_members(kafka: KafkaSettings, group: str) -> int:
    """How many members a consumer group has once its partitions are handed out (0 while
    it rebalances or does not exist)."""
    client = AIOKafkaAdminClient(**kafka.client_kwargs())
    await client.start()
    try:
        [response] = await client.describe_consumer_groups([group])
    finally:
        await client.close()
    [(error, _, state, _, _, members, *_)] = response.groups
    return len(members) if error == 0 and state == "Stable" else 0


@asynccontextmanager
async def isolated_stack(
    postgres_url: str, kafka_bootstrap: str, label: str, log_dir: Path, *, partitions: int = 3
) -> AsyncIterator[Stack]:
    """A fresh `Stack` (each topic with `partitions`); on exit every process is stopped and
    both databases dropped."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=infra.unique_topic_prefix(label)
    )
    coordinator_url = await infra.create_database(postgres_url, f"e2e_{label}")
    services_url = await infra.create_database(postgres_url, f"e2e_{label}_svc")
    stack = Stack(kafka, coordinator_url, services_url, log_dir)
    try:
        await upgrade(coordinator_url)
        await ensure_topics(kafka, partitions=partitions)
        yield stack
    finally:
        for process in stack.processes.values():
            if process.alive:
                await process.terminate(timeout_s=10)
        await infra.drop_database(coordinator_url)
        await infra.drop_database(services_url)


# --- the coordinator, in-process ------------------------------------------------------


async def _stop_task(task: asyncio.Task[None], stop: asyncio.Event, timeout_s: float) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, timeout_s)
    except TimeoutError:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        raise


@dataclass(eq=False)
class Running:
    """A coordinator component running as a task; `check()` raises if it ended early."""

    name: str
    task: asyncio.Task[None]

    def check(self) -> None:
        if self.task.done():
            exc = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"{self.name} stopped early: {exc!r}")


@asynccontextmanager
async def running_relay(
    stack: Stack, *, clock: Clock | None = None, settings: RelaySettings | None = None
) -> AsyncIterator[Running]:
    """`OutboxRelay.run_forever` on the stack's coordinator database."""
    engine = stack.engine()
    relay = OutboxRelay(
        engine,
        stack.kafka,
        settings=settings or RelaySettings(idle_sleep_s=0.05),
        clock=clock or SystemClock(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_forever(stop), name="relay")
    try:
        yield Running("relay", task)
    finally:
        try:
            await _stop_task(task, stop, 30)
        finally:
            await relay.close()
            await engine.dispose()


def tracker_settings(stack: Stack, **overrides: Any) -> TrackerSettings:
    values: dict[str, Any] = {
        "group_id": stack.tracker_group,
        "poll_interval_s": 0.05,
    }
    values.update(overrides)
    return TrackerSettings(**values)


@asynccontextmanager
async def running_tracker(
    stack: Stack,
    *,
    clock: Clock | None = None,
    settings: TrackerSettings | None = None,
    metrics: Metrics | None = None,
    services: Sequence[str | DeclaredService] | None = None,
    signatures: SignatureSettings | None = None,
) -> AsyncIterator[Running]:
    """`Tracker.run_forever` (registry consumer, ack ledger, reminders, deadlines).

    `services` are the declared ones (who must acknowledge): names or modules of service
    processes, or declarations; default the product services and every service process
    the stack has when the tracker starts. `signatures`: default from the environment."""
    engine = stack.engine()
    if services is None:
        services = [*PRODUCT_SERVICES, *(p.module for p in stack.processes.values() if not p.argv)]
    declarations = [
        *declared.declare(s for s in services if isinstance(s, str)),
        *(s for s in services if isinstance(s, DeclaredService)),
    ]
    signatures = signatures or SignatureSettings()
    tracker = Tracker(
        engine,
        stack.kafka,
        settings or tracker_settings(stack),
        clock=clock or SystemClock(),
        metrics=metrics or Metrics(),
        services=declarations,
        signatures=signatures.mode,
        signer=signatures.coordinator_signer(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(tracker.run_forever(stop), name="tracker")
    try:
        yield Running("tracker", task)
    finally:
        await _stop_task(task, stop, 30)
        await engine.dispose()


async def registered(stack: Stack) -> set[str]:
    """Services the tracker's registry knows (not retired)."""
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(service_registry.c.service)
                .where(service_registry.c.retired_at.is_(None))
                .distinct()
            )
            return {row.service for row in rows}
    finally:
        await engine.dispose()


async def has_registered(stack: Stack, services: Iterable[str]) -> bool:
    return set(services) <= await registered(stack)


async def states_are(stack: Stack, **states: int) -> bool:
    """Whether the tracked events are in exactly these states, in these numbers."""
    return await event_states(stack) == Counter(states)


async def event_states(stack: Stack) -> Counter[str]:
    """How many tracked events are in each state."""
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(event_status.c.state, func.count()).group_by(event_status.c.state)
            )
            return Counter({row[0]: row[1] for row in rows})
    finally:
        await engine.dispose()


async def last_completion_at(stack: Stack) -> datetime | None:
    """When the tracker recorded its latest `events_completed` audit entry."""
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            at: datetime | None = await conn.scalar(
                select(func.max(audit_log.c.at)).where(audit_log.c.action == "events_completed")
            )
            return at
    finally:
        await engine.dispose()


async def run_cli(
    stack: Stack, *args: str, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """The installed `retention` command, as an operator runs it, on the stack's database.

    Awaited while the command runs, so the tracker and relay tasks of the test's event loop
    go on: a loop blocked in `subprocess.run` froze a tracker transaction holding the audit
    chain's lock, and a command waiting for that lock never finished (scenario 14).
    A command still running after `timeout_s` fails the test with the lock waits and the
    command's Python stack (faulthandler dumps it on SIGABRT)."""
    process = await asyncio.create_subprocess_exec(
        RETENTION_CLI,
        *args,
        cwd=ROOT,
        env={**stack.coordinator_env(), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    output = asyncio.ensure_future(process.communicate())
    try:
        done, _ = await asyncio.wait({output}, timeout=timeout_s)
        if not done:
            waits = await lock_waits(stack)
            with suppress(ProcessLookupError):  # it may end just now
                process.send_signal(signal.SIGABRT)
            _, err = await output
            stack_dump = err.decode(errors="replace").partition("\nExtension modules:")[0]
            raise AssertionError(
                f"retention {' '.join(args[:2])} still running after {timeout_s:.0f} s\n"
                f"lock waits:\n{waits}\n"
                f"the command's stack and output:\n{stack_dump[-4000:]}"
            )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    out, err = output.result()
    return subprocess.CompletedProcess(
        [RETENTION_CLI, *args], process.returncode, out.decode(), err.decode()
    )


async def lock_waits(stack: Stack) -> str:
    """Each session of the stack's database waiting for a lock, and whom it waits for."""
    engine = stack.engine()
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text(_LOCK_WAITS))).all()
    finally:
        await engine.dispose()
    return (
        "\n".join(
            f"pid {r.pid} waits {r.seconds:.1f} s for {r.locktype} "
            f"{_LOCK_NAMES.get(r.objid, r.objid or r.relation)} ({r.mode}): {r.query}\n"
            f"  held by pid {r.blocker} ({r.app or '-'}, {r.state}, in a transaction for "
            f"{r.xact_seconds:.1f} s), last statement: {r.blocker_query}"
            for r in rows
        )
        or "none"
    )


_LOCK_NAMES = {
    HOLD_LOCK: "HOLD_LOCK",
    HOLD_TOPIC_LOCK: "HOLD_TOPIC_LOCK",
    CHAIN_LOCK: "chain lock",
}
_LOCK_WAITS = """
SELECT w.pid, w.locktype, w.objid::bigint AS objid, w.relation::regclass::text AS relation,
       w.mode, extract(epoch FROM now() - a.state_change) AS seconds, a.query,
       b.pid AS blocker, b.application_name AS app, b.state,
       extract(epoch FROM now() - b.xact_start) AS xact_seconds, b.query AS blocker_query
FROM pg_locks w
JOIN pg_stat_activity a ON a.pid = w.pid
JOIN pg_stat_activity b ON b.pid = ANY (pg_blocking_pids(w.pid))
WHERE NOT w.granted AND a.datname = current_database()
"""


# --- following a topic -------------------------------------------------------------------


class TopicTail:
    """Every record of a topic from its first, read in the background (no consumer group)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._consumer = AIOKafkaConsumer(
            topic, **kafka.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        # Without a group the consumer assigns itself every partition once metadata comes.
        await wait_for(self._consumer.assignment, timeout_s=30, what=f"partitions of {self.topic}")
        self._task = asyncio.create_task(self._follow(), name=f"tail {self.topic}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for batch in batches.values():
                self.records.extend(batch)

    def check(self) -> None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            raise AssertionError(f"reading {self.topic} failed: {self._task.exception()!r}")

    async def caught_up(self, *, timeout_s: float = 30.0) -> None:
        """Until every record on the topic now has been read: "the topic, fully"."""
        partitions = list(self._consumer.assignment())
        end = await self._consumer.end_offsets(partitions)

        async def done() -> bool:
            positions = [await self._consumer.position(tp) for tp in partitions]
            return all(at >= end[tp] for at, tp in zip(positions, partitions, strict=True))

        await wait_for(done, timeout_s=timeout_s, what=f"the end of {self.topic}", alive=self.check)


class AckTail(TopicTail):
    """The acks topic, with the (event, service) pairs acknowledged so far."""

    def __init__(self, kafka: KafkaSettings) -> None:
        super().__init__(kafka, kafka.topics.acks)
        self._decoded = 0
        self._copies: Counter[Pair] = Counter()

    def pairs(self) -> set[Pair]:
        """Distinct pairs acknowledged so far (decodes only what is new)."""
        return set(self._update())

    def copies(self, pair: Pair) -> int:
        """How many acks for `pair` arrived so far."""
        return self._update()[pair]

    def _update(self) -> Counter[Pair]:
        for record in self.records[self._decoded :]:
            ack = decode(RetentionAck, record.value)
            self._copies[(ack.event_id, ack.service)] += 1
        self._decoded = len(self.records)
        return self._copies

    def acked_by(self, service: str) -> int:
        return sum(1 for _, s in self.pairs() if s == service)


# --- invariants ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckCopy:
    ack: RetentionAck
    timestamp_ms: int
    """When the service's producer created the record (CreateTime)."""


def acks_by_pair(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[Pair, list[AckCopy]]:
    pairs: dict[Pair, list[AckCopy]] = defaultdict(list)
    for record in records:
        ack = decode(RetentionAck, record.value)
        pairs[(ack.event_id, ack.service)].append(AckCopy(ack, record.timestamp))
    return dict(pairs)


def is_redelivery(ack: RetentionAck) -> bool:
    """The SDK's re-ack of an event its idempotency store already holds."""
    return ack.detail.startswith("redelivered")


def ack_problems(
    pairs: Mapping[Pair, Sequence[AckCopy]],
    expected: Mapping[Pair, AckStatus | frozenset[AckStatus]],
    *,
    redelivery_from: Iterable[str] = (),
) -> list[str]:
    """Every expected (event, service) has exactly one ack with an expected status.

    Kafka is at-least-once, so after a SIGKILL (or a tracker reminder) a service
    legitimately acks an event again: the SDK finds it in its idempotency store and
    re-sends the recorded outcome with `detail` "redelivered ...". For services in
    `redelivery_from` such copies are allowed, provided they agree with the original on
    status and records affected and at most one copy is not a redelivery; that is
    "exactly one distinct ack". Anywhere else a second copy is a problem.
    """
    allowed_repeats = set(redelivery_from)
    problems: list[str] = []
    for pair in expected.keys() - pairs.keys():
        problems.append(f"no ack for {pair}")
    for pair in pairs.keys() - expected.keys():
        problems.append(f"unexpected ack {pair}: {pairs[pair][0].ack.status}")
    for pair, copies in pairs.items():
        if pair not in expected:
            continue
        want = expected[pair]
        statuses = want if isinstance(want, frozenset) else frozenset({want})
        outcomes = {(c.ack.status, c.ack.records_affected) for c in copies}
        if len(outcomes) != 1:
            problems.append(f"{pair}: copies disagree: {sorted(outcomes)}")
        problems.extend(
            f"{pair}: status {c.ack.status}, expected one of {sorted(statuses)}"
            for c in copies
            if c.ack.status not in statuses
        )
        originals = [c for c in copies if not is_redelivery(c.ack)]
        if pair[1] in allowed_repeats:
            if len(originals) > 1:
                problems.append(f"{pair}: {len(originals)} original acks")
        elif len(copies) != 1:
            problems.append(f"{pair}: {len(copies)} acks")
    return sorted(problems)


async def erasure_counts(services_url: str) -> dict[str, Counter[uuid.UUID]]:
    """Per service, how many `erasure_log` rows (applied effects) each event left.

    A service whose tables were never created (not seeded, never started) is left out.
    """
    engine = make_engine(services_url)
    try:
        counts: dict[str, Counter[uuid.UUID]] = {}
        async with engine.connect() as conn:
            for service, table in ERASURE_LOGS.items():
                if not await conn.run_sync(
                    lambda sync, t=table: inspect(sync).has_table(t.name, schema=t.schema)
                ):
                    continue
                rows = await conn.execute(
                    select(table.c.event_id, func.count()).group_by(table.c.event_id)
                )
                counts[service] = Counter({row[0]: row[1] for row in rows})
        return counts
    finally:
        await engine.dispose()


def effect_problems(
    counts: Mapping[str, Counter[uuid.UUID]], pairs: Mapping[Pair, Sequence[AckCopy]]
) -> list[str]:
    """Each `completed` ack stands for exactly one applied effect, and nothing else applied.

    A `not_found` handler's writes are rolled back, so it leaves no row; an effect
    without a `completed` ack would be work nobody can prove.
    """
    problems: list[str] = []
    acked = {
        (event_id, service)
        for (event_id, service), copies in pairs.items()
        if copies[0].ack.status is AckStatus.COMPLETED
    }
    for service, per_event in counts.items():
        for event_id, rows in per_event.items():
            if rows != 1:
                problems.append(f"{service}: event {event_id} applied {rows} times")
            if (event_id, service) not in acked:
                problems.append(f"{service}: event {event_id} applied without a completed ack")
    for event_id, service in acked:
        if service in counts and counts[service][event_id] == 0:
            problems.append(f"{service}: completed ack for {event_id} but no effect recorded")
    return sorted(problems)
