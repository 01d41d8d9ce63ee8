"""Scenario 17: `retention serve` SIGKILLed while it publishes the suppression list.

`retention serve` (relay, tracker and the suppression publisher; the pepper file set) runs
while erasure requests for a seeded choice of due fault users list their subjects on the
suppression list, each entry written in the transaction that erases its subject (filed
in-process, as the API would). A seeded share of the subjects is listed with a
suppression retention of a few seconds, so their entries expire during the scenario and
must be tombstoned, and a few subjects are erased again later by a new request, which
renews their entry (a new `erased_at` and expiry, to be published again). `serve` is
SIGKILLed at seeded points, placed, not timed, where a crash could lose or misstate an
entry (every write to the entries table is braked, tests/faults/throttle.py, so the test
sees the statement executing and kills):

* `publish`: the publisher sent a batch of entries to the erased topic and its UPDATE
  marking them published executes: the entries are on the topic, the rows unpublished;
* `expire`: it sent the tombstones of expired entries and their DELETE executes: the
  tombstones are on the topic, the rows still there;
* `anytime`: a seeded 0-1.5 s after a request was filed (sending, marking, idle).

After a kill `serve` restarts at once or only after the next request was filed while it
was down (a seeded choice). The policies run in-process first, so `serve`'s relay and
tracker have work in flight at every kill. At the end:

* every subject's entry is on the compacted topic as its latest state: the last record of
  its key (what compaction keeps) is its latest entry as written (`erased_at`,
  `expires_at`) while it lives, a tombstone once it expired, after at least one copy of
  that entry; every record is signed by the coordinator, no other key is there, every
  value is a state some erasure wrote and none follows a newer one; live rows are marked
  published, expired rows are gone;
* each `publish` kill's batch went out again after the restart (at least once, never
  lost), unless a renewal replaced the entry meanwhile;
* the erasure requests completed, and the invariants hold.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import SystemClock
from coordinator.erasure.due import Regulation
from coordinator.erasure.service import Erasure
from coordinator.erasure.status import complete_acknowledged
from coordinator.policy.model import load_policies
from coordinator.settings import EVIDENCE_RETENTION_DAYS, Settings
from coordinator.store.tables import erased_entities, erasure_requests
from schemas import decode
from schemas.signing import SignatureSettings
from schemas.suppression import ErasedEntity, read_pepper, suppression_key, write_pepper
from tests.e2e.harness import ServiceProcess, Stack, TopicTail, all_of, wait_for
from tests.faults.drive import serve_env, serve_policies, start_services
from tests.faults.inprocess import run_policies
from tests.faults.invariants import check_invariants, settle
from tests.faults.private_postgres import free_port
from tests.faults.throttle import install_throttle, set_throttle, wait_until_writing
from tests.faults.world import HASH_SECRET, USERS_POLICY, World, prepare_world

POINTS = ("publish", "expire", "anytime")
BRAKE_S = 0.4
"""Each write to the entries table sleeps this long around a placed kill: the publisher's
UPDATE or DELETE is seen executing, after its records were sent."""
SHORT = timedelta(seconds=3)
"""The suppression retention of the subjects whose entries expire during the scenario."""
SCHEDULE = "0 0 1 1 *"
"""Never during a test: the policies run in-process, `serve` only relays and tracks."""


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry as one erasure wrote it: a state its key may take on the topic."""

    erased_at: datetime
    expires_at: datetime
    expires: bool

    @property
    def state(self) -> tuple[datetime, datetime]:
        return self.erased_at, self.expires_at


@dataclass(frozen=True, slots=True)
class Row:
    """An entry as the table holds it now (committed)."""

    erased_at: datetime
    expires_at: datetime
    published_at: datetime | None


def _erasure(
    stack: Stack, engine: AsyncEngine, world: World, pepper_file: Path, retention: timedelta
) -> Erasure:
    """Requests filed in-process, listing subjects for `retention`."""
    settings = Settings(
        database_url=stack.coordinator_url,
        hash_secret=HASH_SECRET,
        suppression_pepper_file=pepper_file,
        suppression_retention_days=retention / timedelta(days=1),
    )
    return Erasure(engine, load_policies(world.policy_file), settings, SystemClock())


async def _file(
    erasure: Erasure, engine: AsyncEngine, key: str, user: str, reference: str, expires: bool
) -> Entry:
    await erasure.create(
        subject=f"user:{user}",
        regulation=Regulation.GDPR,
        received_at=None,
        reference=reference,
        by="dpo",
    )
    row = (await _rows(engine))[key]
    return Entry(row.erased_at, row.expires_at, expires)


async def _rows(engine: AsyncEngine) -> dict[str, Row]:
    """Key → every committed entry."""
    e = erased_entities.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(e.key, e.erased_at, e.expires_at, e.published_at))
        return {row.key: Row(row.erased_at, row.expires_at, row.published_at) for row in rows}


def _by_key(tail: TopicTail) -> dict[str, list[ConsumerRecord[bytes, bytes]]]:
    """Each key's records in the order the topic holds them (one partition per key)."""
    by_key: dict[str, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    for record in tail.records:
        by_key[record.key.decode() if record.key else ""].append(record)
    return by_key


def _state(record: ConsumerRecord[bytes, bytes]) -> tuple[datetime, datetime] | None:
    """The entry a record carries; None for a tombstone."""
    if record.value is None:
        return None
    entry = decode(ErasedEntity, record.value)
    return entry.erased_at, entry.expires_at


async def _kill(
    point: str, rng: random.Random, stack: Stack, serve: ServiceProcess, tail: TopicTail
) -> dict[str, tuple[datetime, datetime] | None]:
    """SIGKILL `serve` at `point`; key → state (None: tombstone) of each record sent and
    not yet recorded as sent (a placed kill finds at least one)."""
    if point == "anytime":
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        serve.kill()
        return {}
    verb = "UPDATE" if point == "publish" else "DELETE FROM"
    seen = await wait_until_writing(
        stack.coordinator_url, erased_entities, process=serve, verbs=(verb,), timeout_s=90
    )
    assert seen, f"serve died:\n{serve.log_tail()}"
    serve.kill()
    # The killed transaction never commits: what the rows say now is what they will say.
    await tail.caught_up()
    engine = stack.engine()
    try:
        rows = await _rows(engine)
    finally:
        await engine.dispose()
    records = _by_key(tail)
    if point == "publish":
        # Unpublished rows whose current state is on the topic already.
        in_flight: dict[str, tuple[datetime, datetime] | None] = {
            key: (row.erased_at, row.expires_at)
            for key, row in rows.items()
            if row.published_at is None
            and any(_state(r) == (row.erased_at, row.expires_at) for r in records.get(key, []))
        }
    else:
        # Expired rows still there, their key tombstoned after its last entry.
        now = datetime.now(UTC)
        in_flight = {
            key: None
            for key, row in rows.items()
            if row.expires_at <= now and records.get(key) and records[key][-1].value is None
        }
    assert in_flight, f"kill at {point}: nothing sent and unrecorded ({len(rows)} rows)"
    return in_flight


def _topic_problems(
    tail: TopicTail, entries: dict[str, list[Entry]], rows: dict[str, Row]
) -> list[str]:
    """What differs between the erased topic, the entries as written and the table."""
    verifier = SignatureSettings().coordinator_verifier()
    problems: list[str] = []
    for record in tail.records:
        checked = verifier.verify(record.key, record.value, record.headers)
        if not checked.valid:
            problems.append(f"offset {record.partition}/{record.offset}: {checked.verdict}")
    records = _by_key(tail)
    problems.extend(f"{key[:12]}: a key nobody listed" for key in set(records) - set(entries))
    for key, written in entries.items():
        name, latest = key[:12], written[-1]
        order = [e.state for e in written]
        states = [_state(r) for r in records.get(key, [])]
        sent = [s for s in states if s is not None]
        unknown = [s for s in sent if s not in order]
        problems.extend(f"{name}: published {s}, never written" for s in unknown)
        if unknown:
            continue
        # An older state never follows a newer one: a late copy can't undo a renewal.
        positions = [order.index(s) for s in sent]
        if positions != sorted(positions):
            problems.append(f"{name}: states out of order {positions}")
        if latest.state not in sent:
            problems.append(f"{name}: latest entry never published")
        row = rows.get(key)
        if latest.expires:
            if not states or states[-1] is not None:
                problems.append(f"{name}: expired, not tombstoned last")
            if row is not None:
                problems.append(f"{name}: expired, row still there")
        else:
            if not states or states[-1] != latest.state:
                problems.append(f"{name}: live, last record {states[-1:]}")
            if row is None or row.published_at is None:
                problems.append(f"{name}: live, row {'unpublished' if row else 'gone'}")
            elif (row.erased_at, row.expires_at) != latest.state:
                problems.append(f"{name}: row {(row.erased_at, row.expires_at)}, latest {latest}")
    problems.extend(f"{key[:12]}: a row nobody wrote" for key in set(rows) - set(entries))
    return problems


async def _suppression_done(engine: AsyncEngine, entries: dict[str, list[Entry]]) -> bool:
    """Every live entry marked published, every expired one gone."""
    rows = await _rows(engine)
    live = {k for k, written in entries.items() if not written[-1].expires}
    return set(rows) == live and all(r.published_at is not None for r in rows.values())


async def suppression_kill_scenario(
    stack: Stack,
    directory: Path,
    *,
    seed: int,
    users: int,
    subjects: int,
    renewals: int,
    kills: int,
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 17 (suppression publisher SIGKILLed), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=2)
    serve_policies(world)
    chosen = rng.sample(sorted(world.processed(USERS_POLICY)), subjects)
    # A renewal: a subject already listed erased again by a new request, later.
    filings = list(chosen)
    for _ in range(renewals):
        at = rng.randint(1, len(filings))
        filings.insert(at, rng.choice(filings[:at]))
    world.subject_events = len(filings)
    world.refiled = Counter(filings) - Counter(chosen)
    points: dict[int, str] = dict(
        zip(
            sorted(rng.sample(range(len(filings)), kills)),
            rng.sample(POINTS * (kills // len(POINTS)), kills),
            strict=True,
        )
    )
    pepper_file = directory / "suppression.pepper"
    write_pepper(pepper_file)
    pepper = read_pepper(pepper_file)
    await install_throttle(stack.coordinator_url, [erased_entities], delay_s=0)
    env = {
        **serve_env(stack, world, schedule=SCHEDULE),
        "RETENTION_SUPPRESSION_PEPPER_FILE": str(pepper_file),
    }
    serve = stack.add_cli("serve", "serve", "--port", str(free_port()), env=env)
    serve.start()
    # While `serve` and the services start: their events are in the outbox when they are up.
    await run_policies(stack, world)
    faults: Counter[str] = Counter()
    entries: dict[str, list[Entry]] = defaultdict(list)
    filed: Counter[str] = Counter()
    resent: dict[str, tuple[datetime, datetime] | None] = {}
    engine = stack.engine()
    short = _erasure(stack, engine, world, pepper_file, SHORT)
    long = _erasure(stack, engine, world, pepper_file, timedelta(days=EVIDENCE_RETENTION_DAYS))
    try:
        async with TopicTail(stack.kafka, stack.kafka.topics.erased) as tail:
            await start_services(stack)
            for n, user in enumerate(filings):
                point = points.get(n)
                expires = point == "expire" or rng.random() < 0.4
                key = suppression_key(pepper, "user", user)
                if point in ("publish", "expire"):
                    await set_throttle(stack.coordinator_url, BRAKE_S)
                reference = f"suppression-{user}-{filed[user]}"
                filed[user] += 1
                erasure = short if expires else long
                entries[key].append(await _file(erasure, engine, key, user, reference, expires))
                if not serve.alive:
                    serve.start()  # the request above was filed while it was down
                if point is None:
                    continue
                in_flight = await _kill(point, rng, stack, serve, tail)
                faults[f"kill_serve_{point}"] += 1
                await set_throttle(stack.coordinator_url, 0)
                if point == "publish":
                    resent.update(in_flight)
                if rng.random() < 0.5:
                    serve.start()
            if not serve.alive:
                serve.start()
            alive = all_of(stack.check_alive, serve.check_alive, tail.check)
            await wait_for(
                lambda: _suppression_done(engine, entries),
                timeout_s=120,
                what="every entry published, every expired one tombstoned",
                interval_s=0.2,
                alive=alive,
            )
            await settle(stack, world, timeout_s=180, alive=alive)
            async with engine.begin() as conn:
                await complete_acknowledged(conn, now=datetime.now(UTC))
            await stack.stop_services()
            code = await serve.terminate(timeout_s=60)
            assert code == 0, f"serve did not stop cleanly ({code}):\n{serve.log_tail()}"
            await tail.caught_up()
            rows = await _rows(engine)
            async with engine.connect() as conn:
                statuses: Counter[str] = Counter(
                    dict(
                        (
                            await conn.execute(
                                select(erasure_requests.c.status, func.count()).group_by(
                                    erasure_requests.c.status
                                )
                            )
                        ).all()
                    )
                )
    finally:
        await engine.dispose()
    problems = _topic_problems(tail, entries, rows)
    copies = Counter((key, _state(r)) for key, records in _by_key(tail).items() for r in records)
    # A batch sent before a kill goes out again, unless a renewal replaced its entry since.
    problems.extend(
        f"{key[:12]}: sent before the kill, not again"
        for key, state in resent.items()
        if entries[key][-1].state == state and copies[(key, state)] < 2
    )
    assert not problems, "\n".join(problems)
    assert statuses == Counter(completed=len(filings)), statuses
    expired = sum(written[-1].expires for written in entries.values())
    values = sum(n for (_, state), n in copies.items() if state is not None)
    print(
        f"[faults] suppression: {len(entries)} entries ({expired} expired, "
        f"{renewals} renewals), {len(filings)} erasures, {values} entry records, "
        f"{len(tail.records) - values} tombstones, kills at {dict(faults)}"
    )
    result = await check_invariants(
        stack, world, scenario="17-suppression-sigkill", seed=seed, faults=faults
    )
    result.assert_ok()
    assert result.events == world.expected_events


async def test_suppression_publisher_kills(stack: Stack, tmp_path: Path) -> None:
    await suppression_kill_scenario(
        stack, tmp_path, seed=1717, users=12, subjects=4, renewals=1, kills=3
    )


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [1771, 1772, 1773])
async def test_suppression_publisher_kills_seeds(stack: Stack, tmp_path: Path, seed: int) -> None:
    await suppression_kill_scenario(
        stack, tmp_path, seed=seed, users=40, subjects=10, renewals=3, kills=6
    )
