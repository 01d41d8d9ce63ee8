"""the verify answers that found data still there, indexed on their own

Revision ID: 0033_verify_findings_index
Revises: 0032_verification_retention
Create Date: 2026-12-07 13:20:00.000000

`retention db prune`'s walks over the verifications (pseudonymise, prune) keep a record
while one of its `still_present` answers holds a reopened acknowledgement: a NOT EXISTS
probe per batch. With no index on the answers' status the planner reads every answer
for the few `still_present` ones, once per batch: at 100M answers each batch of 5,000
would scan them all. This partial index holds only those answers (rare: each one is a
resurrection), so the probe costs what they number.

Built CONCURRENTLY: the tracker writes answers meanwhile. A run interrupted during the
build leaves an invalid index, which the next run drops and builds again.
"""

from __future__ import annotations

from alembic import op

from coordinator.store.migrations.patience import build_index_concurrently

revision = "0033_verify_findings_index"
down_revision = "0032_verification_retention"
branch_labels = None
depends_on = None

_TABLE = "retention_verify_answers"
_INDEX = "ix_retention_verify_answers_still_present"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        build_index_concurrently(
            _INDEX, f"ON {_TABLE} (event_id, service) WHERE status = 'still_present'"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
