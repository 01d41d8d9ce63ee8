"""The ack path's statements are built once at import and shared by every batch of every
replica's connections (coordinator/tracking/ledger.py): none may hold a value, or one
batch's ids or rows would be sent with another's (or kept alive between batches)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects import postgresql

from coordinator.copies.verification import answers
from coordinator.tracking import ledger

SHARED: dict[str, Any] = {
    "expected": ledger._EXPECTED,
    "recorded_at": ledger._RECORDED_AT,
    "accepted_of": ledger._ACCEPTED_OF,
    "update_expected": ledger._UPDATE_EXPECTED,
    "update_states": ledger._UPDATE_STATES,
    "lock_waiting": ledger._LOCK[False],
    "lock_nowait": ledger._LOCK[True],
    "insert_seq": ledger._INSERT_SEQ,
    "insert_linked": ledger._INSERT_LINKED,
    "verify_events": answers._VERIFY_EVENTS,
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_shared_statement_binds_every_value_when_it_runs(name: str) -> None:
    # Compiled: an UPDATE's FROM (the batch's unnest) is found only by its compiler.
    binds = SHARED[name].compile(dialect=postgresql.dialect()).binds.values()
    assert binds
    assert [b.key for b in binds if b.value is not None or not b.required] == []
