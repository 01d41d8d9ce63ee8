"""The CLI: plan changes nothing, run, validate, holds; JSON documents and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.cli._app import actor
from coordinator.policy.model import load_policies
from coordinator.purge.holds import create_hold, entity_types
from coordinator.store.db import make_engine
from demo.seed_data import SeedData, populate
from tests.outbox import insert_rows, outbox_rows
from tests.policy.conftest import SEED_POLICIES, reset


async def _seed(url: str) -> SeedData:
    engine = make_engine(url)
    try:
        await reset(engine)
        async with engine.begin() as conn:
            # A minute in the past, so "now" at plan/run time is later than the data's now.
            data = await populate(conn, datetime.now(UTC) - timedelta(minutes=1))
            await create_hold(
                conn,
                types=await entity_types(conn, load_policies(SEED_POLICIES)),
                entities=data.holds,
                reason="case",
                created_by="legal",
                now=datetime.now(UTC),
            )
        return data
    finally:
        await engine.dispose()


async def _checksums(url: str) -> dict[str, str]:
    """An md5 of every table's full contents, coordinator tables included."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            tables = (
                await conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'public' ORDER BY table_name"
                    )
                )
            ).scalars()
            sums = {}
            for name in tables:
                quoted = '"' + name.replace('"', '""') + '"'
                sums[name] = (
                    await conn.execute(
                        text(
                            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                            f"FROM {quoted} t"
                        )
                    )
                ).scalar_one()
            return sums
    finally:
        await engine.dispose()


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)  # resolved per call: CliRunner swaps stderr


@pytest.fixture
def cli(coordinator_db: str) -> Iterator[tuple[CliRunner, dict[str, str]]]:
    # `retention` routes logs to stderr in main(); CliRunner calls the app directly.
    structlog.configure(logger_factory=_stderr_logger, cache_logger_on_first_use=False)
    env = {
        "RETENTION_DATABASE_URL": coordinator_db,
        "RETENTION_POLICIES": str(SEED_POLICIES),
        "RETENTION_HASH_SECRET": "cli-secret",
    }
    yield CliRunner(), env
    structlog.reset_defaults()


def invoke(cli: tuple[CliRunner, dict[str, str]], *args: str) -> tuple[int, Any, str]:
    runner, env = cli
    result = runner.invoke(app, list(args), env=env)
    document = json.loads(result.stdout) if "--json" in args and result.stdout else None
    return result.exit_code, document, result.stdout + result.stderr


def test_plan_changes_nothing_then_run_does_what_it_said(
    cli: tuple[CliRunner, dict[str, str]], coordinator_db: str
) -> None:
    data = asyncio.run(_seed(coordinator_db))
    before = asyncio.run(_checksums(coordinator_db))
    assert "orders" in before
    assert "audit_log" in before

    code, plan, _ = invoke(cli, "plan", "--json")
    assert code == 0
    code, _, human = invoke(cli, "plan")
    assert code == 0
    assert "dry run" in human
    assert asyncio.run(_checksums(coordinator_db)) == before

    due = {p["policy"]: p["due"] for p in plan["policies"]}
    held = {p["policy"]: p["held"] for p in plan["policies"]}
    for name in due:
        # populate() was a minute ago, so rows at its cutoff have become due since.
        assert due[name] == len(data.expected_processed(name)) + len(data.ids[name]["at_cutoff"])
        assert held[name] == len(data.ids[name]["held"])

    code, run, _ = invoke(cli, "run", "--json")
    assert code == 0
    assert run["ok"] is True
    assert {p["policy"]: p["processed"] for p in run["policies"]} == due
    assert {p["policy"]: p["held"] for p in run["policies"]} == held

    code, again, _ = invoke(cli, "plan", "--json")
    assert all(p["due"] == 0 for p in again["policies"])
    assert asyncio.run(_run_actors(coordinator_db)) == {actor("cli")}


async def _run_actors(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT actor FROM audit_log WHERE action IN ('run.start', 'run.finish')")
            )
            return set(rows.scalars())
    finally:
        await engine.dispose()


async def _outbox_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        text("SELECT coalesce(sum(events), 0) FROM retention_outbox_batches")
                    )
                ).scalar_one()
            )
    finally:
        await engine.dispose()


def test_run_says_its_events_wait_in_the_outbox(
    cli: tuple[CliRunner, dict[str, str]], coordinator_db: str
) -> None:
    asyncio.run(_seed(coordinator_db))
    code, _, human = invoke(cli, "run")
    assert code == 0
    events = asyncio.run(_outbox_rows(coordinator_db))
    assert events > 0
    assert f"{events} events written to the outbox" in human
    assert "retention relay --drain" in human
    code, _, human = invoke(cli, "run")
    assert code == 0
    assert "written to the outbox" not in human


def test_guard_exit_codes_and_bad_input(
    cli: tuple[CliRunner, dict[str, str]], coordinator_db: str, tmp_path: Path
) -> None:
    asyncio.run(_seed(coordinator_db))
    guarded = tmp_path / "guarded.yaml"
    guarded.write_text(
        SEED_POLICIES.read_text().replace("    batch_size: 4\n", "    max_rows_per_run: 2\n")
    )
    code, run, _ = invoke(
        cli, "run", "--policies", str(guarded), "--policy", "session_logs", "--json"
    )
    assert code == 1
    (outcome,) = run["policies"]
    assert outcome["processed"] == 0
    assert "max_rows_per_run=2" in outcome["errors"][0]
    code, run, _ = invoke(
        cli, "run", "--policies", str(guarded), "--policy", "session_logs", "--force", "--json"
    )
    assert code == 0
    assert run["policies"][0]["processed"] > 2

    code, _, output = invoke(cli, "run", "--policy", "nope")
    assert code == 2
    assert "unknown policy nope" in output

    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  - name: x\n    table: nowhere\n    retention: P1Y\n")
    code, document, _ = invoke(cli, "policies", "validate", "--policies", str(bad), "--json")
    assert code == 2
    assert document["ok"] is False
    assert len(document["errors"]) == 4  # timestamp_column, action, legal_basis, retention
    code, _, _ = invoke(cli, "plan", "--policies", str(bad))
    assert code == 2

    code, document, _ = invoke(cli, "policies", "validate", "--json")
    assert code == 0
    assert document["ok"] is True

    missing_table = tmp_path / "missing.yaml"
    missing_table.write_text(
        "policies:\n  - {name: x, table: nowhere, timestamp_column: ts, retention: 1d, "
        "action: delete, legal_basis: b}\n"
    )
    code, document, _ = invoke(
        cli, "policies", "validate", "--policies", str(missing_table), "--json"
    )
    assert code == 2
    assert document["errors"] == ["line 2: policy 'x': table 'nowhere' does not exist"]


def test_holds_commands(cli: tuple[CliRunner, dict[str, str]], tmp_path: Path) -> None:
    listing = tmp_path / "entities.txt"
    listing.write_text("# from the court order\norder:1\n\norder:2\n")
    code, hold, _ = invoke(
        cli,
        "holds",
        "create",
        "--reason",
        "case 7",
        "--by",
        "counsel",
        "--expires",
        "2099-01-01T00:00:00Z",
        "--id",
        "case-7",
        "--from-file",
        str(listing),
        "ticket:9",
        "--json",
    )
    assert code == 0
    assert hold["id"] == "case-7"
    assert hold["entity_count"] == 3
    assert hold["status"] == "active"

    code, listed, _ = invoke(cli, "holds", "list", "--json")
    assert "case-7" in [h["id"] for h in listed["holds"]]
    code, shown, _ = invoke(cli, "holds", "show", "case-7", "--json")
    assert shown["entities"] == ["order:1", "order:2", "ticket:9"]
    code, _, human = invoke(cli, "holds", "show", "case-7")
    assert "order:2" in human

    code, released, _ = invoke(cli, "holds", "release", "case-7", "--by", "judge", "--json")
    assert code == 0
    assert released["status"] == "released"
    # The CLI acts with the database's credentials: who asked, and the OS account that ran it.
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert released["created_by"] == f"counsel (os user {me})"
    assert released["released_by"] == f"judge (os user {me})"
    code, _, output = invoke(cli, "holds", "release", "case-7", "--by", "judge")
    assert code == 2
    assert "already released" in output
    code, listed, _ = invoke(cli, "holds", "list", "--json")
    assert "case-7" not in [h["id"] for h in listed["holds"]]

    for bad in (
        ["nocolon"],
        ["order:1", "--expires", "2099-01-01"],
        ["order:1", "--expires", "soon"],
    ):
        code, _, _ = invoke(cli, "holds", "create", "--reason", "r", "--by", "b", *bad)
        assert code == 2, bad
    code, _, _ = invoke(cli, "holds", "show", "nope")
    assert code == 2


def test_the_os_user_comes_from_the_uid_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "mallory")
    assert actor("counsel") == f"counsel (os user {pwd.getpwuid(os.geteuid()).pw_name})"


async def _one_order_event(url: str) -> str:
    engine = make_engine(url)
    try:
        await reset(engine)  # the seed tables exist: orders.id is a bigint
        rows = outbox_rows(1, entity_type="order", event_type="anonymize", entity_ids=["42"])
        await insert_rows(engine, rows)
        return str(rows[0]["event_id"])
    finally:
        await engine.dispose()


def test_status_normalises_the_id_like_a_hold(
    cli: tuple[CliRunner, dict[str, str]], coordinator_db: str
) -> None:
    event_id = asyncio.run(_one_order_event(coordinator_db))
    for spelling in ("order:42", "order:042", "order:+42"):
        code, found, output = invoke(cli, "status", spelling, "--json")
        assert code == 0, (spelling, output)
        assert [e["event_id"] for e in found["events"]] == [event_id]
    code, _, output = invoke(cli, "status", "order:4x")
    assert code == 2
    assert "known types:" in " ".join(output.split())
    code, _, output = invoke(cli, "certificate", "order:042")
    assert code == 1, output  # found; the event is not completed anywhere yet
    assert event_id in output
    assert "not erased everywhere" in output
    code, _, output = invoke(cli, "certificate", "order:4x")
    assert code == 2
