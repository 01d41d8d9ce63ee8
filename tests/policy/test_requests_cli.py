"""`retention requests`: create (exit 2 for unknown subject types), list, show, extend,
reject, certificate in JSON and HTML; `policies validate` lists the subject's tables."""

from __future__ import annotations

import asyncio
import csv
import io

from typer.testing import CliRunner

from coordinator.cli import app
from tests.policy.test_cli import _seed, cli, invoke

__all__ = ["cli"]  # the fixture, imported for this module's tests

Cli = tuple[CliRunner, dict[str, str]]


def test_requests_commands(cli: Cli, coordinator_db: str) -> None:
    asyncio.run(_seed(coordinator_db))
    code, validated, _ = invoke(cli, "policies", "validate", "--json")
    assert code == 0
    tables = {m["policy"]: m for m in validated["subjects"]["user"]}
    assert set(tables) == {
        "session_logs",
        "analytics_events",
        "purchase_records",
        "abandoned_carts",
    }
    assert tables["purchase_records"]["on_erasure_request"] == "exempt"

    # `user` is only a subject type in the seed file, and a known type for holds.
    code, hold, output = invoke(
        cli, "holds", "create", "user:user-00001", "--reason", "case", "--by", "legal", "--json"
    )
    assert code == 0, output
    assert hold["entities"] == ["user:user-00001"]

    code, _, output = invoke(
        cli, "requests", "create", "order:1", "--regulation", "gdpr", "--by", "dpo", "--json"
    )
    assert code == 2
    assert "known subject types: user" in output

    code, created, _ = invoke(
        cli,
        "requests",
        "create",
        "user:user-00000",
        "--regulation",
        "ccpa",
        "--received-at",
        "2026-01-31T00:00:00+00:00",
        "--reference",
        "cli-1",
        "--by",
        "dpo",
        "--json",
    )
    assert code == 0, created
    assert created["created"] is True
    assert created["status"] == "in_progress"
    assert created["due_at"].startswith("2026-03-17")
    request_id = created["id"]
    code, again, _ = invoke(
        cli,
        "requests",
        "create",
        "user:user-00000",
        "--regulation",
        "ccpa",
        "--reference",
        "cli-1",
        "--by",
        "dpo",
        "--json",
    )
    assert (code, again["id"], again["created"]) == (0, request_id, False)

    code, listed, _ = invoke(cli, "requests", "list", "--status", "in_progress", "--json")
    assert request_id in {r["id"] for r in listed["requests"]}
    code, shown, _ = invoke(cli, "requests", "show", request_id, "--json")
    assert {p["policy"] for p in shown["policies"]} >= {"session_logs", "purchase_records"}

    code, extended, _ = invoke(
        cli, "requests", "extend", request_id, "--reason", "complex", "--by", "dpo", "--json"
    )
    assert code == 0
    assert extended["due_at"].startswith("2026-05-01")

    code, certificate, _ = invoke(cli, "requests", "certificate", request_id, "--json")
    assert code == 0
    assert certificate["regulation"] == "ccpa"
    runner, env = cli
    page = runner.invoke(app, ["requests", "certificate", request_id, "--format", "html"], env=env)
    assert page.exit_code == 0
    assert page.stdout.startswith("<!DOCTYPE html>")

    code, run, _ = invoke(cli, "run", "--json")
    assert code == 0
    code, report, _ = invoke(cli, "report", "--since", "2000-01-01", "--json")
    assert code == 0
    results = {r["policy"]: r for r in report["purge_results"] if r["run_id"] == run["run_id"]}
    assert results["session_logs"]["legal_basis"] == "Legitimate interest (security monitoring)"
    assert results["session_logs"]["action"] == "delete"
    assert results["session_logs"]["processed"] > 0
    assert results["session_logs"]["held"] > 0
    assert results["session_logs"]["errors"] == 0
    [filed] = [r for r in report["erasure_requests"] if r["id"] == request_id]
    assert (filed["regulation"], filed["status"]) == ("ccpa", "in_progress")
    table = runner.invoke(app, ["report", "--since", "2000-01-01", "--format", "csv"], env=env)
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert {(r["scope"], r["name"]) for r in rows} >= {
        ("purge", "session_logs"),
        ("erasure_request", request_id),
    }

    code, rejected, _ = invoke(
        cli, "requests", "reject", request_id, "--reason", "not verified", "--by", "dpo", "--json"
    )
    assert (code, rejected["status"]) == (0, "rejected")
    assert rejected["rejected_by"].startswith("dpo (os user ")
    code, _, _ = invoke(cli, "requests", "show", "not-a-uuid", "--json")
    assert code == 2
