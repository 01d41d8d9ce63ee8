"""A one-shot command waiting for a lock a stalled session holds gives up after
RETENTION_CLI_LOCK_TIMEOUT_S, naming the lock and its holder (pid, application name,
state) and nothing of the data; every coordinator session names its process."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from coordinator.cli._locks import lock_report
from coordinator.evidence.audit import CHAIN_LOCK
from coordinator.settings import Settings
from coordinator.store import db
from coordinator.store.db import connect_outside_pool, make_engine
from coordinator.store.tables import legal_holds
from tests import infra
from tests.policy.conftest import SEED_POLICIES
from tests.policy.test_cli import _seed

RETENTION_CLI = str(Path(sys.executable).with_name("retention"))
ENTITY = "user:user-00001"


async def _waiting_as(url: str, name: str, timeout_s: float) -> bool:
    """Whether a session named `name` is seen waiting for a lock within `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await infra.lock_waiters(url, application_name=name):
                await asyncio.sleep(0.2)
    except TimeoutError:
        return False
    return True


async def test_a_command_gives_up_on_a_stalled_lock_naming_it_and_its_holder(
    coordinator_db: str,
) -> None:
    await _seed(coordinator_db)
    holder_engine = make_engine(coordinator_db, pool_size=1)
    try:
        async with holder_engine.connect() as holder:
            await holder.execute(text("SET application_name = 'stalled replica'"))
            pid = await holder.scalar(select(func.pg_backend_pid()))
            # A replica stopped mid ack batch: the audit chain's lock taken in its open
            # transaction, never released.
            await holder.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK)))
            process = await asyncio.create_subprocess_exec(
                RETENTION_CLI,
                *("holds", "create", ENTITY, "--reason", "case 7", "--by", "legal"),
                env={
                    "PATH": "/usr/bin:/bin",
                    "RETENTION_DATABASE_URL": coordinator_db,
                    "RETENTION_POLICIES": str(SEED_POLICIES),
                    "RETENTION_CLI_LOCK_TIMEOUT_S": "3",
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            # The waiting session names its command.
            seen = await _waiting_as(coordinator_db, "retention holds", 60)
            try:
                async with asyncio.timeout(90):
                    out, err = await process.communicate()
            except TimeoutError:
                process.kill()
                await process.communicate()
                raise AssertionError("holds create still waiting after 90 s") from None
            await holder.rollback()
    finally:
        await holder_engine.dispose()
    said = " ".join((out + err).decode().split())  # rich wraps long lines
    assert seen
    assert process.returncode == 1, said
    assert "gave up after 3 s waiting for the audit chain lock" in said, said
    assert f"held by pid {pid} (stalled replica, idle in transaction" in said, said
    assert "RETENTION_CLI_LOCK_TIMEOUT_S" in said
    assert "user-00001" not in said
    assert "case 7" not in said
    verify = make_engine(coordinator_db, pool_size=1)
    try:
        async with verify.connect() as conn:
            made = select(func.count()).where(legal_holds.c.reason == "case 7")
            assert await conn.scalar(made) == 0  # rolled back
    finally:
        await verify.dispose()


async def _shown(url: str, *settings: str) -> list[str]:
    """The settings a new session of a new engine starts with, as PostgreSQL shows them."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return [await conn.scalar(text(f"SHOW {name}")) for name in settings]
    finally:
        await engine.dispose()


async def test_sessions_carry_the_name_of_their_process(
    coordinator_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Restored after the test: the settings are the process's.
    monkeypatch.setattr(db, "_session", dict(db._session))
    assert await _shown(coordinator_db, "application_name") == ["retention"]
    db.name_sessions("serve")
    assert await _shown(coordinator_db, "application_name", "lock_timeout") == [
        "retention serve",
        "0",
    ]
    engine = make_engine(coordinator_db, pool_size=1)
    try:
        raw = await connect_outside_pool(engine)
        try:
            assert await raw.fetchval("SHOW application_name") == "retention serve"
        finally:
            await raw.close()
    finally:
        await engine.dispose()
    db.bound_lock_waits(2.5)
    assert await _shown(coordinator_db, "lock_timeout") == ["2500ms"]


class _OrigError(Exception):
    sqlstate = "55P03"


def test_a_row_lock_or_an_unnamed_advisory_lock_lists_the_older_transactions(
    coordinator_db: str,
) -> None:
    """Without an advisory key the report cannot tell the holder: it lists the sessions
    in a transaction since before the wait began, never what they ran."""
    opened, release = threading.Event(), threading.Event()
    pids: list[int] = []

    async def hold() -> None:
        engine = make_engine(coordinator_db, pool_size=1)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SET application_name = 'stalled replica'"))
                pids.append(await conn.scalar(select(func.pg_backend_pid())))
                opened.set()
                await asyncio.to_thread(release.wait, 60)
        finally:
            await engine.dispose()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert opened.wait(60)
        time.sleep(1.5)
        settings = Settings(database_url=coordinator_db, cli_lock_timeout_s=1)
        reports = [
            lock_report(DBAPIError(statement, params, _OrigError()), settings)
            for statement, params in (
                ("UPDATE retention_event_status SET state=$1", ("user-00001",)),
                ("SELECT pg_advisory_xact_lock(hashtext($1))", ("retention.policy:p",)),
            )
        ]
    finally:
        release.set()
        holder.join()
    for report, what in zip(reports, ("a row or table lock", "an advisory lock"), strict=True):
        assert report.startswith(f"gave up after 1 s waiting for {what}, sessions in a"), report
        assert f"pid {pids[0]} (stalled replica, idle in transaction" in report, report
        assert "user-00001" not in report
        assert "retention.policy" not in report
