"""Scenario 10: hostile conditions and broken policy files never reach the database.

Every line of the injection corpus becomes the `conditions:` of a policy over a real,
seeded table; a catalogue of broken YAML (syntax, types, unknown keys, duplicates,
months, overflowing periods, non-UTF-8, alias bombs, deep nesting, names the database
contradicts) follows. For each, `retention policies validate` and `retention run` must
exit 2 with an error naming the problem, and an md5 of every table's rows must not
move. The fast variant samples the corpus; the slow one takes all of it and also runs a
sample through the installed `retention` executable. The database is a fault-suite
world (tests/faults/world.py), so the scenario ends with the world's good file run
end to end and the invariant check.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner

from coordinator.cli import app
from tests.condition_grammar import corpus
from tests.e2e.harness import Stack
from tests.faults.db_state import table_checksums
from tests.faults.drive import complete, coordinator_processes
from tests.faults.inprocess import deliver
from tests.faults.invariants import check_invariants
from tests.faults.world import HASH_SECRET, SEED_POLICY_FILE, prepare_world
from tests.infra import ROOT

SEED = 1010
FAST_CORPUS_SAMPLE = 12
EXECUTABLE_SAMPLE = 6

POLICY = """policies:
  - name: support_tickets
    table: support_tickets
    entity_type: ticket
    timestamp_column: resolved_at
    retention: 730d
    action: archive
    legal_basis: "Legitimate interest"
    conditions: {condition}
    fan_out: true
services:
  - {{name: helpdesk, owner: tests, handles: {{ticket: [delete]}}}}
"""
VALID = """  - name: {name}
    table: session_logs
    entity_type: session
    timestamp_column: created_at
    retention: {retention}
    action: delete
    legal_basis: "Legitimate interest"
"""


def _valid(name: str = "sessions", retention: str = "90d", **extra: str) -> str:
    text = VALID.format(name=name, retention=retention)
    return text + "".join(f"    {key}: {value}\n" for key, value in extra.items())


def _laughs() -> str:
    """Nine levels of nine aliases: 9**9 nodes if anything walks the aliases."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        name, previous = chr(97 + level), chr(96 + level)
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\npolicies: *i\n"


def _laughs_in_a_policy() -> str:
    """The same under one policy's keys, past the top-level key check."""
    lines = ["    xa: &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        name, previous = chr(97 + level), chr(96 + level)
        lines.append(f"    x{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
    return "policies:\n" + _valid() + "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    content: bytes
    problem: str
    """A fragment the error must contain: the problem, named."""


BROKEN: list[Case] = [
    Case("yaml syntax", b"policies:\n  - name: x\n    table: [unclosed\n", "not valid YAML"),
    Case("tab indentation", b"policies:\n\t- name: x\n", "not valid YAML"),
    Case("empty file", b"", "non-empty `policies:` list"),
    Case("null document", b"~\n", "non-empty `policies:` list"),
    Case("policies a mapping", b"policies:\n  sessions: {}\n", "non-empty `policies:` list"),
    Case(
        "unknown top-level key",
        ("policies:\n" + _valid() + "polices: []\n").encode(),
        "unknown top-level key(s) polices",
    ),
    Case(
        "unknown policy key",
        ("policies:\n" + _valid(retension="90d")).encode(),
        "retension: unknown field",
    ),
    Case(
        "duplicate names",
        ("policies:\n" + _valid("twin") + _valid("twin")).encode(),
        "name already used",
    ),
    Case(
        "duplicate key",
        ("policies:\n" + _valid(action="delete")).encode(),
        "duplicate key 'action'",
    ),
    Case(
        "retention a number",
        ("policies:\n" + _valid(retention="90")).encode(),
        "is not a duration",
    ),
    Case(
        "retention in months",
        ("policies:\n" + _valid(retention="P13M")).encode(),
        "months and years have no fixed length",
    ),
    Case(
        "retention in years",
        ("policies:\n" + _valid(retention="P7Y")).encode(),
        "months and years have no fixed length",
    ),
    Case(
        "retention 13mo",
        ("policies:\n" + _valid(retention="13mo")).encode(),
        "is not a duration",
    ),
    Case(
        "retention zero",
        ("policies:\n" + _valid(retention="0d")).encode(),
        "longer than zero",
    ),
    Case(
        "retention overflows a timedelta",
        ("policies:\n" + _valid(retention="99999999999d")).encode(),
        "longer than 36500 days",
    ),
    Case(
        "retention past year 1",
        ("policies:\n" + _valid(retention="3000000d")).encode(),
        "longer than 36500 days",
    ),
    Case(
        "deadline overflows",
        ("policies:\n" + _valid(completion_deadline="P99999999999W")).encode(),
        "longer than 36500 days",
    ),
    Case(
        "batch_size a word",
        ("policies:\n" + _valid(batch_size="ten")).encode(),
        "batch_size",
    ),
    Case(
        "batch_size negative",
        ("policies:\n" + _valid(batch_size="-1")).encode(),
        "batch_size",
    ),
    Case("fan_out maybe", ("policies:\n" + _valid(fan_out="maybe")).encode(), "fan_out"),
    Case(
        "anonymize a list",
        ("policies:\n" + _valid(anonymize="[ip, user_id]")).encode(),
        "anonymize",
    ),
    Case("action shred", ("policies:\n" + _valid().replace("delete", "shred")).encode(), "action"),
    Case(
        "missing fields",
        b"policies:\n  - name: x\n    table: session_logs\n",
        "required field is missing",
    ),
    Case(
        "table name injection",
        (
            "policies:\n" + _valid().replace("table: session_logs", 'table: "x; DROP TABLE y"')
        ).encode(),
        "is not allowed here",
    ),
    Case(
        "policy name injection",
        ("policies:\n" + _valid(name='"a\'; DROP TABLE x; --"')).encode(),
        "name",
    ),
    # Refused before importing: importing a module runs its code.
    Case(
        "hook outside the allowed modules",
        ("policies:\n" + _valid(before_purge='"os:getcwd"')).encode(),
        "module 'os' is not allowed",
    ),
    Case(
        "hook module missing",
        ("policies:\n" + _valid(before_purge='"no_such_module_x:run"')).encode(),
        "add it to RETENTION_HOOK_MODULES",
    ),
    Case("max_fraction 2", ("policies:\n" + _valid(max_fraction="2")).encode(), "max_fraction"),
    Case(
        "schedule not cron",
        ("policies:\n" + _valid(schedule='"every day"')).encode(),
        "schedule",
    ),
    Case("not UTF-8", b"policies:\n  - name: caf\xe9\n", "not UTF-8"),
    Case("alias bomb", _laughs().encode(), "alias bomb"),
    Case("alias bomb in a policy", _laughs_in_a_policy().encode(), "alias bomb"),
    Case("deep nesting", b"policies: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    # Only the live schema can tell these apart from good files.
    Case(
        "table missing",
        ("policies:\n" + _valid().replace("table: session_logs", "table: sessions_old")).encode(),
        "table 'sessions_old' does not exist",
    ),
    Case(
        "timestamp column missing",
        ("policies:\n" + _valid().replace("created_at", "created")).encode(),
        "created",
    ),
    Case(
        "condition on an unknown column",
        ("policies:\n" + _valid(conditions="\"owner = 'x'\"")).encode(),
        "unknown column 'owner'",
    ),
    Case(
        "condition type mismatch",
        ("policies:\n" + _valid(conditions="\"id = 'abc'\"")).encode(),
        "conditions:",
    ),
    Case(
        "anonymize an unknown column",
        (
            "policies:\n"
            + _valid()
            .replace("action: delete", "action: anonymize")
            .replace("    legal_basis", "    anonymize: {secret: redact}\n    legal_basis")
        ).encode(),
        "secret",
    ),
]


def _corpus_cases() -> list[Case]:
    # JSON strings are valid YAML double-quoted scalars, whatever the line holds.
    return [
        Case(f"corpus: {line}", POLICY.format(condition=json.dumps(line)).encode(), "conditions:")
        for line in corpus()
    ]


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)  # resolved per call: CliRunner swaps stderr


@pytest.fixture
def cli_logs() -> Iterator[None]:
    # `retention` routes logs to stderr in main(); CliRunner calls the app directly.
    structlog.configure(logger_factory=_stderr_logger, cache_logger_on_first_use=False)
    yield
    structlog.reset_defaults()


def _env(url: str) -> dict[str, str]:
    return {
        "RETENTION_DATABASE_URL": url,
        "RETENTION_POLICIES": str(SEED_POLICY_FILE),
        "RETENTION_HASH_SECRET": HASH_SECRET,
        # The session's KEK (tests/conftest.py): the seed file has an archive policy.
        "RETENTION_KEK_FILE": os.environ["RETENTION_KEK_FILE"],
    }


def _in_process(url: str, args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, env=_env(url))
    return result.exit_code, result.stdout, result.stderr


def _executable(url: str, args: list[str]) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update(_env(url))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("retention")), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def _problems(url: str, cases: list[Case], path: Path, via: Any) -> list[str]:
    problems = []
    for n, case in enumerate(cases):
        path.write_bytes(case.content)
        # Each command once per case, human and JSON output alternating between cases.
        for command, json_flag in (
            (["policies", "validate"], ["--json"] if n % 2 else []),
            (["run"], [] if n % 2 else ["--json"]),
        ):
            code, stdout, stderr = via(url, [*command, "--policies", str(path), *json_flag])
            output = stdout + stderr
            said = f"{' '.join(command)} {case.label!r}"
            if code != 2:
                problems.append(f"{said}: exit {code}, not 2:\n{output[-600:]}")
            elif case.problem not in output:
                problems.append(f"{said}: error does not say {case.problem!r}:\n{output}")
            if json_flag and code == 2:
                document = json.loads(stdout)
                if document.get("ok") is not False or not document.get("errors"):
                    problems.append(f"{said}: JSON document without errors: {document}")
    return problems


@pytest.mark.parametrize(
    "size", [pytest.param("full", marks=pytest.mark.slow), pytest.param("sample")]
)
async def test_hostile_and_broken_policy_files_exit_2_and_change_nothing(
    stack: Stack, tmp_path: Path, size: str, cli_logs: None
) -> None:
    rng = random.Random(SEED)
    print(f"\n[faults] scenario 10 (policy files), seed {SEED}, size {size}")
    world = await prepare_world(stack, tmp_path, users=10, per_category=2)
    url = stack.coordinator_url
    hostile = _corpus_cases()
    if size == "sample":
        hostile = rng.sample(hostile, FAST_CORPUS_SAMPLE)
    cases = hostile + BROKEN
    before = await table_checksums(url)
    assert {"session_logs", "support_tickets", "audit_log", "retention_runs"} <= before.keys()

    path = tmp_path / "broken.yaml"
    # CliRunner's commands call asyncio.run: they get a thread (and a loop) of their own.
    problems = await asyncio.to_thread(_problems, url, cases, path, _in_process)
    if size == "full":
        sample = rng.sample(cases, EXECUTABLE_SAMPLE)
        problems += await asyncio.to_thread(_problems, url, sample, path, _executable)
    after = await table_checksums(url)

    assert problems == []
    changed = sorted(name for name in before if before[name] != after.get(name))
    assert changed == [], f"tables changed by rejected policy files: {changed}"

    # The same database then runs the world's good file, end to end.
    run, _ = coordinator_processes(stack, world)
    await complete(run)
    await deliver(stack, world)
    report = await check_invariants(
        stack,
        world,
        scenario="10-policy-files",
        seed=SEED,
        faults=Counter(rejected_policy_files=len(cases)),
    )
    report.assert_ok()
    print(
        f"[faults] {len(hostile)} hostile conditions + {len(BROKEN)} broken files, "
        f"validate and run each: all exit 2 naming the problem, {len(before)} tables unchanged"
    )
