"""`restore_window` in the policy file: a duration, on delete policies only."""

from __future__ import annotations

from datetime import timedelta

import pytest

from coordinator.policy.model import PolicyFileError, parse_policies

POLICY = """\
policies:
  - name: p
    table: t
    timestamp_column: ts
    retention: 30d
    action: {action}
    legal_basis: b
    restore_window: {window}
{extra}"""


def test_a_delete_policy_keeps_its_deleted_rows_for_the_window() -> None:
    (policy,) = parse_policies(POLICY.format(action="delete", window="14d", extra=""), "f").policies
    assert policy.restore_window == timedelta(days=14)


@pytest.mark.parametrize(
    ("action", "extra"),
    [("archive", ""), ("anonymize", "    anonymize: {email: redact}\n")],
)
def test_other_actions_are_refused(action: str, extra: str) -> None:
    with pytest.raises(PolicyFileError, match="restore_window is for action delete"):
        parse_policies(POLICY.format(action=action, window="14d", extra=extra), "f")


def test_a_window_is_a_duration() -> None:
    with pytest.raises(PolicyFileError, match="restore_window"):
        parse_policies(POLICY.format(action="delete", window="2 weeks", extra=""), "f")
