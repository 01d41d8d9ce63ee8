"""Holds stored before ids were normalised: rewritten into the form a purge matches.

Such holds were written straight into the tables with the id as typed (`order:042`), so
they protected nothing. The rewrite is idempotent, reports duplicates and leaves (and
names) what no policy can match; after it, the old hold protects its row.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.clock import FrozenClock
from coordinator.purge.hold_ids import normalise_hold_ids
from coordinator.purge.holds import EntityTypes
from coordinator.purge.runner import Runner
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.tables import legal_hold_entities, legal_holds
from tests.policy.conftest import NOW
from tests.policy.test_hold_entities import CART, POLICIES, TABLES, tables, types

__all__ = ["tables", "types"]  # fixtures, imported for pytest

LEGACY = [
    ("old-1", "order", "042"),
    ("old-1", "order", "+7"),
    ("old-1", "order", "7"),  # +7 becomes a duplicate of it
    ("old-1", "cart", str(CART).upper()),
    ("old-1", "Order", "42"),  # no policy has `Order`
    ("old-1", "ticket", "٤٢"),  # Arabic-Indic digits: no ticket id
    ("old-1", "user", "0042"),  # text ids are exact: already normal
    ("old-2", "order", "0042"),
    ("gone", "order", "099"),  # released: history, left alone
]


async def _store_legacy(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(legal_holds),
            [
                {"id": h, "reason": "case", "created_by": "legal", "created_at": NOW}
                for h in ("old-1", "old-2", "gone")
            ],
        )
        await conn.execute(
            text("UPDATE legal_holds SET released_at = :at, released_by = 'x' WHERE id = 'gone'"),
            {"at": NOW},
        )
        await conn.execute(
            insert(legal_hold_entities),
            [{"hold_id": h, "entity_type": t, "entity_id": i} for h, t, i in LEGACY],
        )


async def _store_legacy_at(url: str) -> None:
    engine = make_engine(url)
    try:
        await _store_legacy(engine)
    finally:
        await engine.dispose()


async def _stored(engine: AsyncEngine) -> set[tuple[str, str, str]]:
    e = legal_hold_entities.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(e.hold_id, e.entity_type, e.entity_id))
        return {(r[0], r[1], r[2]) for r in rows}


async def test_legacy_ids_are_rewritten_once_and_protect_their_rows(
    tables: AsyncEngine, types: EntityTypes, settings: Settings
) -> None:
    await _store_legacy(tables)
    async with tables.begin() as conn:
        dry = await normalise_hold_ids(conn, types, actor="t", now=NOW, dry_run=True)
    assert await _stored(tables) == set(LEGACY), "a dry run wrote"
    async with tables.begin() as conn:
        report = await normalise_hold_ids(conn, types, actor="dba", now=NOW)
    assert report.as_dict() == dry.as_dict()
    assert report.as_dict() == {
        "ok": False,
        "rewritten": [
            {
                "hold_id": "old-1",
                "entity": f"cart:{str(CART).upper()}",
                "normalised": [f"cart:{CART}"],
            },
            {"hold_id": "old-1", "entity": "order:042", "normalised": ["order:42"]},
            {"hold_id": "old-2", "entity": "order:0042", "normalised": ["order:42"]},
        ],
        "duplicates": [{"hold_id": "old-1", "entity": "order:+7", "normalised": ["order:7"]}],
        "unknown_types": [{"hold_id": "old-1", "entity": "Order:42", "normalised": []}],
        "unparsable": [{"hold_id": "old-1", "entity": "ticket:٤٢", "normalised": []}],
    }
    assert await _stored(tables) == {
        ("old-1", "order", "42"),
        ("old-1", "order", "7"),
        ("old-1", "cart", str(CART)),
        ("old-1", "Order", "42"),
        ("old-1", "ticket", "٤٢"),
        ("old-1", "user", "0042"),
        ("old-2", "order", "42"),
        ("gone", "order", "099"),
    }
    async with tables.connect() as conn:
        [(actor, data)] = (
            await conn.execute(
                text("SELECT actor, data FROM audit_log WHERE action = 'holds_normalised'")
            )
        ).all()
    assert actor == "dba"
    assert [c["entity"] for c in data["rewritten"]] == [
        c["entity"] for c in report.as_dict()["rewritten"]
    ]

    async with tables.begin() as conn:
        again = await normalise_hold_ids(conn, types, actor="dba", now=NOW)
    assert (again.rewritten, again.duplicates) == ([], [])
    assert (len(again.unknown_types), len(again.unparsable)) == (1, 1)
    async with tables.connect() as conn:
        entries = await conn.scalar(
            text("SELECT count(*) FROM audit_log WHERE action = 'holds_normalised'")
        )
    assert entries == 1, "an idempotent re-run wrote another audit entry"

    old = NOW - timedelta(days=3)
    async with tables.begin() as conn:
        await conn.execute(
            insert(TABLES["order"]), [{"id": i, "created_at": old} for i in (7, 42, 43)]
        )
        await conn.execute(insert(TABLES["cart"]), [{"id": CART, "created_at": old}])
    result = await Runner(tables, POLICIES, settings, clock=FrozenClock(NOW)).run()
    assert result.ok, result.as_dict()
    async with tables.connect() as conn:
        assert set((await conn.execute(select(TABLES["order"].c.id))).scalars()) == {7, 42}
        assert set((await conn.execute(select(TABLES["cart"].c.id))).scalars()) == {CART}


def test_cli_normalise_reports_and_exits_1_while_a_hold_protects_nothing(
    tables: AsyncEngine, coordinator_db: str, tmp_path_factory: object
) -> None:
    import tempfile

    asyncio.run(_store_legacy_at(coordinator_db))
    policy_file = Path(tempfile.mkdtemp()) / "policies.yaml"
    policy_file.write_text(
        "policies:\n"
        + "".join(
            f"  - {{name: {t}s, table: {table.name}, entity_type: {t}, "
            "timestamp_column: created_at, retention: 1d, action: delete, legal_basis: test}\n"
            for t, table in TABLES.items()
        )
    )
    env = {"RETENTION_DATABASE_URL": coordinator_db, "RETENTION_POLICIES": str(policy_file)}
    runner = CliRunner()
    result = runner.invoke(app, ["holds", "normalise", "--by", "dba", "--dry-run"], env=env)
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "order:042 would become order:42" in output
    assert "Order:42 protects nothing (no policy has this entity type)" in output
    result = runner.invoke(app, ["holds", "normalise", "--by", "dba", "--json"], env=env)
    assert result.exit_code == 1, result.output
    assert '"order:42"' in result.stdout
    result = runner.invoke(app, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert "Order:42 protects nothing" in " ".join(result.output.split())
