"""Audit checkpoints (SPEC §13): verify from the newest head, across pruned segments only
where a signed checkpoint accounts for them, and against the head published on Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.evidence import audit
from coordinator.evidence.checkpoints import (
    Checkpoint,
    record_checkpoint,
    take_head,
    verify_chain,
)
from coordinator.evidence.heads import (
    compare_with_head,
    newest_published_head,
    publish_checkpoints,
)
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_checkpoints, audit_log
from schemas import KafkaSettings
from schemas.signing import Verifier
from tests import keys

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
SIGNER = keys.signer(keys.COORDINATOR)
VERIFIER = Verifier([SIGNER.public])


async def _append(engine: AsyncEngine, n: int, start: int) -> None:
    async with engine.begin() as conn:
        for i in range(start, start + n):
            await audit.append(
                conn,
                [audit.AuditEntry("events_published", "relay", {"count": i})],
                at=T0 + timedelta(seconds=i),
            )


@pytest.fixture
async def engine(coordinator_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(coordinator_db)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log))
        await conn.execute(delete(audit_checkpoints))
    yield engine
    await engine.dispose()


async def test_verify_starts_at_the_newest_head_and_full_walks_everything(
    engine: AsyncEngine,
) -> None:
    await _append(engine, 5, 1)
    async with engine.begin() as conn:
        head = await take_head(conn, now=T0, signer=SIGNER)
    assert head is not None
    assert (head.first_seq, head.last_seq) == (1, 5)
    await _append(engine, 3, 6)
    async with engine.begin() as conn:
        # An edit before the head: the default check no longer reads that row, --full does.
        await conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="x"))
        quick = await verify_chain(conn, verifier=VERIFIER)
        full = await verify_chain(conn, full=True, verifier=VERIFIER)
    assert (quick.rows_checked, quick.from_seq, quick.broken) == (3, 6, None)
    assert full.broken is not None
    assert full.broken.seq == 2

    # Nor is a head signed over a broken chain: the next one refuses.
    await _append(engine, 1, 9)
    async with engine.begin() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 7).values(actor="x"))
    with pytest.raises(RuntimeError, match="row 7"):
        async with engine.begin() as conn:
            await take_head(conn, now=T0, signer=SIGNER)


async def test_a_head_with_a_forged_signature_is_no_starting_point(engine: AsyncEngine) -> None:
    await _append(engine, 4, 1)
    async with engine.begin() as conn:
        await take_head(conn, now=T0, signer=keys.signer("someone else"))
        report = await verify_chain(conn, verifier=VERIFIER)
    assert (report.from_seq, report.rows_checked) == (1, 4)


async def test_a_pruned_segment_verifies_only_with_its_signed_checkpoint(
    engine: AsyncEngine,
) -> None:
    await _append(engine, 6, 1)
    async with engine.begin() as conn:
        third = (
            await conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == 3))
        ).scalar_one()
        await conn.execute(delete(audit_log).where(audit_log.c.seq <= 3))
        missing = await verify_chain(conn, full=True, verifier=VERIFIER)
        assert missing.broken is not None
        assert missing.broken.reason == "row 1 is missing"

        forged = Checkpoint("pruned", 1, 3, third, T0)
        await record_checkpoint(conn, forged, keys.signer("someone else"))
        still = await verify_chain(conn, full=True, verifier=VERIFIER)
        assert still.broken is not None
        assert still.broken.seq == 1

        await conn.execute(delete(audit_checkpoints))
        await record_checkpoint(conn, Checkpoint("pruned", 1, 3, third, T0), SIGNER)
        across = await verify_chain(conn, full=True, verifier=VERIFIER)
        assert (across.broken, across.rows_checked, across.last_seq) == (None, 3, 6)

        # A checkpoint whose columns no longer say what was signed is no checkpoint.
        await conn.execute(update(audit_checkpoints).values(last_seq=2))
        edited = await verify_chain(conn, full=True, verifier=VERIFIER)
    assert edited.broken is not None
    assert edited.broken.seq == 1


async def test_cutting_off_the_newest_rows_fails_against_the_published_head(
    engine: AsyncEngine, topics: KafkaSettings, coordinator_db: str
) -> None:
    await _append(engine, 6, 1)
    async with engine.begin() as conn:
        await take_head(conn, now=T0, signer=SIGNER)
    assert await publish_checkpoints(engine, topics, now=T0) == 1
    assert await publish_checkpoints(engine, topics, now=T0) == 0

    published = await newest_published_head(topics, VERIFIER)
    assert published is not None
    assert published.last_seq == 6
    # Whoever cuts the newest rows can delete the head checkpoints too: the chain that is
    # left is consistent, and only the published head shows what is gone.
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq >= 5))
        await conn.execute(delete(audit_checkpoints))
        report = await verify_chain(conn, verifier=VERIFIER)
        assert (report.broken, report.last_seq) == (None, 4)
        check = await compare_with_head(conn, published, last_seq=report.last_seq)
    assert check.broken is not None
    assert check.broken.seq == 5
    assert "row 6" in check.broken.reason

    # The command: exit 1 and the same finding, with only the coordinator's public key.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env |= {
        "RETENTION_DATABASE_URL": coordinator_db,
        "RETENTION_KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap_servers,
        "RETENTION_KAFKA_TOPIC_PREFIX": topics.topic_prefix,
        "RETENTION_COORDINATOR_PUBLIC_KEYS": keys.public_key(keys.COORDINATOR),
    }
    done = subprocess.run(
        [str(Path(sys.executable).with_name("retention")), "audit", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    report_json = json.loads(done.stdout)
    assert report_json["broken"]["seq"] == 5
    assert report_json["published_head"]["seq"] == 6
    offline = subprocess.run(
        [str(Path(sys.executable).with_name("retention")), "audit", "verify", "--offline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offline.returncode == 0, offline.stderr
