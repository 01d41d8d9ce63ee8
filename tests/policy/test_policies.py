"""The policy file: durations, every error at once with its line, JSON Schema drift."""

from __future__ import annotations

from datetime import timedelta

import pytest

from coordinator.policy.durations import format_duration, parse_duration
from coordinator.policy.model import Action, PolicyFileError, load_policies, parse_policies
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
        parse_policies(BAD, "bad.yaml")
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
