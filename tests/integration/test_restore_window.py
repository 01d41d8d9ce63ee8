"""The restoration window on the real database (SPEC §12): a wrongly run policy is
restored within the window and not after it; conflicts are reported and never
overwritten; restored entities are held; an erasure request shreds the vault copies."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.clock import FrozenClock, SystemClock
from coordinator.copies.backups import BackupHorizon
from coordinator.copies.crypto.keystore import open_keystore
from coordinator.copies.crypto.provider import write_kek
from coordinator.erasure.certificate import certificate, render_html, requests_since
from coordinator.erasure.due import Regulation
from coordinator.erasure.requests import request_parts
from coordinator.erasure.service import Erasure
from coordinator.metrics import Metrics
from coordinator.policy.model import PolicySet, parse_policies
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.store.tables import audit_log, legal_hold_entities, legal_holds, vault
from tests import infra

POLICIES = """\
policies:
  - name: stale-users
    table: rw_users
    entity_type: user
    timestamp_column: seen_at
    retention: 30d
    action: delete
    legal_basis: "Storage limitation"
    restore_window: 14d
  - name: old-orders
    table: rw_orders
    entity_type: order
    timestamp_column: placed_at
    retention: 30d
    action: delete
    legal_basis: "Storage limitation"
    restore_window: 14d
    subject: {entity_type: user, column: customer_id}
"""

SECRET = "mail-of-{n}@example.com"


@dataclass
class Env:
    url: str
    kek: Path
    engine: AsyncEngine
    settings: Settings
    policies: PolicySet


@pytest.fixture
async def env(postgres_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    url = await infra.create_database(postgres_url, "test_restore_window")
    await upgrade(url)
    kek = tmp_path / "kek.hex"
    write_kek(kek)
    settings = Settings(database_url=url, kek_file=kek, backup_retention="35d")
    engine = make_engine(url)
    old = datetime.now(UTC) - timedelta(days=90)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE rw_users (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, "
                "tags text[], photo bytea, balance numeric(12,2), seen_at timestamptz)"
            )
        )
        await conn.execute(
            text(
                "CREATE TABLE rw_orders (id uuid PRIMARY KEY, customer_id bigint, "
                "total numeric, placed_at timestamptz)"
            )
        )
        for n in range(1, 5):
            await conn.execute(
                text("INSERT INTO rw_users VALUES (:n, :e, :t, :p, :b, :ts)"),
                {
                    "n": n,
                    "e": SECRET.format(n=n),
                    "t": [f"tag{n}", "x,y"],
                    "p": bytes([0, n, 255]),
                    "b": Decimal(f"{n}.05"),
                    "ts": old,
                },
            )
        for customer in (1, 1, 2):
            await conn.execute(
                text("INSERT INTO rw_orders VALUES (:i, :c, 9.99, :ts)"),
                {"i": uuid.uuid4(), "c": customer, "ts": old},
            )
    try:
        yield Env(url, kek, engine, settings, parse_policies(POLICIES, "restore.yaml"))
    finally:
        await engine.dispose()
        await infra.drop_database(url)


async def _rows(env: Env, table: str) -> list[Any]:
    async with env.engine.connect() as conn:
        return list((await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))).all())


async def _restore(env: Env, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "retention"),
        "restore",
        "--json",
        *args,
        env={
            **os.environ,
            "RETENTION_DATABASE_URL": env.url,
            "RETENTION_KEK_FILE": str(env.kek),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else {}, err.decode()


async def _run(env: Env, policy: str, clock: Any = None) -> uuid.UUID:
    runner = Runner(env.engine, env.policies, env.settings, clock=clock or SystemClock())
    report = await runner.run([policy])
    assert report.ok, report.as_dict()
    return report.run_id


async def test_a_wrong_run_is_restored_within_the_window(env: Env) -> None:
    before = await _rows(env, "rw_users")
    run_id = await _run(env, "stale-users")
    assert await _rows(env, "rw_users") == []

    # Sealed: the vault holds no plaintext of what it keeps.
    async with env.engine.connect() as conn:
        sealed = (await conn.execute(select(vault.c.sealed))).scalars().all()
    assert len(sealed) == 4
    assert not any(b"example.com" in bytes(s) for s in sealed)

    # Meanwhile user 2 signed up again: its unique key is taken.
    async with env.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO rw_users (id, email, seen_at) VALUES (2, 'new@example.com', now())")
        )

    code, dry, err = await _restore(env, "--run", str(run_id), "--dry-run")
    assert code == 0, err
    assert (dry["restored"], dry["conflicts"]) == (["user:1", "user:3", "user:4"], ["user:2"])
    assert len(await _rows(env, "rw_users")) == 1  # a dry run changes nothing

    code, done, err = await _restore(env, "--run", str(run_id), "--by", "ops@example.com")
    assert code == 0, err
    assert (done["restored"], done["conflicts"]) == (["user:1", "user:3", "user:4"], ["user:2"])
    after = await _rows(env, "rw_users")
    # Every column as it was (bytea, arrays, numeric, timestamps); user 2 not overwritten.
    assert [r for r in after if r.id != 2] == [r for r in before if r.id != 2]
    assert next(r.email for r in after if r.id == 2) == "new@example.com"

    hold_id = f"restore-{run_id}"
    async with env.engine.connect() as conn:
        held = (
            (
                await conn.execute(
                    select(legal_hold_entities.c.entity_id)
                    .where(legal_hold_entities.c.hold_id == hold_id)
                    .order_by(legal_hold_entities.c.entity_id)
                )
            )
            .scalars()
            .all()
        )
        audited = (
            await conn.execute(
                select(audit_log.c.actor, audit_log.c.data).where(
                    audit_log.c.action == "vault.restore"
                )
            )
        ).all()
    assert held == ["1", "3", "4"]
    assert len(audited) == 1
    assert audited[0].actor.startswith("ops@example.com")
    assert audited[0].data["conflicts"] == ["user:2"]

    # The hold keeps the next run from deleting them again.
    await _run(env, "stale-users")
    assert {r.id for r in await _rows(env, "rw_users")} == {1, 2, 3, 4}

    # Restoring again puts nothing back twice; the conflict is still reported.
    code, again, err = await _restore(env, "--run", str(run_id), "--by", "ops")
    assert code == 0, err
    assert (again["restored"], again["conflicts"], again["already_restored"]) == ([], ["user:2"], 3)

    # Once the hold is released, restoring that run again is refused.
    async with env.engine.begin() as conn:
        await conn.execute(
            legal_holds.update()
            .where(legal_holds.c.id == hold_id)
            .values(released_at=datetime.now(UTC), released_by="ops")
        )
    code, _, err = await _restore(env, "--run", str(run_id), "--by", "ops")
    assert code == 2
    assert "was released" in err


async def test_one_entity_alone_and_not_after_the_window(env: Env) -> None:
    # The run happened 15 days ago: its 14-day window ended yesterday.
    past = FrozenClock(datetime.now(UTC) - timedelta(days=15))
    run_id = await _run(env, "stale-users", past)
    assert await _rows(env, "rw_users") == []

    code, report, err = await _restore(env, "--run", str(run_id), "--entity", "user:3", "--by", "o")
    assert code == 0, err
    assert (report["restored"], report["expired"]) == ([], 1)
    assert await _rows(env, "rw_users") == []

    # db prune drops the vault rows whose window ended; nothing is left to restore.
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "retention"),
        "db",
        "prune",
        "--json",
        env={**os.environ, "RETENTION_DATABASE_URL": env.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err_bytes = await proc.communicate()
    assert proc.returncode == 0, err_bytes.decode()
    pruned = {p["table"]: p["rows"] for p in json.loads(out)}
    assert pruned["retention_vault"] == 4
    code, _, err = await _restore(env, "--run", str(run_id), "--by", "o")
    assert code == 2
    assert "left nothing in the vault" in err

    # A run within its window: one entity alone comes back.
    run_id = await _run(env, "old-orders")
    async with env.engine.connect() as conn:
        one = (
            await conn.execute(select(vault.c.entity_id).where(vault.c.run_id == run_id).limit(1))
        ).scalar_one()
    code, report, err = await _restore(
        env, "--run", str(run_id), "--entity", f"order:{one.upper()}", "--by", "o"
    )
    assert code == 0, err
    assert report["restored"] == [f"order:{one}"]
    assert [str(r.id) for r in await _rows(env, "rw_orders")] == [one]
    # A subject's rows: user 1's orders of that run (one of them may be back already).
    (first_customer,) = [r.customer_id for r in await _rows(env, "rw_orders")]
    code, report, err = await _restore(env, "--run", str(run_id), "--entity", "user:1", "--by", "o")
    assert code == 0, err
    assert len(report["restored"]) == (1 if first_customer == 1 else 2)
    customers = sorted(r.customer_id for r in await _rows(env, "rw_orders"))
    assert customers == sorted([1, 1, *([2] if first_customer == 2 else [])])


async def test_an_erasure_request_shreds_the_vault_copies(env: Env) -> None:
    run_id = await _run(env, "old-orders")
    erasure = Erasure(env.engine, env.policies, env.settings, SystemClock(), Metrics())
    request, created = await erasure.create(
        subject="user:1",
        regulation=Regulation.GDPR,
        received_at=datetime.now(UTC),
        reference="case-1",
        by="dpo@example.com",
    )
    assert created
    async with env.engine.connect() as conn:
        parts = {p["policy"]: p for p in await request_parts(conn, request.id)}
    assert parts["old-orders"]["archived_copies_shredded"] == 2
    # The request's own deletions (user 1's account) are never vaulted: never restorable.
    assert parts["stale-users"]["rows"] == 1
    async with env.engine.connect() as conn:
        vaulted = (
            await conn.execute(
                select(func.count()).select_from(vault).where(vault.c.policy == "stale-users")
            )
        ).scalar_one()
    assert vaulted == 0
    assert "restoration vault are crypto-shredded" in parts["old-orders"]["detail"]
    keys = open_keystore(env.settings, env.engine)
    try:
        left = await keys.keys_for(["old-orders/user:1", "old-orders/user:2"], create=False)
    finally:
        await keys.aclose()
    assert list(left) == ["old-orders/user:2"]

    # The certificate states when our backups stop holding, and decrypting, the copies.
    async with env.engine.connect() as conn:
        document = await certificate(
            conn, request.id, now=datetime.now(UTC), backups=BackupHorizon.of(env.settings)
        )
        reported = await requests_since(
            conn,
            since=datetime.now(UTC) - timedelta(days=1),
            now=datetime.now(UTC),
            backups=BackupHorizon.of(env.settings),
        )
    done = datetime.fromisoformat(parts["old-orders"]["done_at"])
    assert document["backups"]["statement"] == (
        f"backups holding this data expire by {(done + timedelta(days=35)).isoformat()}"
    )
    assert document["backups"]["crypto_shredded_keys"] == [
        {
            "policy": "old-orders",
            "key_id": parts["old-orders"]["shredded_key_id"],
            "no_backup_decrypts_after": (done + timedelta(days=35)).isoformat(),
        }
    ]
    assert [r["backups_expire_by"] for r in reported] == [(done + timedelta(days=35)).isoformat()]
    assert "no backup decrypts after" in render_html(document)

    code, report, err = await _restore(env, "--run", str(run_id), "--by", "ops")
    assert code == 0, err
    assert len(report["crypto_shredded"]) == 2
    assert len(report["restored"]) == 1
    assert [r.customer_id for r in await _rows(env, "rw_orders")] == [2]
