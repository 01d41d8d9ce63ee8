"""Scenario: SIGKILL during data-key destruction and during a restore (SPEC §12, issue #20).

The kills are placed, not timed: a lock the test holds stops the process at the exact
step (the key store's DELETE, the audit append after it, the second batch of a restore),
the test sees it waiting there, and kills it. Afterwards nothing is half done:

- a data key is either usable (its archived copies open) or gone, and the audit log
  never says `data_key.destroyed` before the key is gone; an intent without its outcome
  is completed by filing the request again;
- a restore batch is all or nothing: the rows of the killed batch are neither back in the
  table, nor marked restored, nor in the hold; the batches before it stay restored, and
  running the command again finishes the job.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.clock import SystemClock
from coordinator.evidence.audit import CHAIN_LOCK
from coordinator.policy.model import PolicySet, parse_policies
from coordinator.purge.archive import CryptoShredded
from coordinator.purge.archive_read import read_entity
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log, data_keys, legal_hold_entities, vault
from tests import infra
from tests.sealed import sealed_databases

POLICIES = """\
policies:
  - name: notes
    table: vk_notes
    entity_type: note
    timestamp_column: written_at
    retention: 30d
    action: archive
    legal_basis: "Service improvement"
    subject: {entity_type: user, column: author_id}
  - name: stale-users
    table: vk_users
    entity_type: user
    timestamp_column: seen_at
    retention: 30d
    action: delete
    legal_basis: "Storage limitation"
    restore_window: 14d
"""

RETENTION = str(Path(sys.executable).parent / "retention")


@dataclass
class Env:
    url: str
    keystore_url: str
    engine: AsyncEngine
    keystore: AsyncEngine
    settings: Settings
    policies: PolicySet
    environ: dict[str, str]


@pytest.fixture
async def env(postgres_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with sealed_databases(postgres_url, "test_vault_kills", tmp_path, POLICIES) as sealed:
        engine, keystore = sealed.engine, make_engine(sealed.keystore_url)
        old = datetime.now(UTC) - timedelta(days=90)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE vk_notes (id bigint PRIMARY KEY, author_id bigint, body text, "
                    "written_at timestamptz)"
                )
            )
            await conn.execute(
                text(
                    "CREATE TABLE vk_users (id bigint PRIMARY KEY, email text UNIQUE, "
                    "seen_at timestamptz)"
                )
            )
            for n, author in ((1, 7), (2, 7), (3, 8)):
                await conn.execute(
                    text("INSERT INTO vk_notes VALUES (:n, :a, :b, :ts)"),
                    {"n": n, "a": author, "b": f"note {n}", "ts": old},
                )
            for n in range(1, 5):
                await conn.execute(
                    text("INSERT INTO vk_users VALUES (:n, :e, :ts)"),
                    {"n": n, "e": f"u{n}@example.com", "ts": old},
                )
        try:
            yield Env(
                sealed.url,
                sealed.keystore_url,
                engine,
                keystore,
                sealed.settings,
                parse_policies(POLICIES, "kills.yaml"),
                sealed.environ(),
            )
        finally:
            await keystore.dispose()


async def _start(env: Env, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        RETENTION,
        *argv,
        env=env.environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _until(check: Callable[[], Awaitable[bool]], proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(60):
        while not await check():
            assert proc.returncode is None, (await proc.communicate())[1].decode()
            await asyncio.sleep(0.05)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL


async def _waiting_on_a_lock(url: str, database: str) -> bool:
    return bool(await infra.lock_waiters(url, database=database))


async def _audited(env: Env, action: str) -> list[dict[str, object]]:
    async with env.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_log.c.data).where(audit_log.c.action == action).order_by(audit_log.c.seq)
        )
        return list(rows.scalars())


async def _read(env: Env, entity: str) -> list[dict[str, object]]:
    entity_type, _, entity_id = entity.partition(":")
    return await read_entity(
        env.engine, env.settings, env.policies, "notes", entity_type, entity_id
    )


async def test_sigkill_during_key_destruction_leaves_the_key_usable_or_gone(env: Env) -> None:
    assert (await Runner(env.engine, env.policies, env.settings).run(["notes"])).ok
    scope = "notes/user:7"
    request = ("requests", "create", "user:7", "--regulation", "gdpr")
    request += ("--reference", "case-7", "--by", "dpo", "--json")
    keystore_db = env.keystore_url.rpartition("/")[2]
    data_db = env.url.rpartition("/")[2]

    # Kill 1: inside the key store's DELETE (the test holds the key's row lock).
    async with env.keystore.connect() as blocker:
        held = await blocker.begin()
        await blocker.execute(
            select(data_keys.c.scope).where(data_keys.c.scope == scope).with_for_update()
        )
        proc = await _start(env, *request)
        await _until(lambda: _waiting_on_a_lock(env.url, keystore_db), proc)
        assert len(await _audited(env, "data_key.destroying")) == 1
        await _kill(proc)
        await held.rollback()
    # Usable: the key is there and every archived copy opens; nothing claims otherwise.
    assert [r["body"] for r in await _read(env, "user:7")] == ["note 1", "note 2"]
    assert await _audited(env, "data_key.destroyed") == []

    # Kill 2: after the key store committed the deletion, before its audit entry (the
    # test holds the audit chain's lock once the intent is written).
    async with env.keystore.connect() as blocker, env.engine.connect() as chain:
        held = await blocker.begin()
        await blocker.execute(
            select(data_keys.c.scope).where(data_keys.c.scope == scope).with_for_update()
        )
        proc = await _start(env, *request)
        await _until(lambda: _waiting_on_a_lock(env.url, keystore_db), proc)
        chain_held = await chain.begin()
        await chain.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK)))
        await held.rollback()
        await _until(lambda: _gone(env, scope), proc)
        await _until(lambda: _waiting_on_a_lock(env.url, data_db), proc)
        await _kill(proc)
        await chain_held.rollback()
    # Gone: no copy opens; the log holds the intent, and no claim of an outcome yet.
    with pytest.raises(CryptoShredded):
        await _read(env, "user:7")
    assert len(await _audited(env, "data_key.destroying")) == 2
    assert await _audited(env, "data_key.destroyed") == []

    # Filing the request again completes it: the destruction is recorded, once.
    proc = await _start(env, *request)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    (destroyed,) = await _audited(env, "data_key.destroyed")
    assert destroyed["scope"] == scope
    assert destroyed["already_gone"] is True
    assert [r["body"] for r in await _read(env, "user:8")] == ["note 3"]  # others untouched


async def _gone(env: Env, scope: str) -> bool:
    async with env.keystore.connect() as conn:
        found = await conn.execute(select(data_keys.c.key_id).where(data_keys.c.scope == scope))
        return found.first() is None


async def _restored(conn: AsyncConnection, run_id: object) -> tuple[set[int], list[str], list[str]]:
    users = set((await conn.execute(text("SELECT id FROM vk_users"))).scalars())
    marked = list(
        (
            await conn.execute(
                select(vault.c.entity_id)
                .where(vault.c.run_id == run_id, vault.c.restored_at.is_not(None))
                .order_by(vault.c.entity_id)
            )
        ).scalars()
    )
    held = list(
        (
            await conn.execute(
                select(legal_hold_entities.c.entity_id)
                .where(legal_hold_entities.c.hold_id == f"restore-{run_id}")
                .order_by(legal_hold_entities.c.entity_id)
            )
        ).scalars()
    )
    return users, marked, held


async def test_sigkill_during_a_restore_leaves_each_batch_all_or_nothing(env: Env) -> None:
    report = await Runner(env.engine, env.policies, env.settings, clock=SystemClock()).run(
        ["stale-users"]
    )
    assert report.ok
    run_id = report.run_id
    async with env.engine.connect() as conn:
        order = list(
            (
                await conn.execute(
                    select(vault.c.entity_id).where(vault.c.run_id == run_id).order_by(vault.c.id)
                )
            ).scalars()
        )
    first, second = order[:2], order[2:]
    restore = ("restore", "--run", str(run_id), "--by", "ops", "--batch-size", "2")
    data_db = env.url.rpartition("/")[2]

    # The second batch's first row meets a row another transaction is inserting with the
    # same key: the restore waits there, its batch half done in its transaction.
    async with env.engine.connect() as blocker:
        held = await blocker.begin()
        await blocker.execute(
            text(
                "INSERT INTO vk_users (id, email, seen_at) VALUES (:i, 'other@example.com', now())"
            ),
            {"i": int(second[0])},
        )
        proc = await _start(
            env, "restore", "--run", str(run_id), "--by", "ops", "--batch-size", "2"
        )
        await _until(lambda: _waiting_on_a_lock(env.url, data_db), proc)
        await _kill(proc)
        await held.rollback()

    async with env.engine.connect() as conn:
        users, marked, hold = await _restored(conn, run_id)
    assert users == {int(i) for i in first}  # batch 1 whole, batch 2 nothing
    assert marked == sorted(first)
    assert hold == sorted(first)
    assert len(await _audited(env, "vault.restore")) == 1

    proc = await _start(env, *restore)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    async with env.engine.connect() as conn:
        users, marked, hold = await _restored(conn, run_id)
    assert users == {1, 2, 3, 4}
    assert marked == sorted(order)
    assert hold == sorted(order)
