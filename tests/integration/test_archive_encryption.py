"""The encrypted archive on the real database (SPEC §12): no plaintext in a dump of the
data's database, readable through `retention archive read`, crypto-shredded by an erasure
request, and a backup taken before the request useless once the key store lost the key."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.api import ApiContext
from coordinator.api.health import KafkaHealth
from coordinator.api.tokens import Scope, TokenStore, add_token, new_token
from coordinator.clock import SystemClock
from coordinator.copies.crypto.keystore import DataKey, open_keystore
from coordinator.copies.crypto.provider import LocalKeyProvider, write_kek
from coordinator.erasure.due import Regulation
from coordinator.erasure.requests import request_parts
from coordinator.erasure.service import Erasure
from coordinator.metrics import Metrics
from coordinator.policy.binding import bind_policies
from coordinator.policy.model import parse_policies
from coordinator.purge.archive_migrate import Encrypted, encrypt_plain_archive
from coordinator.purge.holds import create_hold, entity_types
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log, data_keys
from schemas import KafkaSettings
from tests import infra
from tests.api.conftest import auth, make_client
from tests.sealed import Sealed, sealed_databases

POLICIES = """\
policies:
  - name: notes
    table: ae_notes
    entity_type: note
    timestamp_column: written_at
    retention: 30d
    action: archive
    legal_basis: "Service improvement"
    subject: {entity_type: user, column: author_id}
"""

SECRET = "s3cret-note-of-alice-{n}"
"""A value only the sealed part of an archived row holds."""


def _libpq(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+asyncpg)?://", "postgresql://", url)


async def _tool(*argv: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out


async def _archive_read(env: Sealed, url: str, entity: str) -> tuple[int, str, str]:
    retention = str(Path(sys.executable).parent / "retention")
    proc = await asyncio.create_subprocess_exec(
        retention,
        "archive",
        "read",
        "--policy",
        "notes",
        "--entity",
        entity,
        env={**env.environ(), "RETENTION_DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def env(postgres_url: str, tmp_path: Path) -> AsyncIterator[Sealed]:
    async with sealed_databases(postgres_url, "test_archive", tmp_path, POLICIES) as env:
        old = datetime.now(UTC) - timedelta(days=90)
        async with env.engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE ae_notes (id bigint PRIMARY KEY, author_id bigint, "
                    "body text, written_at timestamptz)"
                )
            )
            for n, author in ((1, 7), (2, 7), (3, 8)):
                await conn.execute(
                    text("INSERT INTO ae_notes VALUES (:n, :a, :b, :ts)"),
                    {"n": n, "a": author, "b": SECRET.format(n=n), "ts": old},
                )
        yield env


async def test_archive_is_sealed_readable_and_shredded_even_in_an_old_backup(
    env: Sealed, tmp_path: Path
) -> None:
    policy_set = parse_policies(POLICIES, "notes.yaml")
    report = await Runner(env.engine, policy_set, env.settings).run(None)
    assert report.ok, report.as_dict()

    # Sealed at rest: the dump of the data's database holds no plaintext of the bodies,
    # and no data key (they live, wrapped, in the key store's database only).
    dump = await _tool("pg_dump", "--data-only", _libpq(env.url))
    assert b"ae_notes_archive" in dump
    assert b"s3cret-note" not in dump
    async with env.engine.connect() as conn:
        archived = (await conn.execute(text("SELECT count(*) FROM ae_notes_archive"))).scalar()
        in_data_db = (await conn.execute(select(data_keys.c.scope))).all()
    assert archived == 3
    assert in_data_db == []

    code, out, err = await _archive_read(env, env.url, "user:7")
    assert code == 0, err
    assert [(r["id"], r["body"]) for r in json.loads(out)] == [
        (1, SECRET.format(n=1)),
        (2, SECRET.format(n=2)),
    ]

    # The backup, taken before the request.
    backup = tmp_path / "before.sql"
    backup.write_bytes(await _tool("pg_dump", "--no-owner", _libpq(env.url)))

    erasure = Erasure(env.engine, policy_set, env.settings, SystemClock(), Metrics())
    request, created = await erasure.create(
        subject="user:7",
        regulation=Regulation.GDPR,
        received_at=datetime.now(UTC),
        reference="case-7",
        by="dpo@example.com",
    )
    assert created
    async with env.engine.connect() as conn:
        (part,) = await request_parts(conn, request.id)
        destroyed = (
            await conn.execute(
                select(audit_log.c.data).where(audit_log.c.action == "data_key.destroyed")
            )
        ).scalar_one()
    assert part["archived_copies_shredded"] == 2
    assert part["shredded_key_id"] is not None
    assert destroyed["key_id"] == str(part["shredded_key_id"])
    assert destroyed["archived_rows"] == 2
    keystore = make_engine(env.keystore_url)
    try:
        async with keystore.connect() as conn:
            left = (await conn.execute(select(data_keys.c.scope))).scalars().all()
    finally:
        await keystore.dispose()
    assert left == ["notes/user:8"]

    code, out, err = await _archive_read(env, env.url, "user:7")
    assert code == 1
    assert "crypto-shredded" in err
    assert "s3cret" not in out + err

    # The backup restored after the request: the rows are there, the key is not.
    restored = await infra.create_database(infra.database_url(), "test_archive_restored")
    try:
        await _tool("psql", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(backup), _libpq(restored))
        code, out, err = await _archive_read(env, restored, "user:7")
        assert code == 1
        assert "crypto-shredded" in err
        code, out, err = await _archive_read(env, restored, "user:8")
        assert code == 0, err
        assert [r["body"] for r in json.loads(out)] == [SECRET.format(n=3)]
    finally:
        await infra.drop_database(restored)


async def test_a_held_archived_copy_keeps_the_subjects_key(env: Sealed) -> None:
    policy_set = parse_policies(POLICIES, "notes.yaml")
    assert (await Runner(env.engine, policy_set, env.settings).run(None)).ok
    async with env.engine.begin() as conn:
        await create_hold(
            conn,
            types=await entity_types(conn, policy_set),
            entities=["note:3"],
            reason="Litigation hold",
            created_by="legal",
            now=datetime.now(UTC),
            hold_id="case-3",
        )
    erasure = Erasure(env.engine, policy_set, env.settings, SystemClock(), Metrics())
    request, _ = await erasure.create(
        subject="user:8",
        regulation=Regulation.GDPR,
        received_at=datetime.now(UTC),
        reference="case-8",
        by="dpo@example.com",
    )
    async with env.engine.connect() as conn:
        (part,) = await request_parts(conn, request.id)
    assert part["archived_copies_shredded"] == 0
    assert part["held"] == 1
    code, out, err = await _archive_read(env, env.url, "user:8")
    assert code == 0, err
    assert [r["body"] for r in json.loads(out)] == [SECRET.format(n=3)]


async def test_kek_rotation_rewraps_keys_and_leaves_the_data(env: Sealed, tmp_path: Path) -> None:
    policy_set = parse_policies(POLICIES, "notes.yaml")
    assert (await Runner(env.engine, policy_set, env.settings).run(None)).ok
    async with env.engine.connect() as conn:
        before = (await conn.execute(text("SELECT * FROM ae_notes_archive ORDER BY id"))).all()
    new_kek = tmp_path / "new" / "kek.hex"
    new_kek.parent.mkdir()
    write_kek(new_kek)
    rotated = Settings(database_url=env.url, keystore_url=env.keystore_url, kek_file=new_kek)
    keys = open_keystore(rotated, env.engine)
    try:
        assert await keys.rewrap(LocalKeyProvider.from_file(env.kek), batch_size=1) == 2
        assert await keys.rewrap(LocalKeyProvider.from_file(env.kek)) == 0  # resumable, done
    finally:
        await keys.aclose()
    async with env.engine.connect() as conn:
        after = (await conn.execute(text("SELECT * FROM ae_notes_archive ORDER BY id"))).all()
    assert after == before  # the data is not touched

    env.kek = new_kek
    code, out, err = await _archive_read(env, env.url, "user:7")
    assert code == 0, err
    assert [r["body"] for r in json.loads(out)] == [SECRET.format(n=1), SECRET.format(n=2)]


async def test_archive_read_over_http_needs_admin_and_says_gone_once_shredded(
    env: Sealed, tmp_path: Path
) -> None:
    policy_set = parse_policies(POLICIES, "notes.yaml")
    assert (await Runner(env.engine, policy_set, env.settings).run(None)).ok
    tokens_file = tmp_path / "tokens.yaml"
    made = {}
    for scope in (Scope.READ, Scope.ADMIN):
        created = new_token(f"{scope.value}-bot", scope)
        add_token(tokens_file, created.entry)
        made[scope] = created.token
    ctx = ApiContext(
        engine=env.engine,
        kafka_health=KafkaHealth(KafkaSettings()),
        registry=CollectorRegistry(),
        clock=SystemClock(),
        tokens=TokenStore(tokens_file),
        policy_set=policy_set,
        global_schedule="0 3 * * *",
        settings=env.settings,
    )
    path = "/v1/policies/notes/archive/user/7"
    async with make_client(ctx, made[Scope.ADMIN]) as client:
        assert (await client.get(path, headers=auth(made[Scope.READ]))).status_code == 403
        read = await client.get(path)
        assert read.status_code == 200, read.text
        assert [(r["id"], r["body"]) for r in read.json()] == [
            (1, SECRET.format(n=1)),
            (2, SECRET.format(n=2)),
        ]
        assert (await client.get("/v1/policies/notes/archive/order/7")).status_code == 404
        assert (await client.get("/v1/policies/nope/archive/user/7")).status_code == 404

        erasure = Erasure(env.engine, policy_set, env.settings, SystemClock(), Metrics())
        await erasure.create(
            subject="user:7",
            regulation=Regulation.GDPR,
            received_at=datetime.now(UTC),
            reference="case-7",
            by="dpo@example.com",
        )
        gone = await client.get(path)
        assert gone.status_code == 410
        assert "crypto-shredded" in gone.json()["detail"]
        assert "s3cret" not in gone.text
        # Without settings (no key store), the route says so instead of failing.
        async with make_client(dataclasses.replace(ctx, settings=None), made[Scope.ADMIN]) as unset:
            assert (await unset.get(path)).status_code == 503


PLAIN = "plain-secret-{n}"


class _Interrupted(Exception):
    pass


async def test_a_plain_archive_is_encrypted_in_place_and_resumes(env: Sealed) -> None:
    policy_set = parse_policies(POLICIES, "notes.yaml")
    old = datetime.now(UTC) - timedelta(days=400)
    async with env.engine.begin() as conn:
        # The layout archives had before encryption: every column in clear, plus archived_at.
        await conn.execute(
            text(
                "CREATE TABLE ae_notes_archive (id bigint, author_id bigint, body text NOT NULL, "
                "written_at timestamptz, archived_at timestamptz NOT NULL)"
            )
        )
        for n, author in ((11, 7), (12, 7), (13, 8), (14, 9), (15, 9)):
            await conn.execute(
                text("INSERT INTO ae_notes_archive VALUES (:n, :a, :b, :ts, :ts)"),
                {"n": n, "a": author, "b": PLAIN.format(n=n), "ts": old},
            )
        _, issues = await bind_policies(conn, policy_set, env.settings)
    assert "retention archive encrypt --policy notes" in str(issues["notes"][0])

    def stop_after_first(progress: Encrypted) -> None:
        raise _Interrupted

    keys = open_keystore(env.settings, env.engine)
    try:
        with pytest.raises(_Interrupted):
            await encrypt_plain_archive(
                env.engine,
                keys,
                policy_set,
                "notes",
                now=datetime.now(UTC),
                by="ops",
                batch_size=2,
                after_batch=stop_after_first,
            )
    finally:
        await keys.aclose()
    async with env.engine.connect() as conn:
        sealed = (
            await conn.execute(
                text("SELECT count(*) FROM ae_notes_archive WHERE archive_sealed IS NOT NULL")
            )
        ).scalar()
        clear_left = (
            await conn.execute(text("SELECT count(*) FROM ae_notes_archive WHERE body IS NOT NULL"))
        ).scalar()
        _, issues = await bind_policies(conn, policy_set, env.settings)
    assert (sealed, clear_left) == (2, 3)  # the first batch committed, whole
    assert "being encrypted in place" in str(issues["notes"][0])

    retention = str(Path(sys.executable).parent / "retention")
    proc = await asyncio.create_subprocess_exec(
        *(retention, "archive", "encrypt", "--policy", "notes", "--by", "ops"),
        *("--batch-size", "2", "--json"),
        env=env.environ(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {
        "table": "ae_notes_archive",
        "rows": 3,
        "batches": 2,
        "finished": True,
        "already_encrypted": False,
    }

    # Run again (as after a run stopped before its vacuum, or one with --no-vacuum): an
    # encrypted archive is only vacuumed, its table rewritten.
    async with env.engine.connect() as conn:
        before = await conn.scalar(text("SELECT pg_relation_filenode('ae_notes_archive')"))
    keys = open_keystore(env.settings, env.engine)
    try:
        again = await encrypt_plain_archive(
            env.engine, keys, policy_set, "notes", now=datetime.now(UTC), by="ops"
        )
    finally:
        await keys.aclose()
    async with env.engine.connect() as conn:
        after = await conn.scalar(text("SELECT pg_relation_filenode('ae_notes_archive')"))
    assert (again.already, again.rows) == (True, 0)
    assert after != before

    dump = await _tool("pg_dump", "--data-only", _libpq(env.url))
    assert b"plain-secret" not in dump
    code, out_text, err_text = await _archive_read(env, env.url, "user:9")
    assert code == 0, err_text
    assert [(r["id"], r["body"]) for r in json.loads(out_text)] == [
        (14, PLAIN.format(n=14)),
        (15, PLAIN.format(n=15)),
    ]

    # The migrated archive is an archive like any: runs add to it, requests shred it.
    assert (await Runner(env.engine, policy_set, env.settings).run(None)).ok
    code, out_text, err_text = await _archive_read(env, env.url, "user:7")
    assert code == 0, err_text
    assert [r["id"] for r in json.loads(out_text)] == [1, 2, 11, 12]
    erasure = Erasure(env.engine, policy_set, env.settings, SystemClock(), Metrics())
    request, _ = await erasure.create(
        subject="user:9",
        regulation=Regulation.GDPR,
        received_at=datetime.now(UTC),
        reference="case-9",
        by="dpo@example.com",
    )
    async with env.engine.connect() as conn:
        (part,) = await request_parts(conn, request.id)
    assert part["archived_copies_shredded"] == 2
    code, _, err_text = await _archive_read(env, env.url, "user:9")
    assert code == 1
    assert "crypto-shredded" in err_text


async def test_created_keys_are_the_stored_ones_and_a_concurrent_creator_wins(
    env: Sealed,
) -> None:
    """`keys_for` hands out the keys it creates without reading them back: each must be
    what the store unwraps later, and a scope someone else stored first keeps theirs."""
    keys = open_keystore(env.settings, env.engine)
    try:
        theirs = await keys.keys_for(["race/user:1"], create=True)
        # The race: the scope was missing when looked up, and stored before the insert.
        looked_up = keys._select
        calls: list[list[str]] = []

        async def missed_once(conn: AsyncConnection, scopes: list[str]) -> dict[str, DataKey]:
            calls.append(scopes)
            return {} if len(calls) == 1 else await looked_up(conn, scopes)

        keys._select = missed_once  # type: ignore[method-assign]
        got = await keys.keys_for(["race/user:1", "race/user:2", "race/user:3"], create=True)
        assert calls[1:] == [["race/user:1"]]  # only the lost scope is read back
        assert got["race/user:1"] == theirs["race/user:1"]
        stored = await keys.keys_by_id({key.key_id for key in got.values()})
        assert {scope: stored[key.key_id] for scope, key in got.items()} == got
        assert len({key.key for key in got.values()}) == 3
        assert await keys.keys_for(["race/user:4"], create=False) == {}
    finally:
        await keys.aclose()
