"""an index on the outbox batches' run, for re-publishing a run

Revision ID: 0014_republish_indexes
Revises: 0013_ack_ledger_indexes
Create Date: 2026-12-06 08:00:00.000000

`retention republish --run` pages through one run's batches in outbox order; without an
index on the run it walks every batch.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014_republish_indexes'
down_revision = '0013_ack_ledger_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_retention_outbox_batches_run_id',
        'retention_outbox_batches',
        ['run_id', 'seq'],
        unique=False,
        postgresql_where=sa.text('run_id IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index('ix_retention_outbox_batches_run_id', table_name='retention_outbox_batches')
