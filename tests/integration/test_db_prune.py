"""`retention db prune`: only the outbox rows of events completed long enough ago go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from coordinator.evidence import audit
from coordinator.outbox.lookup import EVENTS, TRACKED, published_up_to
from coordinator.outbox.prune import prune_outbox
from coordinator.store.db import make_engine
from coordinator.store.tables import audit_log, event_status, outbox_batches, outbox_cursors
from tests.outbox import insert_rows

NOW = datetime.now(UTC)
OLD, RECENT = NOW - timedelta(days=90), NOW - timedelta(days=5)
KEEP = timedelta(days=30)

# (state or None when not tracked, published, completed_at): one event each, many of
# every kind so the keyset walk (batch 3) crosses kinds within and across windows.
KINDS = {
    "completed long ago": ("completed", True, OLD),
    "completed recently": ("completed", True, RECENT),
    "pending": ("pending", True, None),
    "overdue": ("overdue", True, None),
    "failed": ("failed", True, None),
    "published, not tracked yet": (None, True, None),
    "never published": (None, False, None),
}


async def _world(url: str) -> dict[str, set[uuid.UUID]]:
    """One outbox batch per event, the published ones first (the watermark covers them),
    and the tracker's cursor at the last published one."""
    planned: list[tuple[str, dict[str, Any], tuple[str | None, bool, datetime | None]]] = []
    for n in range(5):
        for kind, (state, published, completed_at) in KINDS.items():
            row = {
                "run_id": uuid.uuid4(),  # one batch each
                "policy": "p",
                "event_type": "delete",
                "entity_type": "user",
                "entity_id": f"{kind}-{n}",
                "legal_basis": "b",
                "initiated_at": OLD,
                "deadline": OLD + timedelta(days=30),
                "published_at": OLD if published else None,
            }
            planned.append((kind, row, (state, published, completed_at)))
    planned.sort(key=lambda p: not p[2][1])
    engine = make_engine(url)
    ids: dict[str, set[uuid.UUID]] = {kind: set() for kind in KINDS}
    try:
        await insert_rows(engine, [row for _, row, _ in planned])
        status_rows = []
        for kind, row, (state, _, completed_at) in planned:
            ids[kind].add(row["event_id"])
            if state is not None:
                status_rows.append(
                    {
                        **{k: row[k] for k in ("event_id", "policy", "event_type")},
                        **{k: row[k] for k in ("entity_type", "entity_id", "initiated_at")},
                        "deadline": row["deadline"],
                        "published_at": OLD,
                        "state": state,
                        "expected": 1,
                        "completed_at": completed_at,
                        "tracked_at": OLD,
                        "updated_at": OLD,
                    }
                )
        async with engine.begin() as conn:
            # Written when its events began, as a purge would have: a batch cannot
            # complete before it exists, and pruning relies on it.
            await conn.execute(
                update(outbox_batches).values(created_at=outbox_batches.c.initiated_at)
            )
            await conn.execute(insert(event_status), status_rows)
            await conn.execute(
                update(outbox_cursors)
                .where(outbox_cursors.c.name == TRACKED)
                .values(seq=await published_up_to(conn))
            )
    finally:
        await engine.dispose()
    return ids


async def _left(url: str) -> tuple[set[uuid.UUID], int, int]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            kept = set((await conn.execute(select(EVENTS.c.event_id))).scalars())
            statuses = (
                await conn.execute(select(func.count()).select_from(event_status))
            ).scalar_one()
            prunes = (
                await conn.execute(
                    select(func.count())
                    .select_from(audit_log)
                    .where(audit_log.c.action == "db.prune")
                )
            ).scalar_one()
            assert (await audit.verify(conn))[1] is None
    finally:
        await engine.dispose()
    return kept, statuses, prunes


async def test_prune_removes_only_completed_events_past_retention(coordinator_db: str) -> None:
    ids = await _world(coordinator_db)
    everything = set().union(*ids.values())
    doomed = ids["completed long ago"]

    engine = make_engine(coordinator_db)
    try:
        dry = await prune_outbox(engine, now=NOW, keep=KEEP, dry_run=True, batch=3)
        assert dry.rows == len(doomed)
        assert await _left(coordinator_db) == (everything, 25, 0)

        done = await prune_outbox(engine, now=NOW, keep=KEEP, dry_run=False, batch=3)
    finally:
        await engine.dispose()
    assert done.rows == len(doomed)
    kept, statuses, prunes = await _left(coordinator_db)
    # Every event that is not completed keeps its outbox row, however old; the event
    # status rows (the evidence) all stay.
    assert kept == everything - doomed
    assert statuses == 25
    assert prunes >= 1

    # The command, with a retention that makes the recently completed ones due: a dry
    # run counts them and deletes nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_DATABASE_URL"] = coordinator_db
    env["RETENTION_HASH_SECRET"] = "k"
    env["RETENTION_OUTBOX_RETENTION_DAYS"] = "1"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("retention")), "db", "prune", "--dry-run", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    reports = json.loads(done.stdout)
    report, vaulted = reports[0], reports[-1]
    assert vaulted["table"] == "retention_vault"
    assert (report["table"], report["rows"], report["dry_run"]) == (
        "retention_outbox_batches",
        len(ids["completed recently"]),
        True,
    )
    assert (await _left(coordinator_db))[0] == everything - doomed
