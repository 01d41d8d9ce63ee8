"""The policy file: durations, every error at once with its line, JSON Schema drift."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest

from coordinator.policy.durations import format_duration, parse_duration
from coordinator.policy.model import (
    MAX_FILE_BYTES,
    Action,
    PolicyFileError,
    load_policies,
    parse_policies,
)
from coordinator.policy.schema import SCHEMA_FILE, render
from tests.policy.conftest import SEED_POLICIES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("36h", timedelta(hours=36)),
        ("30m", timedelta(minutes=30)),
        ("P90D", timedelta(days=90)),
        ("PT36H", timedelta(hours=36)),
        ("P1DT12H", timedelta(days=1, hours=12)),
        ("P2W", timedelta(weeks=2)),
        ("PT90M", timedelta(minutes=90)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("P13M", "months and years have no fixed length"),
        ("P1Y", "write days instead"),
        ("P1Y2DT3H", "months and years"),
        ("0d", "longer than zero"),
        ("PT0S", "longer than zero"),
        ("90", "not a duration"),
        ("90 days", "not a duration"),
        ("P", "not a duration"),
        ("P1DT", "not a duration"),
        ("-5d", "not a duration"),
    ],
)
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_seed_policies_load() -> None:
    policy_set = load_policies(SEED_POLICIES)
    assert [p.name for p in policy_set.policies] == [
        "session_logs",
        "analytics_events",
        "purchase_records",
        "support_tickets",
        "abandoned_carts",
    ]
    orders = policy_set.get("purchase_records")
    assert orders.action is Action.ANONYMIZE
    assert orders.retention == timedelta(days=2557)
    assert orders.anonymize["phone"] == "null"
    assert orders.event_type == "anonymize"
    assert policy_set.get("support_tickets").event_type == "delete"  # archive leaves the table
    assert policy_set.get("session_logs").id_column == "id"
    assert policy_set.line("purchase_records", "anonymize") == 32


BAD = """\
policies:
  - name: a
    table: orders
    timestamp_column: created_at
    retention: P13M
    action: delete
    legal_basis: x
  - name: a
    table: "orders; DROP TABLE x"
    timestamp_column: created_at
    retention: 90d
    action: shred
    legal_basis: x
    colour: blue
  - name: c
    table: t
    retention: 90d
    action: anonymize
    legal_basis: y
    schedule: "every day"
  - name: d
    table: t
    timestamp_column: ts
    retention: 1d
    action: delete
    legal_basis: y
    anonymize: {email: hash}
    max_fraction: 1.5
    before_purge: "tests.policy.hooks:not_async"
  - name: e
    table: t
    timestamp_column: ts
    retention: 1d
    action: anonymize
    legal_basis: y
    anonymize: {email: shred}
  - name: e
    table: t
    timestamp_column: ts
    retention: 1d
    action: delete
    legal_basis: y
    before_purge: "tests.policy.hooks:not_async"
"""


def test_every_error_is_reported_at_once_with_policy_and_line() -> None:
    with pytest.raises(PolicyFileError) as info:
        parse_policies(BAD, "bad.yaml", hook_modules=["tests.policy"])
    found = {(i.policy, i.line, i.message.split(":")[0]) for i in info.value.issues}
    assert found == {
        ("a", 5, "retention"),
        ("a", 9, "table"),
        ("a", 12, "action"),
        ("a", 14, "colour"),
        ("c", 15, "timestamp_column"),
        ("c", 20, "schedule"),
        ("d", 28, "max_fraction"),
        ("e", 36, "anonymize"),
        ("e", 43, "before_purge"),
    }
    text = str(info.value)
    assert "bad.yaml:line 5: policy 'a': retention: 'P13M': months and years" in text
    assert "'orders; DROP TABLE x' is not allowed here" in text
    assert "must be an async function" in text


def test_duplicate_names_and_keys() -> None:
    one = (
        "  - {name: x, table: t, timestamp_column: ts, retention: 1d, action: delete, "
        "legal_basis: b}\n"
    )
    with pytest.raises(PolicyFileError) as info:
        parse_policies("policies:\n" + one + one)
    assert [str(i) for i in info.value.issues] == [
        "line 3: policy 'x': name already used by the policy at line 2"
    ]
    with pytest.raises(PolicyFileError, match="line 3: duplicate key 'policies'"):
        parse_policies("policies:\n" + one + "policies:\n" + one)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "non-empty `policies:` list"),
        ("policies: []", "non-empty `policies:` list"),
        ("- 1", "non-empty `policies:` list"),
        ("policies: [\n", "not valid YAML"),
        ("policies:\n  - !!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_bad_documents(text: str, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message):
        parse_policies(text)


def test_unreadable_file(tmp_path: object) -> None:
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policies("/nonexistent/policies.yaml")


def test_json_schema_is_committed_and_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), (
        "policy JSON Schema drifted: run `python -m coordinator.policy.schema`"
    )


def test_condition_syntax_is_checked_at_load() -> None:
    text = (
        "policies:\n"
        "  - name: carts\n"
        "    table: shopping_carts\n"
        "    timestamp_column: updated_at\n"
        "    retention: 30d\n"
        "    action: delete\n"
        "    legal_basis: b\n"
        "    conditions: \"status = 'abandoned'; DROP TABLE orders\"\n"
    )
    with pytest.raises(PolicyFileError) as info:
        parse_policies(text)
    (issue,) = info.value.issues
    assert issue.line == 8
    assert issue.policy == "carts"
    assert "';'" in issue.message
    assert issue.message.startswith("conditions: ")


SUBJECTS = """\
policies:
  - name: accounts
    table: users
    entity_type: user
    timestamp_column: closed_at
    retention: 30d
    action: delete
    legal_basis: x
  - name: sessions
    table: session_logs
    timestamp_column: created_at
    retention: 90d
    action: delete
    legal_basis: x
    subject: {entity_type: user, column: user_id}
  - name: invoices
    table: orders
    timestamp_column: created_at
    retention: 3650d
    action: delete
    legal_basis: x
    subject: {entity_type: user, column: customer_id}
    on_erasure_request: exempt
    exemption_basis: "GDPR Art. 17(3)(b)"
  - name: tickets
    table: support_tickets
    timestamp_column: resolved_at
    retention: 730d
    action: delete
    legal_basis: x
"""


def test_subject_mapping_includes_the_subjects_own_table() -> None:
    policy_set = parse_policies(SUBJECTS)
    assert policy_set.subject_types == {"user"}
    mapped = policy_set.subject_map()
    assert [(p.name, s.column) for p, s in mapped["user"]] == [
        ("accounts", "id"),
        ("sessions", "user_id"),
        ("invoices", "customer_id"),
    ]
    assert policy_set.subject_of(policy_set.get("tickets")) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    on_erasure_request: exempt\n", "needs an `exemption_basis`"),
        ('    exemption_basis: "why"\n', "only allowed with on_erasure_request: exempt"),
        ("    subject: {entity_type: ticket, column: owner}\n", "must be the id column"),
        ("    subject: {entity_type: user, column: 'a;b'}\n", "is not allowed here"),
    ],
)
def test_bad_subject_lines(extra: str, message: str) -> None:
    text = (
        "policies:\n"
        "  - name: tickets\n"
        "    table: support_tickets\n"
        "    entity_type: ticket\n"
        "    timestamp_column: resolved_at\n"
        "    retention: 730d\n"
        "    action: delete\n"
        "    legal_basis: x\n" + extra
    )
    with pytest.raises(PolicyFileError, match=message):
        parse_policies(text)


def test_exempt_without_a_subject_is_refused() -> None:
    text = (
        "policies:\n"
        "  - name: tickets\n"
        "    table: support_tickets\n"
        "    timestamp_column: resolved_at\n"
        "    retention: 730d\n"
        "    action: delete\n"
        "    legal_basis: x\n"
        "    on_erasure_request: exempt\n"
        '    exemption_basis: "why"\n'
    )
    with pytest.raises(PolicyFileError, match=r"line 8: .*exempt needs a `subject:`"):
        parse_policies(text)


def _alias_bomb(levels: int = 9) -> str:
    lines = ["policies:", "  - &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        name, previous = chr(97 + level), chr(96 + level)
        lines.append(f"  - &{name} [{', '.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_fails_fast_naming_the_problem() -> None:
    bomb = _alias_bomb()
    assert len(bomb) < 1024
    with pytest.raises(PolicyFileError, match="alias bomb"):
        parse_policies(bomb)
    with pytest.raises(PolicyFileError, match="refers to a node that contains it"):
        parse_policies("policies: &a [*a]\n")


def test_policy_files_over_the_size_limit_are_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(PolicyFileError, match=f"larger than {MAX_FILE_BYTES} bytes"):
        load_policies(big)


HOOKED = """\
policies:
  - name: sessions
    table: t
    timestamp_column: ts
    retention: 1d
    action: delete
    legal_basis: y
    before_purge: "{hook}"
"""


def test_before_purge_names_only_allowed_modules_and_says_how_to_allow_one() -> None:
    sentinel = "tests.policy.import_sentinel"
    with pytest.raises(PolicyFileError) as info:
        parse_policies(HOOKED.format(hook=f"{sentinel}:run"))
    [issue] = info.value.issues
    assert "module 'tests.policy.import_sentinel' is not allowed (allowed: none)" in str(issue)
    assert "RETENTION_HOOK_MODULES" in str(issue)
    assert sentinel not in sys.modules, "refused, and never imported"
    # A prefix allows the module and its submodules, nothing that merely starts alike.
    assert parse_policies(HOOKED.format(hook="tests.policy.hooks:record"), hook_modules=["tests"])
    with pytest.raises(PolicyFileError, match="not allowed"):
        parse_policies(HOOKED.format(hook="tests.policy.hooks:record"), hook_modules=["test"])


def test_a_policy_file_may_name_hooks_in_its_own_package(tmp_path: Path) -> None:
    package = tmp_path / "ownpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "hooks.py").write_text("async def run(conn, batch):\n    return None\n")
    inside, outside = package / "policies.yaml", tmp_path / "policies.yaml"
    inside.write_text(HOOKED.format(hook="ownpkg.hooks:run"))
    outside.write_text(HOOKED.format(hook="ownpkg.hooks:run"))
    sys.path.insert(0, str(tmp_path))
    try:
        assert load_policies(inside).policies[0].before_purge == "ownpkg.hooks:run"
        with pytest.raises(PolicyFileError, match=r"'ownpkg\.hooks' is not allowed"):
            load_policies(outside)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ownpkg.hooks", None)
        sys.modules.pop("ownpkg", None)
