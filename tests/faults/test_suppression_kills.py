"""Scenario 17: `retention serve` SIGKILLed while it publishes the suppression list.

`retention serve` (relay, tracker and the suppression publisher; the pepper file set) runs
while erasure requests for a seeded choice of due fault users list their subjects on the
suppression list, each entry written in the transaction that erases its subject (filed
in-process, as the API would). A seeded share of the subjects is listed with a
suppression retention of a few seconds, so their entries expire during the scenario and
must be tombstoned. `serve` is SIGKILLed at seeded points, placed, not timed, where a
crash could lose or misstate an entry (every write to the entries table is braked,
tests/faults/throttle.py, so the test sees the statement executing and kills):

* `publish`: the publisher sent a batch of entries to the erased topic and its UPDATE
  marking them published executes: the entries are on the topic, the rows unpublished;
* `expire`: it sent the tombstones of expired entries and their DELETE executes: the
  tombstones are on the topic, the rows still there;
* `anytime`: a seeded 0-1.5 s after a request was filed (sending, marking, idle).

After a kill `serve` restarts at once or only after the next request was filed while it
was down (a seeded choice). The policies run in-process first, so `serve`'s relay and
tracker have work in flight at every kill. At the end:

* every subject's entry is on the compacted topic as its latest state: the last record of
  its key (what compaction keeps) is the entry as written (key, `erased_at`, `expires_at`)
  while it lives, a tombstone once it expired, after at least one copy of the entry; every
  record is signed by the coordinator, no other key is there, no value differs from what
  was written; live rows are marked published, expired rows are gone;
* each `publish` kill's batch went out again after the restart (at least once, never lost);
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
    """An entry as its erasure wrote it: what the topic must end with."""

    erased_at: datetime
    expires_at: datetime
    expires: bool


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


async def _file(erasure: Erasure, engine: AsyncEngine, key: str, user: str, expires: bool) -> Entry:
    await erasure.create(
        subject=f"user:{user}",
        regulation=Regulation.GDPR,
        received_at=None,
        reference=f"suppression-{user}",
        by="dpo",
    )
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(erased_entities.c.erased_at, erased_entities.c.expires_at).where(
                    erased_entities.c.key == key
                )
            )
        ).one()
    return Entry(row.erased_at, row.expires_at, expires)


def _keys(tail: TopicTail, *, tombstones: bool) -> set[str]:
    return {r.key.decode() for r in tail.records if r.key and (r.value is None) == tombstones}


async def _rows(engine: AsyncEngine) -> dict[str, datetime | None]:
    """Key → `published_at` of every committed entry."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(erased_entities.c.key, erased_entities.c.published_at))
        return {row.key: row.published_at for row in rows}


async def _kill(
    point: str, rng: random.Random, stack: Stack, serve: ServiceProcess, tail: TopicTail
) -> set[str]:
    """SIGKILL `serve` at `point`; the keys whose records were sent and not yet recorded
    as sent (a placed kill has at least one)."""
    if point == "anytime":
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        serve.kill()
        return set()
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
    if point == "publish":
        pending = {k for k, published_at in rows.items() if published_at is None}
        in_flight = pending & _keys(tail, tombstones=False)
    else:
        in_flight = set(rows) & _keys(tail, tombstones=True)
    assert in_flight, f"kill at {point}: nothing sent and unrecorded ({len(rows)} rows)"
    return in_flight


def _topic_problems(
    tail: TopicTail, entries: dict[str, Entry], rows: dict[str, datetime | None]
) -> list[str]:
    """What differs between the erased topic, the entries as written and the table."""
    verifier = SignatureSettings().coordinator_verifier()
    by_key: dict[str, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    problems: list[str] = []
    for record in tail.records:
        checked = verifier.verify(record.key, record.value, record.headers)
        if not checked.valid:
            problems.append(f"offset {record.partition}/{record.offset}: {checked.verdict}")
        key = record.key.decode() if record.key else ""
        if key not in entries:
            problems.append(f"offset {record.partition}/{record.offset}: unknown key")
        by_key[key].append(record)
    for key, entry in entries.items():
        records = by_key.get(key, [])
        values = [decode(ErasedEntity, r.value) for r in records if r.value is not None]
        if not values:
            problems.append(f"{key[:12]}: never published")
            continue
        problems.extend(
            f"{key[:12]}: published as {v.erased_at}/{v.expires_at}, written "
            f"{entry.erased_at}/{entry.expires_at}"
            for v in values
            if (v.key, v.erased_at, v.expires_at) != (key, entry.erased_at, entry.expires_at)
        )
        last_is_tombstone = records[-1].value is None
        if entry.expires:
            if not last_is_tombstone:
                problems.append(f"{key[:12]}: expired, not tombstoned last")
            if key in rows:
                problems.append(f"{key[:12]}: expired, row still there")
        else:
            if last_is_tombstone:
                problems.append(f"{key[:12]}: live, tombstoned")
            if rows.get(key) is None:
                problems.append(f"{key[:12]}: live, row {'unpublished' if key in rows else 'gone'}")
    problems.extend(f"{key[:12]}: a row nobody wrote" for key in set(rows) - set(entries))
    return problems


async def _suppression_done(engine: AsyncEngine, entries: dict[str, Entry]) -> bool:
    """Every live entry marked published, every expired one gone."""
    rows = await _rows(engine)
    live = {k for k, e in entries.items() if not e.expires}
    return set(rows) == live and all(rows.values())


async def suppression_kill_scenario(
    stack: Stack, directory: Path, *, seed: int, users: int, subjects: int, kills: int
) -> None:
    rng = random.Random(seed)
    print(f"\n[faults] scenario 17 (suppression publisher SIGKILLed), seed {seed}")
    world = await prepare_world(stack, directory, users=users, per_category=2)
    serve_policies(world)
    chosen = rng.sample(sorted(world.processed(USERS_POLICY)), subjects)
    world.subject_events = len(chosen)
    points: dict[int, str] = dict(
        zip(
            sorted(rng.sample(range(subjects), kills)),
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
    entries: dict[str, Entry] = {}
    resent: set[str] = set()
    engine = stack.engine()
    short = _erasure(stack, engine, world, pepper_file, SHORT)
    long = _erasure(stack, engine, world, pepper_file, timedelta(days=EVIDENCE_RETENTION_DAYS))
    try:
        async with TopicTail(stack.kafka, stack.kafka.topics.erased) as tail:
            await start_services(stack)
            for n, user in enumerate(chosen):
                point = points.get(n)
                expires = point == "expire" or rng.random() < 0.4
                key = suppression_key(pepper, "user", user)
                if point in ("publish", "expire"):
                    await set_throttle(stack.coordinator_url, BRAKE_S)
                entries[key] = await _file(short if expires else long, engine, key, user, expires)
                if not serve.alive:
                    serve.start()  # the request above was filed while it was down
                if point is None:
                    continue
                in_flight = await _kill(point, rng, stack, serve, tail)
                faults[f"kill_serve_{point}"] += 1
                await set_throttle(stack.coordinator_url, 0)
                if point == "publish":
                    resent |= in_flight
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
    copies = Counter(r.key.decode() for r in tail.records if r.key and r.value is not None)
    problems.extend(f"{k[:12]}: sent before the kill, not again" for k in resent if copies[k] < 2)
    assert not problems, "\n".join(problems)
    assert statuses == Counter(completed=len(chosen)), statuses
    expired = sum(e.expires for e in entries.values())
    print(
        f"[faults] suppression: {len(entries)} entries ({expired} expired), "
        f"{len(tail.records)} records, {sum(copies.values()) - len(entries)} sent again, "
        f"kills at {dict(faults)}"
    )
    result = await check_invariants(
        stack, world, scenario="17-suppression-sigkill", seed=seed, faults=faults
    )
    result.assert_ok()
    assert result.events == world.expected_events


async def test_suppression_publisher_kills(stack: Stack, tmp_path: Path) -> None:
    await suppression_kill_scenario(stack, tmp_path, seed=1717, users=12, subjects=4, kills=3)


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [1771, 1772, 1773])
async def test_suppression_publisher_kills_seeds(stack: Stack, tmp_path: Path, seed: int) -> None:
    await suppression_kill_scenario(stack, tmp_path, seed=seed, users=40, subjects=10, kills=6)
